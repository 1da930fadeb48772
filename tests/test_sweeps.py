"""Sweeps end to end with real components: YAML -> plan -> Ray or serial -> Parquet shards,
resume, faults and bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import analysis
from pipeline import cli, plan, spec, sweep
from pipeline.results import store
from tests.conftest import REPO, SLOW_SWEEP, kill_sweep_midway, wait_for_shards

METRICS = ["status", "iterations", "loss_final", "error_l1", "rel_error_l1", "error_truth",
           "l1_norm", "l1_gap", "r0", "r_final", "c_inf", "alpha_eff", "curve_iter", "curve_loss"]


def stored_runs(out) -> "analysis.pd.DataFrame":
    return analysis.load(str(out)).sort_values("run_id").reset_index(drop=True)


def planned_ids(path) -> set[str]:
    return set(plan.make_plan(spec.load_spec(path)).run_ids)


@pytest.mark.slow
def test_ray_and_serial_give_identical_results(ray_local, make_sweep, tmp_path):
    path = make_sweep()
    serial = sweep.run_sweep(str(path), out=str(tmp_path / "serial"), executor="serial",
                             progress=False, task_seconds=0.1)
    ray_run = sweep.run_sweep(str(path), out=str(tmp_path / "ray"), executor="ray",
                              progress=False, task_seconds=0.1)
    assert serial.tasks > 1 and ray_run.tasks > 1  # groupings may differ; results may not
    a, b = stored_runs(tmp_path / "serial"), stored_runs(tmp_path / "ray")
    assert len(a) == len(b) == serial.planned == 160
    assert set(a.run_id) == planned_ids(path) and a.run_id.is_unique
    for column in METRICS:
        assert a[column].equals(b[column]), column
    assert {"converged", "max_iters"} <= set(a.status)
    assert a.node.str.startswith("serial@").all() and not b.node.str.startswith("serial@").any()


def test_plan_ids_are_stable_and_order_free(make_sweep):
    path = make_sweep()
    p1, p2 = plan.make_plan(spec.load_spec(path)), plan.make_plan(spec.load_spec(path))
    assert [r.run_id for r in p1.runs] == [r.run_id for r in p2.runs]
    assert len(p1.run_ids) == len(p1.runs)
    # chunking does not change ids, and the tasks partition the runs exactly once
    for seconds in (0.01, 1.0, 1e9):
        tasks = p1.tasks(task_seconds=seconds)
        ids = [r.run_id for t in tasks for r in t.runs]
        assert sorted(ids) == sorted(p1.run_ids)
    assert len(p1.tasks(task_seconds=0.01)) == len(p1.instances)
    # an instance's seed does not depend on the other axes' values
    text = path.read_text().replace("sparsity: [2, 3]", "sparsity: [3]")
    other = plan.make_plan(spec.parse_spec(text))
    shared = {i.instance_id: i.seed for i in other.instances}
    assert all(shared[i.instance_id] == i.seed for i in p1.instances if i.s == 3)


def test_plan_command_prints_counts(make_sweep, capsys):
    assert cli.main(["plan", str(make_sweep())]) == 0
    out = capsys.readouterr().out
    assert "runs:      160 (gd 32, wn 128)" in out and "instances: 4" in out and "cost:" in out


def test_resume_extends_and_refuses_a_different_spec(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=1)
    out = str(tmp_path / "out")
    first = sweep.run_sweep(str(path), out=out, executor="serial", progress=False)
    assert first.computed == 80
    again = sweep.run_sweep(str(path), out=out, executor="serial", progress=False)
    assert again.computed == 0 and again.already == 80
    # adding a value to an axis extends the sweep: only the new runs are computed
    path.write_text(path.read_text().replace("alpha: [0.05, 0.3]", "alpha: [0.05, 0.3, 0.6]"))
    extended = sweep.run_sweep(str(path), out=out, executor="serial", progress=False)
    assert extended.already == 80 and extended.computed == 40
    assert len(stored_runs(out)) == 120
    # a different reference solver for the same run_ids: refused, exit 2, unless --force
    path.write_text(path.read_text() + "reference: {solver: CLARABEL}\n")
    assert cli.main(["run", str(path), "--out", out, "--executor", "serial"]) == 2
    assert "different spec" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--out", out, "--executor", "serial", "--force",
                     "--no-progress"]) == 0
    runs = stored_runs(out)
    assert len(runs) == 120 and set(runs.bp_solver) == {"CLARABEL"}


def test_truncated_shard_is_reported_and_recomputed(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=2)
    out = tmp_path / "out"
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                    task_seconds=0.01)
    shards = sorted((out / "runs").glob("part-*.parquet"))
    assert len(shards) == 4
    victim = shards[1]
    lost = pq.read_table(victim).num_rows
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert cli.main(["status", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"{victim.stem}  corrupt" in report and f"missing {lost}" in report
    resumed = sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                              task_seconds=0.01)
    assert resumed.computed == lost and resumed.already == 160 - lost
    runs = stored_runs(out)
    assert len(runs) == 160 and runs.run_id.is_unique
    assert (out / "corrupt" / f"runs-{victim.name}").exists()
    assert cli.main(["status", str(out)]) == 0
    assert "done 160 / 160 runs, missing 0, corrupt shards 0" in capsys.readouterr().out


def test_diverging_step_is_a_status_and_the_sweep_finishes(make_sweep, tmp_path):
    path = make_sweep(trials=1, eta=40.0, max_iters=200)
    outcome = sweep.run_sweep(str(path), out=str(tmp_path / "out"), executor="serial",
                              progress=False)
    assert not outcome.failed and outcome.computed == 80
    runs = stored_runs(tmp_path / "out")
    assert (runs.status == "diverged").mean() > 0.5


BAD = sorted((REPO / "tests" / "data" / "bad_sweeps").glob("*.yaml"))


@pytest.mark.parametrize("bad", BAD, ids=[p.stem for p in BAD])
def test_bad_sweep_file_exits_2_naming_the_field_and_writes_nothing(bad, tmp_path, capsys):
    field = bad.read_text().splitlines()[0].removeprefix("# field:").strip()
    out = tmp_path / "out"
    assert cli.main(["run", str(bad), "--out", str(out), "--executor", "serial"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and field in err and err.count("\n") == 1
    assert not out.exists()
    assert cli.main(["plan", str(bad)]) == 2


def test_bad_sweep_file_through_the_real_command(tmp_path):
    assert len(BAD) >= 10
    bad = REPO / "tests" / "data" / "bad_sweeps" / "alpha_zero.yaml"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(bad), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "init.alpha" in proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_killed_driver_loses_and_duplicates_nothing(ray_local, make_sweep, tmp_path):
    path = make_sweep(text=SLOW_SWEEP)
    out = tmp_path / "out"
    kill_sweep_midway(path, out, whole_group=False)  # its Ray processes are orphaned
    stored = store.ResultsStore(str(out)).inventory().run_ids
    total = len(planned_ids(path))
    assert 0 < len(stored) < total
    resumed = sweep.run_sweep(str(path), out=str(out), executor="ray", progress=False,
                              task_seconds=0.01)
    assert resumed.already == len(stored)
    assert resumed.computed == total - len(stored)
    runs = stored_runs(out)
    assert len(runs) == total and runs.run_id.is_unique and set(runs.run_id) == planned_ids(path)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_rerun_completes(make_sweep, tmp_path):
    path = make_sweep(text=SLOW_SWEEP)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path), "--out", str(out),
         "--executor", "serial", "--task-seconds", "0.01", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_shards(out, 1, proc, timeout=120)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert not list(out.rglob(".tmp-*"))
    inventory = store.ResultsStore(str(out)).inventory()
    assert not inventory.corrupt and 0 < len(inventory.run_ids)
    manifest = store.ResultsStore(str(out)).read_manifest()
    assert manifest["invocations"][-1]["interrupted"] is True


def test_status_flags_a_run_stored_twice(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=1)
    out = tmp_path / "out"
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False)
    for kind in ("runs", "instances"):
        (shard,) = (out / kind).glob("part-*.parquet")
        (out / kind / "part-0000000000000000.parquet").write_bytes(shard.read_bytes())
    assert cli.main(["status", str(out)]) == 1
    assert "80 run_ids are stored in more than one shard" in capsys.readouterr().out


def test_a_damaged_instances_shard_sends_its_runs_back(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=1)
    out = tmp_path / "out"
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                    task_seconds=0.01)
    victim = sorted((out / "instances").glob("part-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    assert cli.main(["status", str(out)]) == 1
    assert f"{victim.stem}  corrupt" in capsys.readouterr().out
    again = sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                            task_seconds=0.01)
    assert again.computed == 40 and len(stored_runs(out)) == 80


def test_report_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


USER_INSTANCE = """\
name: user-instance
seed: 2
trials: 2
problem: {file: inst.npz, sign: signed}
model: {depth: 2}
init: {scheme: random, alpha: [0.05, 0.2]}
methods:
  gd: {eta: 0.02}
  wn: {eta: 0.02, eta_ratio: 0.1, schedule: normalized}
train: {max_iters: 300, tol: 1.0e-10}
"""


def _user_instance(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    A = rng.standard_normal((10, 25)) / np.sqrt(10)
    x_star = np.zeros(25)
    x_star[[3, 17]] = [1.0, -0.7]
    np.savez(folder / "inst.npz", A=A, b=A @ x_star, x_star=x_star)
    path = folder / "user.yaml"
    path.write_text(USER_INSTANCE)
    return path


@pytest.mark.slow
def test_user_instance_file_through_ray_and_serial(ray_local, tmp_path):
    path = _user_instance(tmp_path)
    for executor in ("serial", "ray"):
        sweep.run_sweep(str(path), out=str(tmp_path / executor), executor=executor,
                        progress=False)
    a, b = stored_runs(tmp_path / "serial"), stored_runs(tmp_path / "ray")
    assert len(a) == len(b) == 8 and a.run_id.is_unique
    for column in METRICS:
        assert a[column].equals(b[column]), column
    assert set(a.problem_file) == {str(tmp_path / "inst.npz")} and set(a.s) == {2}
    assert a.trial.nunique() == 2 and a.instance_id.nunique() == 2  # same A, two random inits
    assert a.groupby("trial").error_truth.min().notna().all()


def test_an_instance_file_changed_after_validation_is_refused(tmp_path):
    from pipeline import executors

    path = _user_instance(tmp_path)
    tasks = plan.make_plan(spec.load_spec(path)).tasks()
    with np.load(tmp_path / "inst.npz") as data:
        np.savez(tmp_path / "inst.npz", A=data["A"], b=2 * data["b"], x_star=2 * data["x_star"])
    with pytest.raises(spec.SpecError, match="problem.file: the file changed"):
        executors.run_serial(tasks, on_result=lambda result: None)


def test_status_says_when_shards_come_from_different_versions(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=1)
    out = tmp_path / "out"
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                    task_seconds=0.01)
    shard = sorted((out / "runs").glob("part-*.parquet"))[0]
    table = pq.read_table(shard)
    meta = {**table.schema.metadata, b"wnsweep.version": b"0.0.1"}
    pq.write_table(table.replace_schema_metadata(meta), shard)
    assert cli.main(["status", str(out)]) == 0  # complete and healthy, but mixed
    assert "written by wnsweep versions 0.0.1, 0.1.0" in capsys.readouterr().out


def test_an_instances_shard_with_missing_rows_is_corrupt(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=1)
    out = tmp_path / "out"
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                    task_seconds=0.01)
    victim = sorted((out / "instances").glob("part-*.parquet"))[0]
    table = pq.read_table(victim)
    pq.write_table(table.slice(0, 0), victim)  # readable, right columns, rows gone
    assert cli.main(["status", str(out)]) == 1
    assert "instances shard: holds 0 rows, its metadata says 1" in capsys.readouterr().out
