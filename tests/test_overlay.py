"""The theory overlay through the pipeline: columns in the shards, predictions shared by GD runs
that differ only in eta, results written before the overlay, and the report's figures."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import analysis
from pipeline.results import schema
from pipeline.sweep import run_sweep, status_text

pytestmark = pytest.mark.slow  # about a minute: converged runs of 100,000 steps and two reports

OVERLAY_SWEEP = """\
name: overlay
seed: 5
trials: 2
problem: {M: 10, N: 20, sparsity: 2, sign: nonneg}
model: {depth: 2}
init: {alpha: [0.3, 0.5]}
methods:
  gd: {eta: [0.01, 0.005]}
  wn: {eta: 0.01, eta_ratio: [0.3, 1.0], schedule: normalized}
train: {max_iters: 100000, tol: 1.0e-16, checkpoints: 8}
output: {save_solutions: true}
"""


@pytest.fixture(scope="module")
def overlay_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overlay")
    sweep = folder / "overlay.yaml"
    sweep.write_text(OVERLAY_SWEEP)
    out = folder / "results"
    run_sweep(str(sweep), out=str(out), executor="serial", progress=False)
    return sweep, out


def test_every_run_has_a_prediction_and_gd_runs_share_theirs(overlay_results):
    _, out = overlay_results
    runs = analysis.load(out)
    assert len(runs) == 2 * 2 * 4
    assert (runs["pred_status"] == "ok").all()
    gd = runs[runs["method"] == "gd"]
    compared = 0
    for _, cell in gd.groupby(["instance_id", "alpha"]):
        assert len(cell) == 2  # eta 0.01 and 0.005: one flow, one prediction
        first, second = (np.asarray(x) for x in cell["x_pred"])
        assert np.array_equal(first, second)
        if (cell["status"] == "converged").all():
            # a converged small-step run ends within O(eta) of its flow's limit
            by_eta = cell.set_index("eta")["pred_error"]
            assert by_eta[0.01] < 0.05 and 1.5 < by_eta[0.01] / by_eta[0.005] < 2.6
            compared += 1
    assert compared >= 2
    wn = runs[(runs["method"] == "wn") & (runs["status"] == "converged")]
    assert len(wn) >= 4 and (wn["pred_error"] < 0.05).all()
    # the row's numbers are those of its stored vectors
    row = runs.iloc[0]
    x_final, x_pred, x_l1 = (np.asarray(row[c]) for c in ("x_final", "x_pred", "x_l1"))
    assert row["pred_error"] == pytest.approx(
        np.linalg.norm(x_final - x_pred) / np.linalg.norm(x_pred), rel=1e-12)
    assert row["pred_rel_error_l1"] == pytest.approx(
        np.linalg.norm(x_pred - x_l1) / np.linalg.norm(x_l1), rel=1e-12)
    assert row["pred_l1_gap"] == pytest.approx(
        np.abs(x_pred).sum() / np.abs(x_l1).sum() - 1, rel=1e-9, abs=1e-12)


def test_report_draws_the_overlay(overlay_results, tmp_path):
    _, out = overlay_results
    report = analysis.write_report(str(out), out_dir=str(tmp_path / "report"))
    names = {p.name for p in report.figures}
    assert "theory_pred_error.png" in names  # GD's eta axis and WN's eta~ axis in one figure
    # one error-vs-alpha figure per GD step size (WN-GD's single eta belongs to both slices)
    assert {"theory_error_vs_alpha__eta-0.01.png", "theory_error_vs_alpha__eta-0.005.png"} <= names
    summary = (tmp_path / "report" / "summary.csv").read_text().splitlines()[0]
    assert "pred_error_median" in summary and "pred_rel_error_l1_q75" in summary


def test_results_written_before_the_overlay_stay_valid(overlay_results, tmp_path):
    """Shards without the overlay's columns (as wnsweep 0.1 wrote them) are done: the sweep
    resumes with nothing computed, loads with null predictions, and the report says why it has
    no overlay figures."""
    sweep, out = overlay_results
    old = tmp_path / "old"
    for kind in ("runs", "instances"):
        (old / kind).mkdir(parents=True)
        for shard in (out / kind).glob("part-*.parquet"):
            table = pq.read_table(shard)
            if kind == "runs":
                table = table.drop_columns(sorted(schema.ADDED_RUN_COLUMNS))
            pq.write_table(table, old / kind / shard.name)
    for name in ("manifest.json", "sweep.yaml"):
        (old / name).write_bytes((out / name).read_bytes())

    text, healthy = status_text(str(old))
    assert healthy, text
    outcome = run_sweep(str(sweep), out=str(old), executor="serial", progress=False)
    assert outcome.computed == 0 and outcome.already == 16
    runs = analysis.load(old)
    assert runs["pred_status"].isna().all() and runs["pred_error"].isna().all()
    report = analysis.write_report(str(old), out_dir=str(tmp_path / "report"))
    assert any("before the theory overlay" in why for why in report.skipped.values())
