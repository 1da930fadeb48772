"""Tests of the analysis stage on synthetic results folders whose every value is known."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.contour import ContourSet

sys.path.insert(0, os.path.dirname(__file__))
import synthetic_results as sr  # noqa: E402

import analysis  # noqa: E402
from analysis import plots  # noqa: E402
from analysis.aggregate import cell_stats, paired_ratios, ratio_stats  # noqa: E402
from analysis.load import INSTANCE_COLUMNS, ResultsNotFoundError, ShardError  # noqa: E402
from analysis.report import write_report  # noqa: E402

INF, NAN = float("inf"), float("nan")


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- aggregates
def test_cell_stats_hand_computed():
    gd = dict(method="gd", alpha=0.1, L=2)
    rows = [
        sr.run_row(**gd, trial=0, error_l1=1e-4, status="converged", iterations=100),
        sr.run_row(**gd, trial=1, error_l1=2e-3, status="max_iters", iterations=1000),
        sr.run_row(**gd, trial=2, error_l1=5e-4, status="converged", iterations=300),
        sr.run_row(**gd, trial=3, error_l1=1e-5, status="diverged", iterations=50),
        sr.run_row(**gd, trial=4, error_l1=INF, rel_error_l1=INF, status="diverged", iterations=7),
        sr.run_row(method="wn", alpha=0.1, L=2, eta_ratio=0.1, trial=0, error_l1=1e-6),
    ]
    stats = cell_stats(frame(rows), threshold=1e-3)
    assert len(stats) == 2  # GD (null eta_ratio/schedule) and WN kept apart
    g = stats[stats["method"] == "gd"].iloc[0]
    assert pd.isna(g["eta_ratio"]) and pd.isna(g["schedule"])
    assert g["n"] == 5 and g["n_finite"] == 4
    # finite errors sorted: 1e-5, 1e-4, 5e-4, 2e-3
    assert g["error_l1_median"] == pytest.approx((1e-4 + 5e-4) / 2)
    assert g["error_l1_mean"] == pytest.approx((1e-5 + 1e-4 + 5e-4 + 2e-3) / 4)
    assert g["error_l1_q25"] == pytest.approx(1e-5 + 0.75 * (1e-4 - 1e-5))  # position 0.75
    assert g["error_l1_q75"] == pytest.approx(5e-4 + 0.25 * (2e-3 - 5e-4))  # position 2.25
    # recovered: trials 0 and 2 (trial 3 is below threshold but diverged; trial 4 is inf)
    assert g["recovery_rate"] == pytest.approx(2 / 5)
    assert g["iterations_median"] == pytest.approx(200)  # converged: 100, 300
    assert g["convergence_rate"] == pytest.approx(2 / 5)
    assert g["divergence_rate"] == pytest.approx(2 / 5)
    w = stats[stats["method"] == "wn"].iloc[0]
    assert w["n"] == 1 and w["recovery_rate"] == 1.0 and w["eta_ratio"] == 0.1


def _pairing_rows() -> list[dict]:
    base = dict(L=2, alpha=0.1)
    gd = lambda i, e, eta=0.01: sr.run_row(  # noqa: E731
        method="gd", trial=i, instance_id=f"i{i}", eta=eta, error_l1=e, **base
    )
    wn = lambda i, e, eta=0.01: sr.run_row(  # noqa: E731
        method="wn", trial=i, instance_id=f"i{i}", eta=eta, eta_ratio=0.1, error_l1=e, **base
    )
    return [
        # cell A: WN eta 0.01
        gd(0, 1e-2), gd(0, 5.0, eta=0.1), wn(0, 1e-3),  # exact eta wins over eta 0.1: 10
        gd(1, 1e-1), wn(1, 1e-4),  # 1000
        gd(2, 1e-3), wn(2, 1e-4),  # 10
        gd(3, 1e-2), wn(3, NAN),  # dropped: non-finite
        gd(4, 0.0), wn(4, 1e-3),  # dropped: GD error 0
        # cell B: WN eta 0.05 -- i0: GD has etas {0.01, 0.1}, none equal: unpaired;
        #                        i1: GD has one eta (0.01): fallback pairing, 1e-1 / 1e-2 = 10
        wn(0, 1e-3, eta=0.05), wn(1, 1e-2, eta=0.05),
        # cell C: WN eta 0.1 pairs exactly with i0's GD eta 0.1: 5.0 / 0.5 = 10
        wn(0, 0.5, eta=0.1),
    ]


def test_paired_ratios_pairing_rules_and_drops():
    pr = paired_ratios(frame(_pairing_rows()))
    assert len(pr) == 8  # one row per WN run
    by = {(r.eta, r.instance_id): r for r in pr.itertuples()}
    assert by[0.01, "i0"].ratio == pytest.approx(10) and by[0.01, "i0"].gd_eta == 0.01
    assert by[0.01, "i1"].ratio == pytest.approx(1000)
    assert by[0.01, "i1"].log10_ratio == pytest.approx(3)
    assert by[0.01, "i3"].dropped == "non_finite" and math.isnan(by[0.01, "i3"].ratio)
    assert by[0.01, "i4"].dropped == "gd_error_zero" and math.isnan(by[0.01, "i4"].ratio)
    assert by[0.05, "i0"].dropped == "unpaired"
    assert by[0.05, "i1"].ratio == pytest.approx(10) and by[0.05, "i1"].gd_eta == 0.01
    assert by[0.1, "i0"].ratio == pytest.approx(10) and by[0.1, "i0"].gd_eta == 0.1


def test_ratio_stats_geometric_mean_and_counts():
    rs = ratio_stats(paired_ratios(frame(_pairing_rows())))
    a = rs[rs["eta"] == 0.01].iloc[0]
    assert (a["n"], a["n_ratio"], a["n_dropped"], a["n_unpaired"]) == (5, 3, 2, 0)
    # valid ratios 10, 1000, 10
    assert a["ratio_median"] == pytest.approx(10)
    assert a["ratio_gmean"] == pytest.approx((10 * 1000 * 10) ** (1 / 3))
    assert a["ratio_gmean"] == pytest.approx(math.exp(np.mean(np.log([10, 1000, 10]))))
    assert a["ratio_q25"] == pytest.approx(10)
    assert a["ratio_q75"] == pytest.approx(10 + 0.5 * (1000 - 10))
    assert a["log10_ratio_median"] == pytest.approx(1)
    b = rs[rs["eta"] == 0.05].iloc[0]
    assert (b["n"], b["n_ratio"], b["n_dropped"], b["n_unpaired"]) == (2, 1, 0, 1)
    assert b["ratio_median"] == pytest.approx(10)


def test_summary_table_joins_ratios_on_wn_cells():
    runs = frame(sr.grid_runs(alphas=(0.01, 0.1), s_values=(2,), Ls=(2,), trials=2))
    table = analysis.summary_table(runs)
    assert len(table) == len(cell_stats(runs))
    wn = table[(table["method"] == "wn") & (table["eta_ratio"] == 0.1)]
    assert np.allclose(wn["paired_ratio_gmean"], 10)  # grid_runs: ratio = 1 / eta_ratio
    assert table.loc[table["method"] == "gd", "paired_ratio_median"].isna().all()


# ----------------------------------------------------------------------------- load
@pytest.fixture
def grid_folder(tmp_path: Path) -> Path:
    runs = sr.grid_runs(alphas=(1e-3, 1e-2, 1e-1), s_values=(2, 4), Ls=(2,), trials=2)
    return sr.write_results(tmp_path / "res", runs, n_shards=3)


def test_load_joins_instances_and_dedupes(grid_folder: Path):
    inst_files = sorted((grid_folder / "instances").glob("*.parquet"))
    assert len(inst_files) == 3 and len(list((grid_folder / "runs").glob("*.parquet"))) == 3
    df = analysis.load(grid_folder)
    assert len(df) == 2 * 3 * 2 * 3  # s x alpha x trials x (gd + 2 wn)
    assert df["run_id"].is_unique
    for col in INSTANCE_COLUMNS:
        assert col in df.columns
    assert not any(c.endswith(("_x", "_y")) for c in df.columns)
    assert (df["bp_solver"] == "HIGHS").all() and (df["l1_norm_bp"] == 1.0).all()
    assert (df["seed"] == 1000 + df["trial"]).all()
    assert df.attrs["spec_hashes"] == [sr.SPEC_HASH]
    # URI form and filters (DNF and expression) pass through
    uri = analysis.load("file://" + str(grid_folder), filters=[("method", "=", "gd")])
    assert len(uri) == 12 and set(uri["method"]) == {"gd"}
    expr = analysis.load(grid_folder, filters=pc.field("alpha") < 5e-3)
    assert set(expr["alpha"]) == {1e-3}
    with pytest.raises(ValueError, match="invalid filters"):
        analysis.load(grid_folder, filters=[("no_such_column", "=", 1)])


def test_load_truncated_shard_raises_or_skips(grid_folder: Path):
    bad = sorted((grid_folder / "runs").glob("*.parquet"))[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=bad.name):
        analysis.load(grid_folder)
    with pytest.warns(UserWarning, match=bad.name):
        df = analysis.load(grid_folder, on_corrupt="skip")
    assert 0 < len(df) < 36 and df.attrs["skipped_shards"] == [str(bad)]


def test_load_rejects_non_parquet_and_missing_columns(tmp_path: Path):
    root = sr.write_results(tmp_path / "r", sr.grid_runs(alphas=(0.1,), s_values=(2,), Ls=(2,)))
    junk = root / "runs" / "part-99999.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ShardError, match="part-99999.parquet"):
        analysis.load(root)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"run_id": ["x"], "alpha": ["not a float"]}), junk)
    with pytest.raises(ShardError, match="missing required column"):
        analysis.load(root)
    table = pq.read_table(sorted((root / "runs").glob("part-0*.parquet"))[0])
    pq.write_table(table.set_column(table.schema.get_field_index("alpha"), "alpha",
                                    pa.array(["a"] * len(table))), junk)
    with pytest.raises(ShardError, match="alpha"):
        analysis.load(root)


def test_load_missing_or_empty_folder(tmp_path: Path):
    with pytest.raises(ResultsNotFoundError, match="not found"):
        analysis.load(tmp_path / "nope")
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(ResultsNotFoundError, match="no run shards"):
        analysis.load(tmp_path / "empty")


# ----------------------------------------------------------------------------- plots
def test_values_are_a_log_grid_when_evenly_log_spaced_or_spanning_100x():
    assert plots.is_log_grid([1e-3, 1e-2, 1e-1])
    assert plots.is_log_grid([2, 4, 8])
    assert plots.is_log_grid([1, 200])  # max/min >= 100
    assert not plots.is_log_grid([1, 2, 3])
    assert not plots.is_log_grid([0.1, 1])  # two values, ratio 10
    assert not plots.is_log_grid([0, 1, 10, 100])


def test_cell_edges_are_midpoints_in_the_axis_scale_and_half_a_step_out_at_the_ends():
    assert np.allclose(plots.cell_edges([1, 2, 4, 10], log=False), [0.5, 1.5, 3, 7, 13])
    assert np.allclose(plots.cell_edges([1e-2, 1, 1e4], log=True), [1e-3, 1e-1, 1e2, 1e6])
    assert np.allclose(plots.cell_edges([1, 3], log=False), [0, 2, 4])


def main_axes(fig):
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]


def colorbar_label(fig) -> str:
    cbars = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert len(cbars) == 1
    return cbars[0].get_ylabel()


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    rows = sr.grid_runs(alphas=(1e-3, 1e-2, 1e-1), s_values=(2, 4), Ls=(2,), trials=2)
    return frame(rows)


def test_plot_error_vs_alpha(grid: pd.DataFrame):
    with pytest.raises(ValueError, match="s vary"):
        plots.plot_error_vs_alpha(grid)
    (fixed, part), _ = plots.split_by_extra(grid, plots.plot_error_vs_alpha.USES)
    assert fixed == {"s": 2}
    fig = plots.plot_error_vs_alpha(part)
    axes = main_axes(fig)
    assert len(axes) == 2  # L = 2 x two eta~
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        labels = ax.get_legend_handles_labels()[1]
        assert labels[0] == "GD" and labels[1].startswith("WN-GD")
    assert "alpha" in axes[-1].get_xlabel() and "min-" in axes[0].get_ylabel()
    gd_line = axes[0].get_lines()[0]
    assert np.allclose(gd_line.get_ydata(), np.array([1e-3, 1e-2, 1e-1]) * 2e-2 * 1.05)


def test_plot_loss_curves(grid: pd.DataFrame):
    part = grid[grid["s"] == 2]
    for mode in ("median", "trials"):
        fig = plots.plot_loss_curves(part, mode=mode)
        axes = main_axes(fig)
        assert len(axes) == 3  # three alphas x one L
        for ax in axes:
            assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
            assert ax.get_lines()
        assert "iteration" in axes[-1].get_xlabel() and "loss" in axes[0].get_ylabel()
    # median curve: both trials identical, so it equals the stored curve (iteration + 1)
    gd = main_axes(plots.plot_loss_curves(part))[0].get_lines()[0]
    assert np.allclose(gd.get_xdata(), [1, 2, 11, 101])
    assert np.allclose(gd.get_ydata(), [1.0, 0.1, 1e-3, 1e-13])


@pytest.mark.parametrize("fn, ykey", [(plots.plot_phase_alpha_s, "s"),
                                      (plots.plot_phase_alpha_eta, "eta_ratio")])
def test_phase_diagrams(grid: pd.DataFrame, fn, ykey):
    fig = fn(grid)
    axes = main_axes(fig)
    assert len(axes) == 2  # one L x (two eta~ | two s)
    assert "log" in colorbar_label(fig) and "WN-GD" in colorbar_label(fig)
    for ax in axes:
        assert ax.get_xscale() == "log"
        meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
        assert len(meshes) == 1
        mesh = meshes[0]
        assert mesh.norm.vmin == pytest.approx(-mesh.norm.vmax)  # centred at 0
        xy = mesh.get_coordinates()
        assert np.allclose(xy[0, :, 0], 10.0 ** np.array([-3.5, -2.5, -1.5, -0.5]))
    assert "alpha" in axes[-1].get_xlabel()
    assert ("sparsity" if ykey == "s" else "ratio") in axes[0].get_ylabel()
    # grid_runs: ratio = 1 / eta_ratio, so log10 ratio is 1 for eta~ = 0.1, 0 for eta~ = 1
    values = np.concatenate([m.get_array().compressed() for ax in axes
                             for m in ax.collections if isinstance(m, QuadMesh)])
    assert set(np.round(values, 12)) == {0.0, 1.0}


def test_phase_diagram_needs_two_values(grid: pd.DataFrame):
    with pytest.raises(ValueError, match="needs >= 2 values of s"):
        plots.plot_phase_alpha_s(grid[grid["s"] == 2])


def test_recovery_heatmaps_have_50_percent_contour(grid: pd.DataFrame):
    fig = plots.plot_recovery_heatmaps(grid, threshold=1e-3)
    axes = main_axes(fig)
    assert len(axes) == 3  # GD, WN eta~ 0.1, WN eta~ 1
    assert "recovery rate" in colorbar_label(fig)
    for ax in axes:
        assert ax.get_xscale() == "log" and "sparsity" in axes[0].get_ylabel()
    # GD errors 2e-5, 2e-4, 2e-3 (s = 2) cross the threshold: a contour at exactly 0.5
    gd_contours = [c for c in axes[0].collections if isinstance(c, ContourSet)]
    assert len(gd_contours) == 1 and list(gd_contours[0].levels) == [0.5]
    mesh = next(c for c in axes[0].collections if isinstance(c, QuadMesh))
    assert np.allclose(mesh.get_array().reshape(2, 3), [[1, 1, 0], [1, 1, 0]])


def test_plot_alpha_eff(grid: pd.DataFrame):
    fig = plots.plot_alpha_eff(grid[grid["s"] == 2])
    (ax,) = main_axes(fig)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "alpha" in ax.get_xlabel() and "alpha" in ax.get_ylabel()
    assert "eta" in colorbar_label(fig)
    assert any("alpha" in line.get_label() and line.get_linestyle() == "--"
               for line in ax.get_lines())  # the y = x line


# ----------------------------------------------------------------------------- report
@pytest.mark.slow
def test_write_report_full(grid_folder: Path):
    res = write_report(str(grid_folder))
    out = grid_folder / "report"
    assert res.out_dir == out.resolve()
    stems = {p.stem for p in res.figures}
    for stem in stems:
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.pdf").is_file()
    for name in ("error_vs_alpha__s-2", "error_vs_alpha__s-4", "loss_curves__s-2",
                 "phase_alpha_s", "phase_alpha_eta", "recovery_alpha_s", "alpha_eff__s-4"):
        assert name in stems
    assert res.skipped == {}
    for name in ("summary.csv", "summary.md", "paired_ratios.csv"):
        assert (out / name).is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 * 3 * 3 and "paired_ratio_gmean" in summary
    assert (out / "summary.md").read_text().startswith("| sign | M |")
    index = (out / "index.html").read_text()
    for stem in stems:
        assert f"{stem}.png" in index and f"{stem}.pdf" in index
    assert "summary.csv" in index and "summary.md" in index
    assert sr.SPEC_HASH in index and "deadbeef" in index and "0.1.0" in index
    text = res.summary()
    assert "index.html" in text and "0 skipped" in text


@pytest.mark.slow
def test_write_report_skips_unsupported_figures(tmp_path: Path):
    runs = sr.grid_runs(alphas=(1e-2, 1e-1), s_values=(3,), Ls=(2,), eta_ratios=(0.1,), trials=1)
    # one instance, so one shard pair: every runs shard has its instances shard, as the store writes
    root = sr.write_results(tmp_path / "one-s", runs, manifest={}, n_shards=1)
    res = write_report(str(root), out_dir=str(tmp_path / "out"))
    assert res.skipped["phase diagram alpha x s"] == "needs >= 2 values of s, found 1"
    assert res.skipped["phase diagram alpha x eta~"] == "needs >= 2 values of eta~ (WN-GD), found 1"
    assert res.skipped["recovery rate alpha x s"] == "needs >= 2 values of s, found 1"
    assert {p.name for p in res.figures} >= {"error_vs_alpha.png", "error_vs_alpha.pdf"}
    index = (tmp_path / "out" / "index.html").read_text()
    assert "Skipped figures" in index and "needs &gt;= 2 values of s, found 1" in index
    assert "phase diagram alpha x s" in res.summary()
