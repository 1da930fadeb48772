"""A results folder that cannot be written (a full disk, a read-only file system, permission
denied, an object store refusing the upload): `wnsweep run` prints one line naming the folder and
the cause, exits with status 3, leaves no temporary file, and the same command resumes once the
cause is fixed. The full disk is a real 100 kB tmpfs (mounting needs root: skipped otherwise)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.results import store
from tests.conftest import REPO

#: 108 runs on 36 instances; with --task-seconds 0.001, 36 tasks of a few kB each.
SWEEP = """\
name: full
seed: 1
trials: 6
problem: {M: 12, N: 30, sparsity: [2, 3]}
model: {depth: 2}
init: {alpha: [0.1, 0.2, 0.4]}
methods:
  gd: {eta: 0.02}
  wn: {eta: 0.02, eta_ratio: [0.1, 1.0], schedule: constant}
train: {max_iters: 300, tol: 0.0, checkpoints: 64}
"""
MESSAGE = re.compile(r"wnsweep: cannot write to (\S+): (.+) \(errno (\d+)\); (\d+) of 108 runs "
                     r"are stored; (.+), then rerun the same command: it resumes\n")


@contextmanager
def tmpfs(path: Path, size: str, *options: str):
    """A real tmpfs of ``size`` at ``path``; skips the test where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}",) + options)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def wnsweep(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["serial", "ray"])
def test_full_disk_exits_3_in_one_line_and_the_rerun_resumes(executor, tmp_path):
    sweep_file = tmp_path / "full.yaml"
    sweep_file.write_text(SWEEP)
    mount = tmp_path / "disk"
    with tmpfs(mount, "100k"):
        out = mount / "out"
        args = ["run", str(sweep_file), "--out", str(out), "--task-seconds", "0.001",
                "--no-progress", "--executor", executor, "--num-cpus", "2"]
        proc = wnsweep(*args)
        assert proc.returncode == 3, proc.stderr
        match = MESSAGE.fullmatch(proc.stderr)
        assert match, proc.stderr  # one line, no traceback
        folder, cause, code, stored, fix = match.groups()
        assert folder == str(out) and cause == "No space left on device" and code == "28"
        assert fix == "free space" and 0 < int(stored) < 108
        assert not temporaries(mount), temporaries(mount)
        assert not (out / "driver.lock").exists()
        status = wnsweep("status", str(out))
        assert status.returncode == 1  # incomplete, and consistent: nothing corrupt
        assert f"done {stored} / 108 runs, missing {108 - int(stored)}, corrupt shards 0" \
            in status.stdout, status.stdout

        subprocess.run(["mount", "-o", "remount,size=50m", str(mount)], check=True)
        again = wnsweep(*args)
        assert again.returncode == 0, again.stderr
        assert f"{108 - int(stored)} runs computed" in again.stdout
        assert f"({stored} already stored, 108 planned)" in again.stdout
        status = wnsweep("status", str(out))
        assert status.returncode == 0 and "done 108 / 108 runs, missing 0" in status.stdout
        assert not temporaries(mount)


@pytest.mark.slow
def test_read_only_file_system_exits_3(tmp_path):
    """A file system mounted read-only refuses even root: the real `permission` case here."""
    sweep_file = tmp_path / "full.yaml"
    sweep_file.write_text(SWEEP)
    mount = tmp_path / "ro"
    with tmpfs(mount, "1m", "ro"):
        proc = wnsweep("run", str(sweep_file), "--out", str(mount / "out"), "--executor",
                       "serial", "--no-progress")
        assert proc.returncode == 3, proc.stderr
        match = MESSAGE.fullmatch(proc.stderr)
        assert match, proc.stderr
        assert match.group(2) == "Read-only file system" and match.group(3) == str(errno.EROFS)
        assert match.group(4) == "0" and match.group(5).startswith("fix the folder's permissions")


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    """The atomic write fails after its temporary file was written (a non-empty directory in
    place of the target: the rename fails for real): the temporary file goes, and the error
    names the folder and the cause."""
    results = store.ResultsStore(str(tmp_path / "out"))
    (tmp_path / "out" / "manifest.json").mkdir(parents=True)
    (tmp_path / "out" / "manifest.json" / "x").write_text("keep")
    with pytest.raises(store.StoreWriteError) as raised:
        results.write_manifest({"a": 1})
    assert raised.value.folder == str(tmp_path / "out") and raised.value.errno
    assert str(tmp_path / "out") in str(raised.value)
    assert not temporaries(tmp_path / "out")


def test_permission_denied_message():
    """Root bypasses permission bits, so a real EACCES cannot be made here without a mount: the
    message of one, as the driver reports it (the error wraps the OSError a write raises)."""
    exc = store.StoreWriteError("results/x", "results/x/runs/part-1.parquet",
                                PermissionError(errno.EACCES, "Permission denied"))
    exc.stored, exc.planned = 27, 108
    assert exc.message() == (
        "cannot write to results/x: Permission denied (errno 13); 27 of 108 runs are stored; "
        "fix the folder's permissions (or use another --out), then rerun the same command: it "
        "resumes")
    no_space = store.StoreWriteError("results/x", "p", OSError(errno.ENOSPC, "pyarrow's words"))
    assert no_space.cause == "No space left on device (errno 28)"
    s3 = store.StoreWriteError("s3://b/p", "b/p/x", OSError("AWS Error NO_SUCH_BUCKET during "
                                                            "PutObject operation"))
    assert s3.errno is None and "NO_SUCH_BUCKET" in s3.message()
    assert "check that the bucket exists" in s3.message()
