"""The diagonal family's figures comparing the methods of issue 19: GD, SGD (``batch``),
label-noise GD (``label_noise``) and WN-GD, one hue per variant (``analysis.variants``).

Each figure is one seaborn ``relplot`` on the tidy runs table: lines are the median over trials,
bands the interquartile range of the trials (``errorbar=("pi", 50)``, the 25th to 75th percentile;
no resampling, so the figure is deterministic), as in ``analysis.plots``. Diverged runs and
non-finite values are left out before the medians are taken (as ``aggregate.cell_stats`` does
with non-finite errors); the errors and factors are drawn on log axes, which clip zeros. The
figure's title says so.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from analysis import plots
from analysis.figures import Figure, need_values
from analysis.variants import is_noisy_gradient, variant_order, with_variant

BAND = ("pi", 50)
CAPTION = "median over trials, band: interquartile range; diverged runs left out"
BP = "basis pursuit"  # the hue of the basis-pursuit estimator's error
LABELS = {
    "error_truth": "error to the ground truth\n" r"$\|\tilde x - x^*\|_2$",
    "noise": r"measurement noise $\sigma$",
    "factor": "effective scale / " r"$\alpha$" "\n" r"(GD: shrink factor, WN-GD: $\alpha_{\mathrm{eff}}/\alpha$)",
}
ESTIMATES = {"error_truth": "final iterate", "error_truth_min": "early-stopped (best iterate)"}


def _palette(order: list[str]) -> dict[str, Any]:
    """GD dark grey, the basis pursuit black, the other variants seaborn's colorblind palette."""
    import seaborn as sns

    colors = iter(sns.color_palette("colorblind", len(order)))
    fixed = {"GD": plots.GD_COLOR, BP: "black"}
    return {v: fixed[v] if v in fixed else next(colors) for v in order}


def _kept(runs: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Not-diverged runs with a ``variant``; ``columns`` as float, NaN where not finite (zeros
    stay: they count in the median, the log axis clips them)."""
    d = with_variant(runs[runs["status"] != "diverged"])
    for c in columns:
        v = pd.to_numeric(d[c], errors="coerce").astype(float)
        d[c] = v.where(np.isfinite(v))
    return d


def _long(d: pd.DataFrame, ids: list[str], columns: dict[str, str], name: str) -> pd.DataFrame:
    """``d`` melted to one row per run and column of ``columns`` (renamed to its value), the
    column's label in ``name``, its value in ``value``; NaN values dropped."""
    out = d[ids + list(columns)].melt(id_vars=ids, var_name=name, value_name="value")
    return out.assign(**{name: out[name].map(columns)}).dropna(subset=["value"])


def _scale(ax: Any, axis: str, values: pd.Series) -> None:
    """Log when the values are positive and a log grid or span >= 10x; symlog (linear below the
    smallest positive value) when they hold 0 and positive values spanning >= 10x; else linear."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    pos = v[v > 0]
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    if len(pos) and (v > 0).all() and (plots.is_log_grid(pos) or pos.max() >= 10 * pos.min()):
        setter("log")
    elif len(pos) >= 2 and (v == 0).any() and pos.max() >= 10 * pos.min():
        setter("symlog", linthresh=float(pos.min()))


def _relplot(data: pd.DataFrame, x: str, y: str, hue_order: list[str], title: str,
             xlabel: str, ylabel: str, titles: dict | None = None, **kw: Any) -> MplFigure:
    """One seaborn line ``relplot`` (median, IQR band) with log y; returns its figure, detached
    from pyplot (so reports do not accumulate open figures)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    present = set(data["variant"])
    hue_order = [v for v in hue_order if v in present]
    with mpl.rc_context(plots._RC):
        g = sns.relplot(data.assign(variant=data["variant"].astype(str)), x=x, y=y, kind="line",
                        hue="variant", hue_order=hue_order, palette=_palette(hue_order),
                        estimator="median", errorbar=BAND, marker="o", markersize=4,
                        height=2.7, aspect=1.25, **kw)
        for ax in g.axes.flat:
            _scale(ax, "x", data[x])
            ax.set_yscale("log", nonpositive="clip")
        g.set_axis_labels(xlabel, ylabel)
        if titles:
            g.set_titles(**titles)
        g.figure.suptitle(f"{title}\n({CAPTION})", fontsize=9)
        g.tight_layout()
    plt.close(g.figure)
    return g.figure


# ----------------------------------------------------------------------------- figures
def plot_methods_bias(runs: pd.DataFrame) -> MplFigure:
    """Relative distance to the basis-pursuit solution, ``rel_error_l1``, against alpha: one
    line per variant (GD, SGD per batch, label-noise GD, WN-GD...), one panel per depth L."""
    plots._require_single_slice(runs, plot_methods_bias.USES, "plot_methods_bias")
    d = _kept(runs, ("rel_error_l1",)).dropna(subset=["rel_error_l1"])
    return _relplot(d, "alpha", "rel_error_l1", variant_order(runs), "error to min-l1 vs alpha",
                    plots.LABELS["alpha"], plots.LABELS["rel_error_l1"], col="L")


plot_methods_bias.USES = ("alpha", "L", "batch", "label_noise")


def plot_noise_error(runs: pd.DataFrame) -> MplFigure:
    """Error to the ground truth x* against alpha, of the final iterate (``error_truth``, top row)
    and of the best iterate (``error_truth_min``, early stopping, bottom row), one panel column
    per noise level sigma, one line per variant."""
    plots._require_single_slice(runs, plot_noise_error.USES, "plot_noise_error")
    d = _long(_kept(runs, tuple(ESTIMATES)), ["variant", "alpha", "noise"], ESTIMATES, "error of")
    return _relplot(d, "alpha", "value", variant_order(runs), "error to x* vs alpha",
                    plots.LABELS["alpha"], LABELS["error_truth"], col="noise", row="error of",
                    row_order=list(ESTIMATES.values()), facet_kws={"margin_titles": True},
                    titles={"col_template": r"$\sigma$ = {col_name}", "row_template": "{row_name}"})


plot_noise_error.USES = ("alpha", "noise", "batch", "label_noise")


def plot_early_stopping(runs: pd.DataFrame) -> MplFigure:
    """Error to x* against the noise level sigma: each variant's final iterate (``error_truth``)
    and best iterate (``error_truth_min``, early stopping; line styles), beside the basis-pursuit
    solution's ``bp_error_truth`` (black, one value per instance); one panel per alpha. Only
    sigma > 0 is drawn (log axis): without noise basis pursuit recovers x* to rounding, and there
    is nothing to stop early for."""
    plots._require_single_slice(runs, plot_early_stopping.USES, "plot_early_stopping")
    d = _kept(runs[pd.to_numeric(runs["noise"], errors="coerce") > 0],
              (*ESTIMATES, "bp_error_truth"))
    ids = ["variant", "alpha", "noise"]
    bp = d.drop_duplicates(["instance_id", "alpha"]).assign(variant=BP)
    data = pd.concat([_long(d, ids, ESTIMATES, "error of"),
                      _long(bp, ids, {"bp_error_truth": "x_l1 (basis pursuit)"}, "error of")])
    order = [*variant_order(runs), BP]
    n = data["alpha"].nunique()
    return _relplot(data, "noise", "value", order, "early stopping: error to x* vs noise",
                    LABELS["noise"], LABELS["error_truth"], style="error of",
                    style_order=[*ESTIMATES.values(), "x_l1 (basis pursuit)"], col="alpha",
                    col_wrap=min(n, 4) if n > 1 else None,
                    titles={"col_template": r"$\alpha$ = {col_name}"})


plot_early_stopping.USES = ("noise", "alpha", "batch", "label_noise")


def effective_factor(runs: pd.DataFrame) -> pd.Series:
    """The effective initialization over alpha: GD's ``shrink_factor`` on gd rows, WN-GD's
    ``alpha_eff / alpha`` on wn rows (NaN where the column is missing or null)."""
    out = pd.Series(np.nan, index=runs.index)
    gd, wn = runs["method"] == "gd", runs["method"] == "wn"
    if "shrink_factor" in runs:
        out[gd] = pd.to_numeric(runs.loc[gd, "shrink_factor"], errors="coerce")
    if "alpha_eff" in runs:
        out[wn] = pd.to_numeric(runs.loc[wn, "alpha_eff"], errors="coerce") / runs.loc[wn, "alpha"]
    return out.astype(float)


def plot_effective_init(runs: pd.DataFrame) -> MplFigure:
    """The effective initialization scale over alpha against alpha (log-log): GD's
    ``shrink_factor`` (alpha * shrink_factor is its effective alpha) beside WN-GD's
    ``alpha_eff / alpha``, one line per variant, one panel per L; below the dotted 1 a run acts
    as gradient flow from a smaller initialization."""
    plots._require_single_slice(runs, plot_effective_init.USES, "plot_effective_init")
    d = _kept(runs.assign(factor=effective_factor(runs)), ("factor",)).dropna(subset=["factor"])
    fig = _relplot(d, "alpha", "factor", variant_order(runs), "effective initialization vs alpha",
                   plots.LABELS["alpha"], LABELS["factor"], col="L")
    for ax in fig.axes:
        ax.axhline(1.0, ls=":", color="0.4", lw=1)
    return fig


plot_effective_init.USES = ("alpha", "L", "batch", "label_noise")


# ----------------------------------------------------------------------------- declarations
def _has_positive(col: str, method: str | None = None):
    def check(df: pd.DataFrame) -> bool:
        d = df if method is None else df[df["method"] == method]
        v = pd.to_numeric(d[col], errors="coerce") if col in d else pd.Series(dtype=float)
        return bool((np.isfinite(v) & (v > 0)).any())

    return check


def _need(col: str, what: str):
    def check(df: pd.DataFrame) -> str | None:
        return None if _has_positive(col)(df) else f"no values of {col} ({what})"

    return check


def _has_noisy_gradient(df: pd.DataFrame) -> bool:
    """SGD or label-noise runs (GD against WN-GD alone: the error-vs-alpha figure)."""
    return bool(is_noisy_gradient(df).any())


def _has_factor(df: pd.DataFrame) -> bool:
    """GD's effective initialization is stored (WN-GD's alone: the alpha_eff figure)."""
    return _has_positive("shrink_factor", "gd")(df)


ALPHA, NOISE = need_values("alpha", "alpha"), need_values("noise", "noise sigma")
FINAL, BEST = _need("error_truth", "needs x*"), _need("error_truth_min", "needs loss curves, x*")
BP_ERROR = _need("bp_error_truth", "needs x*")
_noisy = _has_positive("noise")

FIGURES = [
    Figure("methods_bias", f"error to min-l1 vs alpha, GD / SGD / label-noise GD / WN-GD "
           f"({CAPTION})", plot_methods_bias, (ALPHA,), applies=_has_noisy_gradient),
    Figure("noise_error", f"error to x* vs alpha per noise level, final and early-stopped "
           f"({CAPTION})", plot_noise_error, (ALPHA, FINAL, BEST), applies=_noisy),
    Figure("early_stopping", f"early stopping: error to x* vs noise level beside basis pursuit "
           f"({CAPTION})", plot_early_stopping, (NOISE, FINAL, BEST, BP_ERROR), applies=_noisy),
    Figure("effective_init", f"effective initialization vs alpha, GD and WN-GD ({CAPTION})",
           plot_effective_init, applies=_has_factor),
]
