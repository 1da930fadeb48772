"""Adaptive sweeps end to end (docs/SWEEP_FILES.md, "Adaptive sweeps"; pipeline/rounds.py): the
adaptive: section's validation, rounds replayed from stored outcomes, serial and Ray giving the
same rounds and rows, a sweep killed mid-round resuming to exactly the runs of an uninterrupted
one, status and plan."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import rounds, sweep
from pipeline.plan import make_plan
from pipeline.spec import SpecError, parse_spec
from tests.conftest import settle_shards, wait_for_shards

SWEEP = """\
name: adaptive-small
seed: 3
problem: {M: 10, N: 25, sparsity: [1, 4], sign: nonneg}
model: {depth: 2}
init: {scheme: constant, alpha: {logspace: [-2, 0, 3]}}
methods:
  gd: {eta: 0.05}
  wn: {eta: 0.05, eta_ratio: 0.1, schedule: normalized}
train: {max_iters: %d, tol: %s}
adaptive:
  success: {column: rel_error_l1, at_most: 1.0e-2}
  along: alpha
  across: s
  trials: {start: 2, max: 8}
  refine: 1
"""


def _sweep(tmp_path: Path, max_iters: int = 2000, tol: str = "1.0e-10") -> Path:
    path = tmp_path / "adaptive.yaml"
    path.write_text(SWEEP % (max_iters, tol))
    return path


@pytest.mark.parametrize("change, field", [
    ("column: rel_error_l1", "adaptive.success.column"),
    ("along: alpha", "adaptive.along"),
    ("across: s", "adaptive.across"),
    ("refine: 1", "adaptive.refine"),
    ("trials: {start: 2, max: 8}", "adaptive.trials"),
    ("at_most: 1.0e-2", "adaptive.success"),
])
def test_a_bad_adaptive_section_names_its_field(change, field):
    bad = {"column: rel_error_l1": "column: rel_eror_l1", "along: alpha": "along: width",
           "across: s": "across: L", "refine: 1": "refine: -1",
           "trials: {start: 2, max: 8}": "trials: {start: 16, max: 8}",
           "at_most: 1.0e-2": "at_most: 1.0e-2, at_least: 0.5"}[change]
    with pytest.raises(SpecError) as err:
        parse_spec(SWEEP.replace(change, bad) % (100, "0"))
    assert err.value.field == field, err.value


def test_level_outside_the_unit_interval_and_a_top_level_trials_are_refused():
    text = SWEEP % (100, "0")
    with pytest.raises(SpecError) as err:
        parse_spec(text.replace("  along: alpha", "  level: 1.5\n  along: alpha"))
    assert err.value.field == "adaptive.level"
    with pytest.raises(SpecError) as err:
        parse_spec(text.replace("seed: 3", "seed: 3\ntrials: 4"))
    assert err.value.field == "trials"


def test_without_an_adaptive_section_nothing_changes():
    text = (SWEEP % (100, "0")).split("adaptive:")[0]
    plain = parse_spec(text)
    assert plain.adaptive is None and "adaptive" not in plain.to_dict()


def test_the_rounds_are_a_pure_function_of_the_outcomes():
    """A replay fed the outcomes of its own pending runs, whole or half a round at a time in a
    shuffled order, ends with the same runs: what a resumed sweep relies on."""
    spec = parse_spec(SWEEP % (100, "0"))

    def outcome(run_id: str) -> bool:  # deterministic, unrelated to order
        return random.Random(run_id).random() < 0.5

    def drive(partial: bool) -> tuple[set[str], rounds.Replay]:
        outcomes: dict[str, bool] = {}
        for step in range(200):
            state = rounds.replay(spec, outcomes)
            if state.done:
                return set(outcomes), state
            ids = [r.run_id for _, runs in state.pending for r in runs]
            if partial:
                random.Random(step).shuffle(ids)
                ids = ids[:max(1, len(ids) // 2)]
            outcomes.update((i, outcome(i)) for i in ids)
        raise AssertionError("no end")

    whole, state = drive(False)
    halves, other = drive(True)
    assert whole == halves and state.status == other.status and state.done
    # every run asked is a run of the full grid at the finest resolution, same id
    finest = {r.run_id for r in make_plan(rounds.finest_spec(spec)).runs}
    assert whole <= finest and len(whole) < len(finest)


@pytest.mark.slow
def test_serial_and_ray_run_the_same_rounds_and_rows(tmp_path, ray_local):
    spec_path = _sweep(tmp_path)
    outs = {}
    for executor in ("serial", "ray"):
        out = tmp_path / executor
        outcome = sweep.run_sweep(str(spec_path), out=str(out), executor=executor,
                                  progress=False)
        assert outcome.failed == [] and outcome.computed == outcome.planned
        outs[executor] = out
    tables = {k: pq.read_table(v / "runs").to_pandas().sort_values("run_id").reset_index(drop=True)
              for k, v in outs.items()}
    for column in ("run_id", "status", "iterations", "rel_error_l1", "alpha", "s", "trial"):
        assert list(tables["serial"][column]) == list(tables["ray"][column]), column
    manifests = {k: json.loads((v / "manifest.json").read_text()) for k, v in outs.items()}
    per_round = {k: [(e["round"], e["round_runs"]) for e in m["invocations"]]
                 for k, m in manifests.items()}
    assert per_round["serial"] == per_round["ray"] and len(per_round["serial"]) >= 3
    assert all(0 < e["cpu_utilization"] <= 1.01 for m in manifests.values()
               for e in m["invocations"])
    # bisected values: alpha between the base values, s between 1 and 4
    alphas = set(tables["serial"].alpha)
    assert len(alphas) > 3 and {0.01, 0.1, 1.0} <= alphas
    # a rerun computes nothing; status replays the rounds and is healthy
    again = sweep.run_sweep(str(spec_path), out=str(outs["serial"]), executor="serial",
                            progress=False)
    assert again.computed == 0 and again.already == len(tables["serial"])
    text, healthy = sweep.status_text(str(outs["serial"]))
    assert healthy and "adaptive: round" in text and "(done)" in text
    assert "method=gd: cells decided" in text and "method=wn: cells decided" in text
    # the contour, its arguments from the stored section, and the report's figure and cost
    import analysis

    runs = analysis.load(str(outs["serial"]))
    crossings = analysis.contours(runs)
    assert set(crossings["method"]) == {"gd", "wn"} and set(crossings["s"]) == set(runs["s"])
    assert {"crossing", "crossing_low", "crossing_high", "reason"} <= set(crossings.columns)
    result = analysis.write_report(str(outs["serial"]))
    assert result.out_dir / "contour.png" in result.figures
    assert "of the full grid at the same finest resolution" in result.index.read_text()


@pytest.mark.slow
def test_killed_mid_round_resumes_to_exactly_the_runs_of_an_uninterrupted_sweep(tmp_path):
    spec_path = _sweep(tmp_path, max_iters=20000, tol="0")  # runs to max_iters: slow enough
    whole = tmp_path / "whole"
    done = sweep.run_sweep(str(spec_path), out=str(whole), executor="serial", progress=False,
                           task_seconds=0.01)
    round0_tasks = len(json.loads((whole / "manifest.json").read_text())["invocations"][0]
                       ["task_ids"])

    killed = tmp_path / "killed"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec_path), "--out", str(killed),
         "--executor", "serial", "--task-seconds", "0.01", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:  # past round 0's tasks, into round 1
        wait_for_shards(killed, round0_tasks + 2, proc, timeout=240)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    settle_shards(killed)
    state = rounds.replay(parse_spec(spec_path.read_text()),
                          sweep._outcomes(sweep.store.ResultsStore(str(killed)),
                                          parse_spec(spec_path.read_text()).adaptive))
    assert not state.done and state.round >= 1 and state.rounds[-1].stored > 0  # mid-round
    stored_before = len(pq.read_table(killed / "runs", columns=["run_id"]))

    resumed = sweep.run_sweep(str(spec_path), out=str(killed), executor="serial",
                              progress=False)
    assert resumed.already == stored_before and resumed.computed == done.planned - stored_before
    ids = {k: sorted(pq.read_table(v / "runs", columns=["run_id"]).column("run_id").to_pylist())
           for k, v in (("whole", whole), ("killed", killed))}
    assert ids["whole"] == ids["killed"] and len(set(ids["killed"])) == len(ids["killed"])


def test_plan_states_round_zero_and_the_full_grid_bound(tmp_path):
    spec_path = _sweep(tmp_path)
    text = sweep.plan_text(str(spec_path), out=str(tmp_path / "none"), executor="serial")
    spec = parse_spec(spec_path.read_text())
    assert f"at most:   {rounds.full_grid_runs(spec)} runs" in text
    base = 2 * 3 * 2 * 2  # s x alpha x methods x trials.start
    assert f"round 0:   {base} runs to compute" in text
    # the bound: alpha 3 -> 5 values, s 1, 4 -> 1, 2, 4, 2 methods, 8 trials
    assert rounds.full_grid_runs(spec) == 5 * 3 * 2 * 8
