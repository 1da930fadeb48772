"""Shared fixtures: one real local Ray instance per session, small sweep files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REPO = Path(__file__).resolve().parents[1]


def copy_package(tmp_path: Path) -> Path:
    """A copy of the ``pipeline`` and ``analysis`` packages under ``tmp_path/pkg`` (its root),
    for tests that change the code and run it."""
    root = tmp_path / "pkg"
    for package in ("pipeline", "analysis"):
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run_in(root: Path, *args: str, python: bool = False,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m pipeline *args`` (``python *args`` with ``python``) in a fresh process that
    imports the packages at ``root``, without a Ray address or usage stats."""
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, *args] if python else [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=root,
                          timeout=timeout)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance with 2 CPUs, started once for the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


TINY_SWEEP = """\
name: {name}
seed: 3
trials: {trials}
problem: {{M: 12, N: 30, sparsity: [2, 3], sign: nonneg}}
model: {{depth: [2, 3]}}
init: {{scheme: [constant, random], alpha: [0.05, 0.3]}}
methods:
  gd: {{eta: {eta}}}
  wn: {{eta: {eta}, eta_ratio: [0.1, 1.0], schedule: [constant, normalized]}}
train: {{max_iters: {max_iters}, tol: 1.0e-8, checkpoints: 16}}
"""


#: About a dozen tasks of a second or more each, for fault tests that act while tasks run.
SLOW_SWEEP = """\
name: slow
seed: 1
trials: 6
problem: {M: 40, N: 100, sparsity: [3, 5], sign: nonneg}
model: {depth: 2}
init: {alpha: [0.1, 0.2, 0.4]}
methods:
  gd: {eta: 0.01}
  wn: {eta: 0.01, eta_ratio: [0.1, 1.0], schedule: constant}
train: {max_iters: 30000, tol: 0.0, checkpoints: 16}
"""


@pytest.fixture
def make_sweep(tmp_path):
    """Write a small sweep file (2 s x 2 L x 2 init x 2 alpha x 5 method variants per trial)."""

    def make(name="tiny", trials=2, eta=0.02, max_iters=400, text=None) -> Path:
        path = tmp_path / f"{name}.yaml"
        body = text if text is not None else TINY_SWEEP.format(
            name=name, trials=trials, eta=eta, max_iters=max_iters)
        path.write_text(textwrap.dedent(body))
        return path

    return make


def wait_for_shards(folder: Path, count: int, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``folder/runs`` holds ``count`` shards, failing if ``proc`` (a `wnsweep run`
    writing there) exits first or ``timeout`` seconds pass. For the tests that kill a sweep."""
    deadline = time.monotonic() + timeout
    while len(list((folder / "runs").glob("part-*.parquet"))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no shard was written in time"
        time.sleep(0.2)


def settle_shards(folder: Path, quiet: float = 3.0, timeout: float = 60.0) -> None:
    """After a sweep's driver was killed: wait until ``folder/runs`` has gained no shard for
    ``quiet`` seconds. A worker of the dead driver's Ray instance lives on until it notices the
    loss of its raylet and may finish (and write) the task it holds; a test that inventories the
    folder must not race it. Fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while True:
        count = len(list((folder / "runs").glob("part-*.parquet")))
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        assert time.monotonic() < deadline, "shards kept appearing after the driver was killed"
        time.sleep(0.2)


def kill_sweep_midway(sweep: Path, out: Path, whole_group: bool) -> None:
    """Run `wnsweep run sweep --out out` on a new local Ray instance (2 CPUs, tiny tasks), SIGKILL
    it once two shards are written, and return when the folder is quiet (``settle_shards``).
    ``whole_group``: kill the driver, its Ray instance and its workers at once; otherwise the
    driver only, leaving its Ray processes orphaned (the group is killed afterwards)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(sweep), "--out", str(out), "--num-cpus", "2",
         "--task-seconds", "0.01", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_shards(out, 2, proc, timeout=240)
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-g", str(proc.pid)], check=False)
    settle_shards(out)
