"""`wnsweep run` prints only the progress bar, the one-line summary and errors; `--verbose` lets
Ray's logs, the workers' output and the solver's banner through. The real command runs in a
subprocess, so each test sees a fresh process (HiGHS prints its banner once per process, and Ray
configures its logging in ray.init)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from pipeline import executors, plan, spec
from tests.conftest import REPO

#: The whole output of a quiet run without a progress bar.
SUMMARY = re.compile(r"\d+ runs computed in \d+\.\d s \(0 already stored, 160 planned\) -> \S+\n")
NOISE = ("HiGHS", "Copyright", "INFO", "WARNING", "Token authentication")


def wnsweep_run(*args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline run ...` from this checkout, with a local Ray instance of its own
    (no RAY_ADDRESS) and no authentication mode set, as on a fresh shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "pipeline", "run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_serial_run_prints_only_the_summary(make_sweep, tmp_path):
    proc = wnsweep_run(str(make_sweep()), "--out", str(tmp_path / "out"), "--executor", "serial",
                       "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and SUMMARY.fullmatch(proc.stdout), proc.stdout + proc.stderr


@pytest.mark.slow
def test_serial_run_verbose_shows_the_solver_banner(make_sweep, tmp_path):
    proc = wnsweep_run(str(make_sweep()), "--out", str(tmp_path / "out"), "--executor", "serial",
                       "--no-progress", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "Running HiGHS" in proc.stdout and SUMMARY.search(proc.stdout)


@pytest.mark.slow
def test_ray_run_prints_only_the_summary(make_sweep, tmp_path):
    proc = wnsweep_run(str(make_sweep()), "--out", str(tmp_path / "out"), "--num-cpus", "2",
                       "--no-progress")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert not [word for word in NOISE if word in output], output
    assert proc.stderr == "" and SUMMARY.fullmatch(proc.stdout), output


@pytest.mark.slow
def test_ray_run_verbose_shows_rays_logs(make_sweep, tmp_path):
    proc = wnsweep_run(str(make_sweep()), "--out", str(tmp_path / "out"), "--num-cpus", "2",
                       "--no-progress", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"INFO .*Started a local Ray instance", proc.stderr), proc.stderr
    assert SUMMARY.search(proc.stdout)


@pytest.mark.slow
def test_a_failing_ray_task_is_named_with_its_traceback(ray_local, make_sweep):
    """The workers' output is not forwarded (ray_local, like a quiet run, has log_to_driver off),
    yet a task's exception reaches the driver with the task's id and the worker's traceback."""
    tasks = plan.make_plan(spec.load_spec(make_sweep(trials=1))).tasks(task_seconds=0.01)
    broken = dataclasses.replace(tasks[0], instances=tuple(
        dataclasses.replace(inst, params={**inst.params, "s": inst.M + 1})
        for inst in tasks[0].instances))
    done = []
    report = executors.run_ray([broken, tasks[1]], done.append)
    assert [result.task_id for result in done] == [tasks[1].task_id]
    ((task_id, error),) = report.failed
    assert task_id == broken.task_id
    assert "problems.py" in error and "need 1 <= s <= M < N" in error, error  # where and what
