"""One driver per results folder (pipeline/results/lock.py): a second `wnsweep run` on a folder that a
live driver holds refuses with one message naming it; a dead driver's lock (a dead pid on this
host, an old heartbeat from another host, an unreadable file) is taken over."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import cli, sweep
from pipeline.results import lock, store
from tests.conftest import REPO, SLOW_SWEEP, kill_sweep_midway


def dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def forge(folder: Path, **fields) -> Path:
    """A lock file written by some other driver (``fields`` override a live local one's)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": None,
              "process_started": "2026-01-02T03:04:05+00:00", "wnsweep_version": "0.1.0",
              "started": "2026-01-02T03:04:05+00:00", "heartbeat": "now",
              "heartbeat_unix": time.time(), "token": "someone-else", **fields}
    path = folder / lock.LOCK_NAME
    path.write_text(json.dumps(record))
    return path


def run(path, out, capsys, *extra: str) -> tuple[int, str]:
    code = cli.main(["run", str(path), "--out", str(out), "--executor", "serial",
                     "--no-progress", *extra])
    return code, capsys.readouterr().err


def test_the_lock_is_held_while_running_and_removed_after(tmp_path):
    held = lock.DriverLock(str(tmp_path / "out"))
    held.acquire()
    record = json.loads((tmp_path / "out" / "driver.lock").read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["token"] == held.token and record["process_start"] == lock.process_start(
        os.getpid())
    assert {"wnsweep_version", "started", "heartbeat", "heartbeat_unix",
            "process_started"} <= set(record)
    other = lock.DriverLock(str(tmp_path / "out"))
    with pytest.raises(lock.LockHeld) as raised:
        other.acquire()
    message = str(raised.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}, started " \
           f"{record['process_started']}" in message
    assert str(tmp_path / "out" / "driver.lock") in message and "delete that file" in message
    held.release()
    assert not (tmp_path / "out" / "driver.lock").exists()
    other.acquire()  # free again
    other.release()


def test_a_live_lock_refuses_a_second_run(make_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    forge(out)  # this very process, alive: a live driver
    code, err = run(make_sweep(trials=1), out, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"pid {os.getpid()}, started 2026-01-02T03:04:05+00:00" in err
    assert not (out / "manifest.json").exists() and not (out / "runs").exists()


@pytest.mark.parametrize("kind", ["dead-pid-here", "old-heartbeat-elsewhere"])
def test_a_stale_lock_is_taken_over(kind, make_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    if kind == "dead-pid-here":
        forge(out, pid=dead_pid())
    else:
        forge(out, host="elsewhere", heartbeat_unix=time.time() - 10 * lock.STALE_SECONDS)
    code, err = run(make_sweep(trials=1), out, capsys)
    assert code == 0 and err == "", err
    assert not (out / "driver.lock").exists()
    assert cli.main(["status", str(out)]) == 0


def test_a_stale_lock_is_named_with_verbose(make_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    forge(out, pid=dead_pid())
    code, err = run(make_sweep(trials=1), out, capsys, "--verbose")
    assert code == 0 and re.search(r"taking over \S+driver.lock \(.*\): pid \d+ is not running",
                                   err), err


def test_a_fresh_lock_from_another_host_refuses(make_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    forge(out, host="elsewhere", pid=4242, heartbeat_unix=time.time() - 5)
    code, err = run(make_sweep(trials=1), out, capsys)
    assert code == 2 and "host elsewhere, pid 4242, started 2026-01-02T03:04:05+00:00" in err
    assert "heartbeat 5 s ago" in err


def test_an_unreadable_lock_is_taken_over(make_sweep, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "driver.lock").write_text("{not json")
    assert run(make_sweep(trials=1), out, capsys)[0] == 0


def test_a_reused_pid_is_stale():
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "process_start": lock.process_start(os.getpid()) + 1}
    assert "now another process" in lock.stale_reason(record)
    assert lock.stale_reason({**record, "process_start": record["process_start"] - 1}) == ""


def test_status_and_load_ignore_the_lock(make_sweep, tmp_path, capsys):
    import analysis

    out = tmp_path / "out"
    path = make_sweep(trials=1)
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False)
    assert cli.main(["status", str(out)]) == 0
    before = capsys.readouterr().out
    forge(out)
    assert cli.main(["status", str(out)]) == 0
    assert capsys.readouterr().out == before
    assert len(analysis.load(str(out))) == 80


def wnsweep_popen(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_live_drivers_on_one_folder(make_sweep, tmp_path):
    path = make_sweep(text=SLOW_SWEEP)  # a dozen tasks of about a second each, serially
    out = tmp_path / "out"
    args = ("run", str(path), "--out", str(out), "--executor", "serial", "--task-seconds",
            "0.01", "--no-progress")
    first = wnsweep_popen(*args)
    try:
        deadline = time.monotonic() + 120
        while not (out / "driver.lock").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        record = json.loads((out / "driver.lock").read_text())
        second = wnsweep_popen(*args)
        _, err = second.communicate(timeout=120)
        assert first.poll() is None, "the first driver ended before the second was refused"
        assert second.returncode == 2, err
        assert err.count("\n") == 1, err
        assert (f"host {socket.gethostname()}, pid {first.pid}, started "
                f"{record['process_started']}") in err, err
        assert str(out / "driver.lock") in err
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    manifest = store.ResultsStore(str(out)).read_manifest()
    assert len(manifest["invocations"]) == 1  # the second driver wrote nothing
    inventory = store.ResultsStore(str(out)).inventory()
    assert inventory.duplicates == 0 and not inventory.corrupt
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", str(out)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True)
    assert status.returncode == 0, status.stdout
    assert not (out / "driver.lock").exists()


@pytest.mark.slow
def test_a_killed_drivers_lock_does_not_block(ray_local, make_sweep, tmp_path):
    path = make_sweep(text=SLOW_SWEEP)
    out = tmp_path / "out"
    kill_sweep_midway(path, out, whole_group=False)
    record = json.loads((out / "driver.lock").read_text())  # left behind by SIGKILL
    assert "is not running" in lock.stale_reason(record)
    stored = store.ResultsStore(str(out)).inventory().run_ids
    resumed = sweep.run_sweep(str(path), out=str(out), executor="ray", progress=False,
                              task_seconds=0.01)
    assert resumed.already == len(stored) and resumed.computed == resumed.planned - len(stored)
    inventory = store.ResultsStore(str(out)).inventory()
    assert len(inventory.run_ids) == resumed.planned and inventory.duplicates == 0
    assert not (out / "driver.lock").exists()
