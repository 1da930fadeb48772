"""`wnsweep plan` counts the tasks `wnsweep run` with the same options makes: one rule
(``sweep.min_tasks``) for both, and the CPUs Ray will have, read without starting Ray."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from pipeline import cli, executors, sweep
from tests.conftest import REPO


def planned_tasks(capsys, *args: str) -> int:
    assert cli.main(["plan", *args]) == 0
    text = capsys.readouterr().out
    (line,) = [line for line in text.splitlines() if line.startswith("tasks:")]
    return int(re.match(r"tasks:\s+(\d+) ", line).group(1))


def shards(out) -> int:
    return len(list((out / "runs").glob("part-*.parquet")))


def test_plan_counts_the_tasks_a_serial_run_makes(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=2)
    out = tmp_path / "out"
    for seconds in ("0.01", "20"):
        n = planned_tasks(capsys, str(path), "--executor", "serial", "--task-seconds", seconds)
        outcome = sweep.run_sweep(str(path), out=str(out / seconds), executor="serial",
                                  progress=False, task_seconds=float(seconds))
        assert n == outcome.tasks == shards(out / seconds), seconds
    assert planned_tasks(capsys, str(path), "--executor", "serial", "--task-seconds",
                         "0.01") == 4  # one per instance


def test_plan_states_the_ray_rule(make_sweep, capsys):
    path = make_sweep(trials=8)  # 16 instances
    # 1 CPU in a fresh process; in this one, a Ray instance a test left connected counts (as it
    # would for `run`, which uses a connected instance as it is)
    cpus = executors.planned_cpus(None, 1)
    assert cli.main(["plan", str(path), "--num-cpus", "1", "--task-seconds", "1000"]) == 0
    plural = "s" if cpus > 1 else ""
    assert f"tasks:     {8 * cpus} (8 per CPU for {cpus} CPU{plural}, Ray)" \
        in capsys.readouterr().out
    assert sweep.min_tasks("ray", 3) == 24 and sweep.min_tasks("serial", 3) == 1


def test_plan_refuses_bad_options(make_sweep, capsys):
    assert cli.main(["plan", str(make_sweep()), "--num-cpus", "0"]) == 2
    assert "--num-cpus must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_counts_the_tasks_a_ray_run_makes(ray_local, make_sweep, tmp_path, capsys):
    """The session's Ray instance has 2 CPUs: plan for 2 CPUs, then run on it."""
    path = make_sweep(trials=8)  # 16 instances: room for 16 tasks
    for seconds in ("0.01", "1000"):
        n = planned_tasks(capsys, str(path), "--num-cpus", "2", "--task-seconds", seconds)
        out = tmp_path / seconds
        outcome = sweep.run_sweep(str(path), out=str(out), executor="ray", progress=False,
                                  task_seconds=float(seconds))
        assert n == outcome.tasks == shards(out), seconds
    assert n == 16


@pytest.mark.slow
def test_plan_reads_the_cpus_of_a_cluster_at_an_address(ray_local, make_sweep, capsys):
    """`wnsweep plan --address` (a subprocess joining the session's Ray instance) counts for
    that cluster's CPUs."""
    address = ray_local.get_runtime_context().gcs_address
    cpus = executors.cluster_cpus()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "plan", str(make_sweep(trials=8)), "--address",
         address, "--task-seconds", "1000"], capture_output=True, text=True, env=env,
        timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"8 per CPU for {cpus} CPUs, Ray" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_local_cpus_is_what_a_new_local_instance_gets():
    """What plan counts for a local instance without starting it equals what ray.init with no
    num_cpus then reports (a fresh process: its own local instance)."""
    code = textwrap.dedent("""
        from pipeline import executors
        expected = executors.local_cpus()
        assert executors.init_ray(None)
        print(expected, executors.cluster_cpus())
        executors.shutdown_ray()
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected, actual = proc.stdout.split()
    assert expected == actual and int(expected) >= 1
