"""The figures comparing GD, SGD, label-noise GD and WN-GD (``analysis.figures.methods``) and
the variant labels (``analysis.variants``), on synthetic runs tables with the columns of issue 19
(``batch``, ``label_noise``, ``noise``, ``error_truth_min``, ``shrink_factor``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import plots
from analysis.figures import all_figures, methods
from analysis.report import write_report
from analysis.variants import variant_order, variants
from tests import synthetic_results as sr

BY_NAME = {f.name: f for f in methods.FIGURES}
NEW = set(BY_NAME)
#: (method, batch, label_noise) of the variants of ``noisy_runs``, in their expected order
VARIANTS = {("gd", None, 0.0): "GD", ("gd", 4, 0.0): "SGD (batch 4)",
            ("gd", 8, 0.0): "SGD (batch 8)", ("gd", None, 0.1): "label-noise GD (delta 0.1)",
            ("wn", None, 0.0): "WN-GD", ("wn", 4, 0.0): "WN-GD, batch 4"}


def noisy_runs(noises=(0.0, 0.01, 0.1), alphas=(1e-3, 1e-2, 1e-1), trials=3) -> pd.DataFrame:
    """Every variant of ``VARIANTS`` at each noise and alpha, errors in closed form:
    error_l1 = alpha * (1 + trial), error_truth = error_l1 + noise, error_truth_min = half of
    that, bp_error_truth = noise + 1e-9; shrink_factor 0.5 (GD rows), alpha_eff = 0.3 alpha (WN)."""
    rows = []
    for noise in noises:
        for t in range(trials):
            for a in alphas:
                for method, batch, delta in VARIANTS:
                    e = a * (1 + t)
                    rows.append(sr.run_row(
                        method=method, batch=batch, label_noise=delta, noise=noise, alpha=a,
                        trial=t, instance_id=f"i{t}-n{noise}", error_l1=e, error_truth=e + noise,
                        error_truth_min=(e + noise) / 2, bp_error_truth=noise + 1e-9,
                        shrink_factor=0.5 if method == "gd" else None,
                        alpha_eff=0.3 * a if method == "wn" else None))
    return pd.DataFrame(rows)


def old_rows() -> list[dict]:
    """GD and WN-GD runs without the columns of issue 19 (a folder written before them)."""
    return sr.grid_runs(alphas=(1e-3, 1e-2, 1e-1), s_values=(2,), Ls=(2,), eta_ratios=(1.0,),
                        trials=2)


def old_runs() -> pd.DataFrame:
    return pd.DataFrame(old_rows())


def drawn(fig_name: str, runs: pd.DataFrame) -> str | None:
    """None when the report would draw the figure on ``runs``, else "n/a" or the skip reason."""
    fig = BY_NAME[fig_name]
    if not fig.applies(runs):
        return "n/a"
    return next((r for r in (c(runs) for c in fig.needs) if r), None)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


# ----------------------------------------------------------------------------- variants
def test_variant_labels_and_their_order():
    runs = noisy_runs(noises=(0.0,), alphas=(0.1,), trials=1).sample(frac=1.0, random_state=3)
    labels = variants(runs)
    expected = [VARIANTS[m, None if pd.isna(b) else int(b), d]
                for m, b, d in zip(runs["method"], runs["batch"], runs["label_noise"])]
    assert list(labels.astype(str)) == expected
    assert variant_order(runs) == list(VARIANTS.values())
    assert list(labels.cat.categories) == list(VARIANTS.values()) and labels.cat.ordered


def test_variants_of_old_folders_and_combinations():
    assert variant_order(old_runs()) == ["GD", "WN-GD"]
    both = pd.DataFrame({"method": ["wn", "gd", "wn", "gd"], "batch": [4, 4, None, None],
                         "label_noise": [0.5, 0.5, None, 0.0]})
    assert list(variants(both).astype(str)) == [
        "WN-GD, batch 4, label noise 0.5", "label-noise SGD (batch 4, delta 0.5)", "WN-GD", "GD"]


# ----------------------------------------------------------------------------- figures
def test_methods_bias_medians_leave_out_diverged_runs():
    runs = noisy_runs(noises=(0.0,))
    blowup = sr.run_row(method="gd", alpha=1e-3, trial=9, error_l1=1e6, status="diverged",
                        noise=0.0, label_noise=0.0)
    assert drawn("methods_bias", runs) is None
    fig = methods.plot_methods_bias(pd.concat([runs, pd.DataFrame([blowup])]))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and "alpha" in ax.get_xlabel()
    assert "interquartile" in fig._suptitle.get_text()
    gd = [ln for ln in ax.get_lines()
          if mcolors.same_color(ln.get_color(), plots.GD_COLOR) and len(ln.get_xdata()) == 3]
    assert len(gd) == 1  # medians of trials 0, 1, 2: alpha * 2, the diverged run left out
    assert np.allclose(gd[0].get_ydata(), [2e-3, 2e-2, 2e-1])
    assert set(VARIANTS.values()) <= set(legend_texts(fig))
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # detached from pyplot: a report leaves no figure open


def test_zero_errors_count_in_the_median():
    runs = noisy_runs(noises=(0.0,), alphas=(1e-2, 1e-1))
    exact = [sr.run_row(method="gd", alpha=a, trial=t, error_l1=0.0, noise=0.0, label_noise=0.0)
             for a in (1e-2, 1e-1) for t in (7, 8)]
    (ax,) = methods.plot_methods_bias(pd.concat([runs, pd.DataFrame(exact)])).axes
    gd = [ln for ln in ax.get_lines()
          if mcolors.same_color(ln.get_color(), plots.GD_COLOR) and len(ln.get_xdata()) == 2]
    assert np.allclose(gd[0].get_ydata(), [1e-2, 1e-1])  # median of 0, 0, a, 2a, 3a


def test_noise_figures_facets_and_series():
    runs = noisy_runs()
    assert drawn("noise_error", runs) is None and drawn("early_stopping", runs) is None
    fig = methods.plot_noise_error(runs)
    assert len(fig.axes) == 2 * 3  # rows: final / early-stopped; columns: noise
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    titles = " ".join(t.get_text() for ax in fig.axes for t in ax.texts) + " ".join(
        ax.get_title() for ax in fig.axes)
    assert "final iterate" in titles and "early-stopped" in titles and "0.01" in titles
    fig = methods.plot_early_stopping(runs)
    assert len(fig.axes) == 3  # one panel per alpha
    assert fig.axes[0].get_xscale() == "log"  # sigma > 0 only: sigma = 0 is left out
    texts = legend_texts(fig)
    assert methods.BP in texts and "x_l1 (basis pursuit)" in texts and "GD" in texts
    bp = [ln for ln in fig.axes[0].get_lines() if mcolors.same_color(ln.get_color(), "black")
          and len(ln.get_xdata()) == 2]
    assert np.allclose(bp[0].get_ydata(), np.array([0.01, 0.1]) + 1e-9)


def test_effective_init_draws_gd_shrink_factor_beside_wn_alpha_eff():
    runs = noisy_runs(noises=(0.0,))
    factor = methods.effective_factor(runs)
    assert np.allclose(factor[runs["method"] == "gd"], 0.5)
    assert np.allclose(factor[runs["method"] == "wn"], 0.3)
    fig = methods.plot_effective_init(runs)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    ys = {round(float(np.median(ln.get_ydata())), 6) for ln in ax.get_lines()
          if len(ln.get_ydata())}
    assert {0.5, 0.3, 1.0} <= ys  # GD, WN-GD and the dotted 1


def test_figures_skipped_without_their_columns_or_variation():
    old = old_runs()
    assert drawn("noise_error", old) == "n/a" and drawn("early_stopping", old) == "n/a"
    # GD against WN-GD alone, and WN-GD's alpha_eff alone, have their figures already
    assert drawn("methods_bias", old) == "n/a" and drawn("effective_init", old) == "n/a"
    full_batch = noisy_runs(noises=(0.0,)).query("batch != batch and label_noise == 0")
    assert drawn("methods_bias", full_batch) == "n/a" and drawn("effective_init", full_batch) is None
    assert drawn("noise_error", noisy_runs(noises=(0.0,))) == "n/a"
    one_sigma = noisy_runs(noises=(0.1,))
    assert drawn("noise_error", one_sigma) is None
    assert drawn("early_stopping", one_sigma) == "needs >= 2 values of noise sigma, found 1"
    no_curves = noisy_runs().assign(error_truth_min=None)
    assert drawn("noise_error", no_curves) == "no values of error_truth_min (needs loss curves, x*)"
    sgd_only = noisy_runs(noises=(0.0,)).query("batch == 4 and method == 'gd'")
    assert drawn("methods_bias", sgd_only) is None  # one variant, but SGD


def test_slices_of_the_cell_keys_batch_label_noise_and_noise():
    """batch, label_noise (per method) and noise are cell keys: a figure draws every variant in
    one file and, except the noise figures, one file per sigma."""
    assert {"noise", "batch", "label_noise"} <= set(plots.CELL_KEYS)
    runs = noisy_runs()
    for name, n in (("methods_bias", 3), ("effective_init", 3), ("noise_error", 1),
                    ("early_stopping", 1)):
        slices = plots.split_by_extra(runs, BY_NAME[name].columns(runs))
        assert len(slices) == n, name
        assert all(variant_order(part) == list(VARIANTS.values()) for _, part in slices)


# ----------------------------------------------------------------------------- report
@pytest.mark.slow
def test_report_of_an_old_folder_keeps_its_figures(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("analysis.report.PARALLEL_FROM", 100)  # serial: no process start-up
    root = sr.write_results(tmp_path / "old", old_rows(), n_shards=1)
    assert analysis.load(str(root))["batch"].isna().all()
    before = [f for f in all_figures() if f.name not in NEW]
    monkeypatch.setattr("analysis.report.all_figures", lambda: before)
    old = write_report(str(root), out_dir=str(tmp_path / "before"))
    monkeypatch.setattr("analysis.report.all_figures", all_figures)
    new = write_report(str(root), out_dir=str(tmp_path / "after"))
    stems = {p.stem for p in new.figures}
    assert stems == {p.stem for p in old.figures}
    assert new.skipped == old.skipped and "phase diagram alpha x s" in old.skipped


@pytest.mark.slow
def test_report_draws_the_new_figures(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("analysis.report.PARALLEL_FROM", 100)
    runs = noisy_runs()
    root = sr.write_results(tmp_path / "noisy", [sr.run_row(alpha=0.1)], n_shards=1)
    monkeypatch.setattr("analysis.report.load", lambda *a, **k: runs)
    res = write_report(str(root), out_dir=str(tmp_path / "out"))
    stems = {p.stem for p in res.figures}
    drawn_names = {stem.split("__")[0] for stem in stems}  # one file per sigma for some
    assert NEW <= drawn_names and not [k for k in res.skipped if "failed" in res.skipped[k]]
    index = (tmp_path / "out" / "index.html").read_text()
    assert "interquartile range" in index and "methods_bias__noise-0.1.png" in index


def test_a_batch_of_M_rows_is_full_batch_gd_and_pairs_with_wn_gd():
    """``batch: M`` (as in sweeps/stochastic-alpha.yaml) is labelled GD, and WN-GD's paired
    ratio takes that run, not an SGD or label-noise run of the same instance and alpha."""
    from analysis.aggregate import paired_ratios

    rows = []
    for batch, delta, error in ((1, 0.0, 5.0), (40, 0.1, 7.0), (40, 0.0, 3.0), (4, 0.0, 9.0)):
        rows.append(sr.run_row(method="gd", batch=batch, label_noise=delta, M=40, alpha=0.1,
                               run_id=f"gd-{batch}-{delta}", error_l1=error))
    rows.append(sr.run_row(method="wn", M=40, alpha=0.1, run_id="wn", error_l1=1.5,
                           label_noise=0.0))
    runs = pd.DataFrame(rows)
    assert list(variants(runs).astype(str)) == [
        "SGD (batch 1)", "label-noise GD (delta 0.1)", "GD", "SGD (batch 4)", "WN-GD"]
    (pair,) = paired_ratios(runs).itertuples()
    assert pair.gd_run_id == "gd-40-0.0" and pair.ratio == pytest.approx(2.0)
