"""Scale (benchmarks/scale.py measures the speed): the run-count ceiling, the compact set of
stored run_ids, status and resume from shard metadata, and shards written by the workers, on a
local disk (on S3: tests/test_s3.py), with real Ray, real Parquet and real processes killed."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import analysis
from analysis import ShardError
from pipeline import cli, executors, plan, spec, sweep
from pipeline.results import store
from pipeline.results.folder import RunIds
from tests.conftest import REPO, SLOW_SWEEP, kill_sweep_midway

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml")) + sorted(
    (REPO / "tests" / "data" / "sweeps").glob("*.yaml"))


# -- the ceiling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_the_run_count_is_what_the_planner_expands(path):
    loaded = spec.load_spec(path)
    assert plan.count_runs(loaded) == len(plan.make_plan(loaded).runs)


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_sweep_over_the_ceiling_is_refused_before_anything(make_sweep, tmp_path, capsys,
                                                              command):
    """A typo's extra zeros: 100 million trials x 80 runs each. It must answer at once (it would
    otherwise allocate billions of runs), exit 2, name the axes and write nothing."""
    path = make_sweep(trials=100_000_000)
    out = tmp_path / "out"
    args = [command, str(path), "--out", str(out)]
    assert cli.main(args + (["--executor", "serial"] if command == "run" else [])) == 2
    err = capsys.readouterr().err
    assert f"{path}: trials: 8,000,000,000 runs, more than the maximum of 100,000,000" in err
    # the axes and their product
    assert ("8,000,000,000 = 200,000,000 instances (problem.sparsity 2 x trials 100,000,000) "
            "x 40 runs per instance (model.depth 2 x init.scheme 2 x init.alpha 2 x methods "
            "[gd 1 + wn 4 (methods.wn.eta_ratio 2 x methods.wn.schedule 2)])") in err, err
    assert not out.exists()


def test_the_ceiling_is_an_option(make_sweep, tmp_path, capsys):
    path = make_sweep(trials=1)  # 80 runs
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out), "--executor", "serial",
                     "--max-runs", "79"]) == 2
    assert "80 runs, more than the maximum of 79 (--max-runs)" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["plan", str(path), "--max-runs", "80"]) == 0
    assert cli.main(["plan", str(path), "--max-runs", "0"]) == 2


# -- lazy planning -------------------------------------------------------------------------------

GROUPINGS = [(20.0, 1), (20.0, 16), (1.0, 4), (0.2, 3), (0.01, 1), (1e9, 1)]


def assert_lazy_is_todays(loaded: spec.SweepSpec) -> None:
    eager = plan.make_plan(loaded)
    for task_seconds, min_tasks in GROUPINGS:
        today = eager.tasks(task_seconds=task_seconds, min_tasks=min_tasks)
        lazy = plan.lazy_tasks(loaded, task_seconds=task_seconds, min_tasks=min_tasks)
        assert [t.runs_count for t in lazy] == [len(t.runs) for t in today]
        # Task equality: task_id, instances (ids, seeds, parameters), runs (run_ids, settings)
        assert [t.expand() for t in lazy] == today, (task_seconds, min_tasks)
        for t, expected in zip(lazy, today):
            assert abs(t.est_seconds - expected.est_seconds) <= 1e-9 * expected.est_seconds


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.slow) if p.stem in ("robustness", "example") else p
    for p in SWEEP_FILES], ids=[p.stem for p in SWEEP_FILES])
def test_lazy_planning_gives_todays_tasks_runs_and_seeds(path):  # the largest two: slow tier
    assert_lazy_is_todays(spec.load_spec(path))


def test_lazy_planning_of_an_instance_file_and_of_many_shapes(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((10, 25))
    np.savez(tmp_path / "inst.npz", A=A, b=A @ np.eye(25)[3])
    (tmp_path / "file.yaml").write_text(
        "name: file\nseed: 2\ntrials: 3\nproblem: {file: inst.npz, sign: [nonneg, signed]}\n"
        "model: {depth: 2}\ninit: {alpha: [0.05, 0.2]}\nmethods: {gd: {eta: 0.02}}\n"
        "train: {max_iters: 300}\n")
    assert_lazy_is_todays(spec.load_spec(tmp_path / "file.yaml"))
    # combinations of unequal cost packed together, cut inside and across combinations
    assert_lazy_is_todays(spec.parse_spec(
        "name: shapes\nseed: 1\ntrials: 7\nproblem: {M: [10, 30], N: [40, 90], sparsity: 2}\n"
        "model: {depth: 2}\ninit: {alpha: [0.1, 0.2, 0.4]}\n"
        "methods: {gd: {eta: 0.01}, wn: {eta: 0.01, eta_ratio: [0.1, 1], schedule: constant}}\n"
        "train: {max_iters: [500, 3000]}\n"))
    # both model families: their own instance and run axes, and methods (wn: diagonal only)
    mixed = spec.parse_spec(
        "name: mixed\nseed: 4\ntrials: 5\nproblem: {M: 6, N: 15, sparsity: [1, 2]}\n"
        "model: {family: [diagonal, twolayer], depth: [2, 3], width: [4, 8]}\n"
        "init: {scheme: random, alpha: [0.1, 0.3]}\n"
        "methods: {gd: {eta: 0.05}, wn: {eta: 0.05, eta_ratio: [0.1, 1], schedule: constant}}\n"
        "train: {max_iters: 200}\n")
    assert plan.count_runs(mixed) == len(plan.make_plan(mixed).runs)
    assert_lazy_is_todays(mixed)
    assert plan.summarize_lazy(mixed, plan.lazy_tasks(mixed)) == plan.summarize(
        plan.make_plan(mixed), plan.make_plan(mixed).tasks())


def test_lazy_tasks_leave_out_stored_runs(make_sweep):
    loaded = spec.load_spec(make_sweep(trials=2))
    every = plan.make_plan(loaded).run_ids
    stored = RunIds(sorted(every)[::3])
    kept = [t.expand(skip=stored) for t in plan.lazy_tasks(loaded, task_seconds=0.01)]
    ids = [r.run_id for t in kept if t is not None for r in t.runs]
    assert len(ids) == len(set(ids)) and set(ids) == every - stored
    assert all(t is None or {r.instance_id for r in t.runs} == {i.instance_id for i in t.instances}
               for t in kept)  # an instance whose runs are all stored is left out


def test_plan_of_ten_million_runs_answers_with_its_counts(tmp_path, capsys):
    """Planned lazily: tasks are a few integers each, and no run is expanded."""
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nseed: 0\ntrials: 10000000\nproblem: {M: 20, N: 50, sparsity: 3}\n"
                    "model: {depth: 2}\ninit: {alpha: 0.1}\nmethods: {gd: {eta: 0.05}}\n"
                    "train: {max_iters: 1000}\n")
    assert cli.main(["plan", str(path), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "runs:      10000000 (gd 10000000)" in text and "instances: 10000000" in text
    assert "to run:    10000000 runs in" in text


# -- the compact run_id set -----------------------------------------------------------------------

def test_run_ids_behave_as_a_set_of_strings():
    rng = np.random.default_rng(0)
    ids = [f"r-{rng.integers(16 ** 10):020x}" for _ in range(500)]
    a, b = set(ids[:300]), set(ids[200:] + ["hand-written", ""])
    ra, rb = RunIds(a), RunIds(b)
    assert len(ra) == 300 and ra == a and a == ra and set(ra) == a
    assert ra & rb == a & b and ra | rb == a | b and ra - rb == a - b and rb - ra == b - a
    assert ra & b == a & b and frozenset(b) - ra == b - a  # with Python sets, both sides
    assert ids[0] in ra and "hand-written" in rb and "" in rb and "r-0" not in ra
    assert list(rb.contains(["hand-written", ids[0], ids[499]])) == [True, False, True]
    assert RunIds() == set() and len(RunIds() & ra) == 0
    # 22 bytes a run_id
    assert RunIds(ids).array.nbytes == 22 * len(set(ids))


# -- metadata-only status and resume, shards written by the workers ------------------------------

def damage_a_curve_page(data: bytes) -> bytes:
    """The bytes of a runs shard whose curve_loss column chunk is overwritten: the footer, the
    schema, the row count and the run_id column stay intact."""
    import io

    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    chunk = meta.row_group(0).column(names.index("curve_loss.list.element"))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    size = chunk.total_compressed_size
    return data[:start] + b"\xa5" * size + data[start + size:]


def test_status_reads_metadata_so_a_damaged_curve_page_is_for_load_to_name(make_sweep, tmp_path,
                                                                           capsys):
    """The trade-off of pipeline/results/folder.py: status and resume count a shard with a damaged curve
    page as done; analysis.load, which decodes what it reads, names it."""
    path = make_sweep(trials=1)
    out = tmp_path / "out"
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                    task_seconds=0.01)
    victim = min((out / "runs").glob("part-*.parquet"))
    victim.write_bytes(damage_a_curve_page(victim.read_bytes()))
    assert cli.main(["status", str(out)]) == 0
    assert "done 80 / 80 runs, missing 0, corrupt shards 0" in capsys.readouterr().out
    with pytest.raises(ShardError) as raised:
        analysis.load(out)
    assert raised.value.path == str(victim) and "corrupt: damaged data" in str(raised.value)
    with pytest.warns(UserWarning, match=f"skipping bad shard {victim}"):
        assert len(analysis.load(out, on_corrupt="skip")) == 40
    # moving it aside is what makes the next run recompute it
    victim.unlink()
    again = sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False,
                            task_seconds=0.01)
    assert again.computed == 40 and len(analysis.load(out)) == 80


@pytest.mark.slow  # a Ray instance
def test_ray_tasks_write_their_shards_and_a_repeated_task_rewrites_the_same_names(
        ray_local, make_sweep, tmp_path):
    path = make_sweep(trials=1)
    results = store.ResultsStore(str(tmp_path / "out"))
    loaded = spec.load_spec(path)
    results.prepare(loaded)
    tasks = plan.make_plan(loaded).tasks(task_seconds=0.01)
    completions: list[executors.Completed] = []
    # each task twice, as Ray's retry of a task whose worker died after writing would run it
    report = executors.run_ray(tasks + tasks, completions.append, out=results.uri)
    assert report.completed == 2 * len(tasks) and not report.failed
    assert report.written_by_driver == 0 and not report.write_problem
    assert all(c.result is None for c in completions)  # the driver got (task_id, runs) only
    assert sorted(c.runs for c in completions) == sorted(2 * [len(t.runs) for t in tasks])
    inventory = results.inventory()
    assert len(inventory.done) == len(tasks) and inventory.duplicates == 0
    assert inventory.run_ids == plan.make_plan(loaded).run_ids
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_a_task_on_a_node_that_does_not_see_the_folder_hands_its_tables_back(make_sweep,
                                                                              tmp_path):
    """A local path seen by the driver only: the witness (manifest.json's inode, time, size)
    differs on another node, and there the task returns its tables for the driver to write."""
    path = make_sweep(trials=1)
    results = store.ResultsStore(str(tmp_path / "out"))
    loaded = spec.load_spec(path)
    results.prepare(loaded)
    (task,) = plan.make_plan(loaded).tasks()[:1]
    here = executors.Output.of(results.uri)
    assert here.local and here.visible()
    elsewhere = executors.Output(results.uri, local=True, witness=(0, 0, 0))
    done = executors._finish(executors.run_task(task), elsewhere)
    assert done.result is not None and done.runs == len(task.runs) and not done.problem
    assert not list((tmp_path / "out").glob("runs/*"))
    done = executors._finish(executors.run_task(task), here)
    assert done.result is None and len(list((tmp_path / "out").glob("runs/part-*"))) == 1


@pytest.mark.slow
def test_resume_after_sigkill_of_a_folder_written_by_workers_is_exact(ray_local, make_sweep,
                                                                      tmp_path):
    path = make_sweep(text=SLOW_SWEEP)
    out = tmp_path / "out"
    kill_sweep_midway(path, out, whole_group=True)  # the driver, its Ray instance, workers
    stored = store.ResultsStore(str(out)).inventory()
    planned = plan.make_plan(spec.load_spec(path)).run_ids
    assert not stored.corrupt and 0 < len(stored.run_ids) < len(planned)
    resumed = sweep.run_sweep(str(path), out=str(out), executor="ray", progress=False,
                              task_seconds=0.01)
    assert resumed.already == len(stored.run_ids)
    assert resumed.computed == len(planned) - len(stored.run_ids)
    assert resumed.written_by_driver == 0  # the workers wrote every shard of the resume
    runs = analysis.load(out)
    assert len(runs) == len(planned) and runs.run_id.is_unique and set(runs.run_id) == planned
    manifest = store.ResultsStore(str(out)).read_manifest()
    assert manifest["invocations"][-1]["written_by_driver"] == 0
