"""Figures, one function per figure, each taking the tidy run table of ``analysis.load``.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, works
under any backend, headless included); save it with ``fig.savefig(...)``.

Grid axes (alpha, s, eta~) are drawn on a log scale when the grid is log-spaced (``is_log_grid``);
errors, losses and alpha_eff always use log scales. Heatmaps are ``pcolormesh`` on numeric axes
whose cell edges are the midpoints between grid values (geometric midpoints on log axes), so
uneven grids are drawn faithfully.

A figure shows one slice of the sweep: the parameters it does not draw must be fixed. When they
vary (e.g. several ``s`` for the error-vs-alpha figure), the function raises ``ValueError``; use
``split_by_extra(runs, fn.USES)`` to get one slice per combination.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from analysis.aggregate import CELL_KEYS, cell_stats, paired_ratios, ratio_stats
from pipeline import families, parameters

LABELS = {
    "alpha": r"initialization scale $\alpha$",
    "s": r"sparsity $s$ (nonzeros of $x^*$)",
    "eta_ratio": r"learning-rate ratio $\tilde\eta = \eta_r/\eta_u$",
    "error_l1": r"$\|\tilde x_T - x_{\ell_1}\|_2$ (distance to min-$\ell_1$ solution)",
    "rel_error_l1": r"$\|\tilde x_T - x_{\ell_1}\|_2 / \|x_{\ell_1}\|_2$",
    "loss": r"training loss $\frac{1}{2}\|A\tilde x - b\|_2^2$",
    "iteration": "iteration k + 1",
    "alpha_eff": r"effective scale $\alpha_{\mathrm{eff}} = \alpha\, e^{-C_\infty}$",
    "log_ratio": r"$\log_{10}$ median(err GD / err WN-GD)" "\n" r"($>0$: WN-GD closer to min-$\ell_1$)",
    "eta": r"step size $\eta$",
    "width": "hidden width $h$",
    "error_min_norm": r"$\|UV^\top - A^+Y\|_F / \|A^+Y\|_F$"
    "\n(distance to the min-norm solution)",
    "imbalance": r"imbalance $\lambda$ ($U_0 \cdot e^{\lambda/2}$, $V_0 \cdot e^{-\lambda/2}$)",
    "rate": "fitted loss rate per step\n(loss ~ exp(-rate k)), median, IQR band",
    "log_pred_error": r"$\log_{10}$ median $\|\tilde x_T - x_{\mathrm{flow}}\|_2 / \|x_{\mathrm{flow}}\|_2$"
    "\n(distance to the gradient-flow limit)",
}
METHOD_NAMES = families.METHOD_NAMES
GD_COLOR = "0.15"
_RC = {"axes.grid": True, "grid.alpha": 0.3, "font.size": 9, "axes.titlesize": 9}


# ----------------------------------------------------------------------------- grid helpers
def is_log_grid(values: Sequence[float]) -> bool:
    """True when the distinct values look log-spaced: all positive and either >= 3 values with
    equal log10 steps (within 1e-6) or max/min >= 100."""
    v = np.unique(np.asarray([x for x in values if pd.notna(x)], dtype=float))
    if len(v) < 2 or np.any(v <= 0):
        return False
    if v[-1] / v[0] >= 100:
        return True
    steps = np.diff(np.log10(v))
    return len(v) >= 3 and float(np.ptp(steps)) <= 1e-6


def cell_edges(values: Sequence[float], log: bool) -> np.ndarray:
    """Edges (n+1) of cells centred on sorted distinct ``values`` (n >= 2): midpoints between
    neighbours (in log10 space when ``log``), the outer edges half a neighbouring step out
    (on a linear axis the lower edge is clipped at 0 when all values are >= 0)."""
    v = np.unique(np.asarray(values, dtype=float))
    if len(v) < 2:
        raise ValueError(f"need >= 2 grid values for cell edges, got {list(v)}")
    t = np.log10(v) if log else v
    mid = (t[1:] + t[:-1]) / 2
    edges = np.concatenate([[t[0] - (t[1] - t[0]) / 2], mid, [t[-1] + (t[-1] - t[-2]) / 2]])
    if log:
        return 10.0**edges
    if v[0] >= 0 and edges[0] < 0:  # a non-negative quantity: do not draw below zero
        edges[0] = 0.0
    return edges


def _set_grid_scale(ax: Any, axis: str, values: Sequence[float]) -> bool:
    log = is_log_grid(values)
    if log:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    return log


def _uniq(series: pd.Series) -> list:
    return sorted(series.dropna().unique().tolist())


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


#: Keys set per method (``methods: {gd: {eta: ...}, wn: {...}}``): a method with a single value of
#: such a key is compared against every value the other method takes.
METHOD_KEYS = parameters.METHOD_COLUMNS


def _wildcard(df: pd.DataFrame, key: str) -> pd.Series:
    """Rows whose method has one value of method-specific ``key`` (null included)."""
    if key not in METHOD_KEYS:
        return pd.Series(False, index=df.index)
    n = df.groupby("method", dropna=False)[key].transform(lambda s: s.nunique(dropna=False))
    return n <= 1


def split_by_extra(runs: pd.DataFrame, uses: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    """Split ``runs`` into slices in which every cell key not in ``uses`` (nor ``method``) is fixed.

    Returns ``[(fixed_values, slice), ...]`` (a single ``({}, runs)`` when nothing else varies).
    For the method-specific ``METHOD_KEYS``, a method with a single value (GD's null ``eta_ratio``,
    GD's single ``eta`` against a WN eta axis) belongs to every slice of that key, as in the
    pairing rule of ``paired_ratios``.
    """
    extra = [k for k in CELL_KEYS if k in runs.columns and k not in uses and k != "method"]
    varying = []
    for k in extra:
        wild = _wildcard(runs, k)
        vals = _uniq(runs.loc[~wild, k])
        if vals and runs.loc[~wild, k].isna().any():  # null is a value too (batch: full)
            vals.append(None)
        if len(vals) > 1:
            varying.append((k, vals, wild))
    if not varying:
        return [({}, runs)]
    out = []
    for combo in itertools.product(*[vals for _, vals, _ in varying]):
        mask = pd.Series(True, index=runs.index)
        exact = pd.Series(True, index=runs.index)
        for (k, _, wild), v in zip(varying, combo):
            equal = runs[k].isna() if v is None else runs[k] == v
            mask &= wild | equal
            exact &= equal
        if exact.any():
            out.append(({k: v for (k, _, _), v in zip(varying, combo)}, runs[mask]))
    return out


def _require_single_slice(runs: pd.DataFrame, uses: Sequence[str], name: str) -> None:
    slices = split_by_extra(runs, uses)
    if len(slices) > 1:
        keys = sorted({k for fixed, _ in slices for k in fixed})
        raise ValueError(
            f"{name}: parameter(s) {', '.join(keys)} vary across the runs; pass one slice, "
            f"e.g. from analysis.plots.split_by_extra(runs, {name}.USES)"
        )


def _figure(nrows: int, ncols: int, sharex: bool = True, sharey: bool = True, cbar: bool = False):
    with mpl.rc_context(_RC):
        fig = Figure(
            figsize=(3.3 * ncols + (1.0 if cbar else 0.3), 2.7 * nrows + 0.6),
            layout="constrained",
        )
        axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, axes


def _label_outer(axes: np.ndarray, xlabel: str, ylabel: str) -> None:
    for ax in axes[-1, :]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)


def _title(fixed: dict) -> str:
    names = {"eta_ratio": r"$\tilde\eta$", "eta": r"$\eta$", "alpha": r"$\alpha$"}
    return ", ".join(f"{names.get(k, k)} = {_fmt(v)}" for k, v in fixed.items())


def _eta_colors(etas: Sequence[float]) -> dict:
    """One viridis colour per eta~, evenly spaced with both ends of the map left out."""
    pal = mpl.colormaps["viridis"](np.linspace(0, 1, max(len(etas), 1) + 2)[1:-1])[:, :3]
    return {e: tuple(pal[i]) for i, e in enumerate(etas)}


# ----------------------------------------------------------------------------- figures
def plot_error_vs_alpha(runs: pd.DataFrame, metric: str = "error_l1") -> Figure:
    """Error (median over trials, interquartile band) vs alpha, GD against WN-GD.

    Facets: columns = depth L, rows = eta~ (each WN-GD eta~ against the same GD runs).
    ``metric``: ``"error_l1"`` (l2 distance to the basis-pursuit solution) or ``"rel_error_l1"``.
    """
    _require_single_slice(runs, plot_error_vs_alpha.USES, "plot_error_vs_alpha")
    stats = cell_stats(runs)
    Ls = _uniq(stats["L"])
    etas = _uniq(stats.loc[stats["method"] == "wn", "eta_ratio"]) or [None]
    fig, axes = _figure(len(etas), len(Ls))
    colors = _eta_colors(etas)
    for i, eta in enumerate(etas):
        for j, L in enumerate(Ls):
            ax = axes[i, j]
            sel = stats[stats["L"] == L]
            lines = [("gd", sel[sel["method"] == "gd"], GD_COLOR, "GD")]
            if eta is not None:
                wn = sel[(sel["method"] == "wn") & (sel["eta_ratio"] == eta)]
                lines.append(("wn", wn, colors[eta], rf"WN-GD, $\tilde\eta$ = {eta:g}"))
            for _, d, color, label in lines:
                d = d.sort_values("alpha")
                if d.empty:
                    continue
                ax.plot(d["alpha"], d[f"{metric}_median"], "o-", ms=3, color=color, label=label)
                ax.fill_between(
                    d["alpha"], d[f"{metric}_q25"], d[f"{metric}_q75"], color=color, alpha=0.2,
                    lw=0,
                )
            _set_grid_scale(ax, "x", runs["alpha"])
            ax.set_yscale("log", nonpositive="clip")
            ax.set_title(_title({"L": L} | ({"eta_ratio": eta} if eta is not None else {})))
            ax.legend(loc="best", fontsize=7)
    _label_outer(axes, LABELS["alpha"], LABELS[metric] + "\nmedian, IQR band")
    return fig


plot_error_vs_alpha.USES = ("alpha", "L", "eta_ratio")


def _median_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Median over trials of loss curves, on the union of their (iteration + 1) points.

    Each curve is interpolated linearly in log-log space; past its last checkpoint a run keeps its
    final loss (it stopped there). Non-positive / non-finite losses are dropped first.
    """
    grid = np.unique(np.concatenate([k for k, _ in curves]))
    logs = [np.interp(np.log10(grid), np.log10(k), np.log10(v)) for k, v in curves]
    return grid, 10.0 ** np.median(np.vstack(logs), axis=0)


def _curve(it: Any, loss: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if it is None or loss is None or len(it) == 0:
        return None
    k = np.asarray(it, dtype=float) + 1.0
    v = np.asarray(loss, dtype=float)
    ok = np.isfinite(v) & (v > 0)
    return (k[ok], v[ok]) if ok.any() else None


def plot_loss_curves(
    runs: pd.DataFrame, alphas: Sequence[float] | None = None, mode: str = "median"
) -> Figure:
    """Training loss vs iteration (log-log) for GD and each WN-GD eta~, at a few alphas.

    Facets: columns = L, rows = alpha (default: smallest, middle and largest alpha of the grid).
    ``mode="median"``: median curve over trials (see ``_median_curve``); ``"trials"``: one thin
    line per trial. The x axis is iteration + 1 so iteration 0 fits on a log axis.
    """
    if mode not in ("median", "trials"):
        raise ValueError(f"mode must be 'median' or 'trials', not {mode!r}")
    _require_single_slice(runs, plot_loss_curves.USES, "plot_loss_curves")
    grid = _uniq(runs["alpha"])
    if alphas is None:
        alphas = sorted({grid[0], grid[len(grid) // 2], grid[-1]})
    Ls = _uniq(runs["L"])
    etas = _uniq(runs.loc[runs["method"] == "wn", "eta_ratio"])
    colors = _eta_colors(etas)
    fig, axes = _figure(len(alphas), len(Ls))
    for i, a in enumerate(alphas):
        for j, L in enumerate(Ls):
            ax = axes[i, j]
            sel = runs[(runs["alpha"] == a) & (runs["L"] == L)]
            groups = [("gd", None, GD_COLOR, "GD")] + [
                ("wn", e, colors[e], rf"WN-GD, $\tilde\eta$ = {e:g}") for e in etas
            ]
            for method, eta, color, label in groups:
                d = sel[sel["method"] == method]
                if eta is not None:
                    d = d[d["eta_ratio"] == eta]
                curves = [c for c in map(_curve, d["curve_iter"], d["curve_loss"]) if c]
                if not curves:
                    continue
                if mode == "median":
                    ax.plot(*_median_curve(curves), color=color, label=label)
                else:
                    for n, (k, v) in enumerate(curves):
                        ax.plot(k, v, color=color, lw=0.7, alpha=0.6,
                                label=label if n == 0 else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(_title({"L": L, "alpha": a}))
            if ax.lines:
                ax.legend(loc="best", fontsize=7)
    what = "median over trials" if mode == "median" else "one line per trial"
    _label_outer(axes, LABELS["iteration"], LABELS["loss"] + f"\n{what}")
    return fig


plot_loss_curves.USES = ("alpha", "L", "eta_ratio")


def _heatmap(ax: Any, x: list, y: list, z: np.ndarray, xkey: str, ykey: str, **kw: Any):
    """pcolormesh of ``z`` (len(y) x len(x), NaN = no data) on numeric axes; returns the mesh."""
    xlog, ylog = is_log_grid(x), is_log_grid(y)
    mesh = ax.pcolormesh(
        cell_edges(x, xlog), cell_edges(y, ylog), np.ma.masked_invalid(z), shading="flat", **kw
    )
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.grid(False)
    if len(y) <= 8:  # few rows: label each grid value
        ax.set_yticks(y, labels=[_fmt(v) for v in y])
        ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    return mesh


def _contour_in_scale_space(ax: Any, x: list, y: list, z: np.ndarray, level: float):
    """Contour of ``z`` at ``level`` through the cell centres, interpolated in the axes' scale
    space (log10 on log axes), so on a log axis the line lies between grid values geometrically."""
    tx, ty = ax.xaxis.get_transform(), ax.yaxis.get_transform()
    gx = tx.transform(np.asarray(x, float).reshape(-1, 1)).ravel()
    gy = ty.transform(np.asarray(y, float).reshape(-1, 1)).ravel()
    to_data = ax.transScale.inverted() + ax.transData
    return ax.contour(
        gx, gy, np.ma.masked_invalid(z), levels=[level], colors="white", linewidths=1.5,
        transform=to_data,
    )


def _pivot(d: pd.DataFrame, value: str, x: str, xs: list, y: str, ys: list) -> np.ndarray:
    p = d.pivot_table(index=y, columns=x, values=value, aggfunc="first", dropna=False)
    return p.reindex(index=ys, columns=xs).to_numpy(dtype=float)


def plot_phase_diagram(runs: pd.DataFrame, y: str = "s") -> Figure:
    """Robustness phase diagram: log10 of the median paired ratio error(GD)/error(WN-GD).

    x = alpha, y = ``y`` (``"s"`` or ``"eta_ratio"``), columns = L, rows = the other of the two
    (when it varies). Diverging colormap, symmetric about 0 (white: no difference); blank cells
    have no valid ratio.
    """
    if y not in ("s", "eta_ratio"):
        raise ValueError(f"y must be 's' or 'eta_ratio', not {y!r}")
    _require_single_slice(runs, plot_phase_diagram.USES, "plot_phase_diagram")
    rs = ratio_stats(paired_ratios(runs))
    row_key = "eta_ratio" if y == "s" else "s"
    xs, ys, Ls = _uniq(rs["alpha"]), _uniq(rs[y]), _uniq(rs["L"])
    for key, vals in (("alpha", xs), (y, ys)):
        if len(vals) < 2:
            raise ValueError(f"phase diagram needs >= 2 values of {key}, found {len(vals)}")
    rows = _uniq(rs[row_key]) or [None]
    zs = {}
    for r, L in itertools.product(rows, Ls):
        d = rs[rs["L"] == L]
        if r is not None:
            d = d[d[row_key] == r]
        zs[r, L] = _pivot(d, "log10_ratio_median", "alpha", xs, y, ys)
    finite = np.concatenate([z[np.isfinite(z)] for z in zs.values()])
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig, axes = _figure(len(rows), len(Ls), cbar=True)
    mesh = None
    for (i, r), (j, L) in itertools.product(enumerate(rows), enumerate(Ls)):
        ax = axes[i, j]
        mesh = _heatmap(ax, xs, ys, zs[r, L], "alpha", y, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(_title({"L": L} | ({row_key: r} if r is not None else {})))
    _label_outer(axes, LABELS["alpha"], LABELS[y])
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label=LABELS["log_ratio"])
    return fig


plot_phase_diagram.USES = ("alpha", "s", "eta_ratio", "L")


def plot_phase_alpha_s(runs: pd.DataFrame) -> Figure:
    """Phase diagram over alpha x s (see ``plot_phase_diagram``)."""
    return plot_phase_diagram(runs, y="s")


def plot_phase_alpha_eta(runs: pd.DataFrame) -> Figure:
    """Phase diagram over alpha x eta~ (see ``plot_phase_diagram``)."""
    return plot_phase_diagram(runs, y="eta_ratio")


plot_phase_alpha_s.USES = plot_phase_alpha_eta.USES = plot_phase_diagram.USES


def plot_recovery_heatmaps(runs: pd.DataFrame, threshold: float = 1e-3) -> Figure:
    """Recovery rate (fraction of trials with rel_error_l1 <= threshold) over alpha x s.

    Columns: GD, then WN-GD per eta~; rows: L. A white line marks the 50% level wherever the rate
    crosses it (drawn as a contour through the cell centres, also marked on the colorbar).
    """
    _require_single_slice(runs, plot_recovery_heatmaps.USES, "plot_recovery_heatmaps")
    stats = cell_stats(runs, threshold)
    xs, ys, Ls = _uniq(stats["alpha"]), _uniq(stats["s"]), _uniq(stats["L"])
    for key, vals in (("alpha", xs), ("s", ys)):
        if len(vals) < 2:
            raise ValueError(f"recovery heatmap needs >= 2 values of {key}, found {len(vals)}")
    panels = [("gd", None)] * bool((stats["method"] == "gd").any()) + [
        ("wn", e) for e in _uniq(stats.loc[stats["method"] == "wn", "eta_ratio"])
    ]
    fig, axes = _figure(len(Ls), len(panels), cbar=True)
    mesh, contours = None, []
    for (i, L), (j, (method, eta)) in itertools.product(enumerate(Ls), enumerate(panels)):
        ax = axes[i, j]
        d = stats[(stats["L"] == L) & (stats["method"] == method)]
        if eta is not None:
            d = d[d["eta_ratio"] == eta]
        z = _pivot(d, "recovery_rate", "alpha", xs, "s", ys)
        mesh = _heatmap(ax, xs, ys, z, "alpha", "s", cmap="viridis", vmin=0.0, vmax=1.0)
        if np.nanmin(z) < 0.5 < np.nanmax(z):
            contours.append(_contour_in_scale_space(ax, xs, ys, z, 0.5))
        name = "GD" if method == "gd" else rf"WN-GD, $\tilde\eta$ = {eta:g}"
        ax.set_title(f"{name}, L = {L}")
    _label_outer(axes, LABELS["alpha"], LABELS["s"])
    cbar = fig.colorbar(
        mesh,
        ax=axes.ravel().tolist(),
        label=f"recovery rate (fraction of trials with\n"
        rf"rel. error $\leq$ {threshold:g}); white line: 50%",
    )
    if contours:
        cbar.add_lines(contours[0])
    return fig


plot_recovery_heatmaps.USES = ("alpha", "s", "eta_ratio", "L")


def plot_alpha_eff(runs: pd.DataFrame) -> Figure:
    """alpha_eff = alpha * exp(-C_inf) of WN-GD runs against alpha, coloured by eta~ (log-log).

    Points: trials; lines: median per (alpha, eta~). Below the dashed y = x line WN-GD acts like
    GD from a smaller initialization (magnified implicit regularization). Columns: L.
    """
    _require_single_slice(runs, plot_alpha_eff.USES, "plot_alpha_eff")
    wn = runs[(runs["method"] == "wn") & (pd.to_numeric(runs["alpha_eff"]) > 0)]
    if wn.empty:
        raise ValueError("alpha_eff figure needs WN-GD runs with a positive alpha_eff")
    etas, Ls = _uniq(wn["eta_ratio"]), _uniq(wn["L"])
    norm = (LogNorm if is_log_grid(etas) else Normalize)(min(etas), max(etas))
    if norm.vmin == norm.vmax:
        norm = Normalize(norm.vmin * 0.5, norm.vmax * 1.5 if norm.vmax else 1.0)
    cmap = mpl.colormaps["viridis"]
    fig, axes = _figure(1, len(Ls), cbar=True)
    lo, hi = wn["alpha"].min(), wn["alpha"].max()
    for j, L in enumerate(Ls):
        ax = axes[0, j]
        d = wn[wn["L"] == L]
        ax.scatter(d["alpha"], d["alpha_eff"], c=d["eta_ratio"], cmap=cmap, norm=norm, s=10,
                        alpha=0.5, lw=0)
        med = d.groupby(["eta_ratio", "alpha"])["alpha_eff"].median().reset_index()
        for eta, m in med.groupby("eta_ratio"):
            ax.plot(m["alpha"], m["alpha_eff"], "-", color=cmap(norm(eta)), lw=1.2)
        ax.plot([lo, hi], [lo, hi], "--", color="0.4", lw=1,
                label=r"$\alpha_{\mathrm{eff}} = \alpha$")
        _set_grid_scale(ax, "x", runs["alpha"])
        ax.set_yscale("log")
        ax.set_title(f"WN-GD, L = {L}")
        ax.legend(loc="best", fontsize=7)
    _label_outer(axes, LABELS["alpha"], LABELS["alpha_eff"])
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)  # opaque colorbar despite scatter alpha
    fig.colorbar(sm, ax=axes.ravel().tolist(), label=LABELS["eta_ratio"])
    return fig


plot_alpha_eff.USES = ("alpha", "eta_ratio", "L")


# ----------------------------------------------------------------------------- theory overlay
def plot_error_vs_alpha_theory(runs: pd.DataFrame) -> Figure:
    """Distance to the minimum-l1 solution against alpha: measured (points: median over trials,
    bars: interquartile range) and predicted by gradient flow (lines: the median of the
    predictions' distance). GD's prediction is the flow from its own initialization (alpha), WN-GD's
    the flow from w0 e^{-C_inf} (alpha_eff). Points off their line show where discrete steps or an
    unfinished budget leave the flow picture. Facets as ``plot_error_vs_alpha``."""
    _require_single_slice(runs, plot_error_vs_alpha_theory.USES, "plot_error_vs_alpha_theory")
    stats = cell_stats(runs)
    if "pred_rel_error_l1_median" not in stats:
        raise ValueError("the runs carry no predicted limits (pred_* columns)")
    Ls = _uniq(stats["L"])
    etas = _uniq(stats.loc[stats["method"] == "wn", "eta_ratio"]) or [None]
    fig, axes = _figure(len(etas), len(Ls))
    colors = _eta_colors(etas)
    for (i, eta), (j, L) in itertools.product(enumerate(etas), enumerate(Ls)):
        ax = axes[i, j]
        sel = stats[stats["L"] == L]
        lines = [(sel[sel["method"] == "gd"], GD_COLOR, "GD", r"flow from $\alpha$")]
        if eta is not None:
            wn = sel[(sel["method"] == "wn") & (sel["eta_ratio"] == eta)]
            lines.append((wn, colors[eta], rf"WN-GD, $\tilde\eta$ = {eta:g}",
                          r"flow from $\alpha_{\mathrm{eff}}$"))
        for d, color, name, flow in lines:
            d = d.sort_values("alpha")
            if d.empty:
                continue
            med = d["rel_error_l1_median"]
            ax.errorbar(d["alpha"], med, yerr=[med - d["rel_error_l1_q25"],
                                               d["rel_error_l1_q75"] - med],
                        fmt="o", ms=3.5, color=color, elinewidth=0.8, label=f"{name}: measured")
            ax.plot(d["alpha"], d["pred_rel_error_l1_median"], "-", color=color, lw=1.2,
                    label=f"{name}: {flow}")
        _set_grid_scale(ax, "x", runs["alpha"])
        ax.set_yscale("log", nonpositive="clip")
        ax.set_title(_title({"L": L} | ({"eta_ratio": eta} if eta is not None else {})))
        ax.legend(loc="best", fontsize=6)
    _label_outer(axes, LABELS["alpha"], LABELS["rel_error_l1"] + "\npoints: runs, lines: flow")
    return fig


plot_error_vs_alpha_theory.USES = ("alpha", "L", "eta_ratio")


def _pred_panels(stats: pd.DataFrame) -> list[tuple[str, str, dict]]:
    """(method, y key, fixed values) of each panel of ``plot_pred_error_phase``: GD over its eta
    axis; WN-GD over eta~ (one panel row per eta), or over eta when eta~ is fixed."""
    panels = []
    gd, wn = stats[stats["method"] == "gd"], stats[stats["method"] == "wn"]
    if len(_uniq(gd["eta"])) >= 2:
        panels.append(("gd", "eta", {}))
    if len(_uniq(wn["eta_ratio"])) >= 2:
        panels += [("wn", "eta_ratio", {"eta": e}) for e in _uniq(wn["eta"])]
    elif len(_uniq(wn["eta"])) >= 2:
        panels.append(("wn", "eta", {}))
    return panels


def plot_pred_error_phase(runs: pd.DataFrame) -> Figure:
    """Where the runs leave the gradient-flow picture: log10 of the median ``pred_error`` (distance
    of x~_T to the predicted flow limit, relative) over alpha x step size. Rows: GD over eta, WN-GD
    over eta~ (per eta) or eta; columns: L. Blank cells: no usable prediction or run."""
    _require_single_slice(runs, plot_pred_error_phase.USES, "plot_pred_error_phase")
    stats = cell_stats(runs)
    if "pred_error_median" not in stats:
        raise ValueError("the runs carry no predicted limits (pred_* columns)")
    panels, Ls, xs = _pred_panels(stats), _uniq(stats["L"]), _uniq(stats["alpha"])
    if not panels or len(xs) < 2:
        raise ValueError("needs >= 2 alphas and >= 2 step sizes (eta, or eta~ for WN-GD)")
    with np.errstate(divide="ignore"):
        logs = np.log10(stats["pred_error_median"].to_numpy(dtype=float))
    stats = stats.assign(log_pred_error=np.where(np.isfinite(logs), logs, np.nan))
    finite = stats["log_pred_error"].dropna()
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 0.0)
    fig, axes = _figure(len(panels), len(Ls), sharey=False, cbar=True)
    mesh = None
    for (i, (method, y, fixed)), (j, L) in itertools.product(enumerate(panels), enumerate(Ls)):
        d = stats[(stats["method"] == method) & (stats["L"] == L)]
        for k, v in fixed.items():
            d = d[d[k] == v]
        ys = _uniq(stats.loc[stats["method"] == method, y])
        z = _pivot(d, "log_pred_error", "alpha", xs, y, ys)
        mesh = _heatmap(axes[i, j], xs, ys, z, "alpha", y, cmap="magma", vmin=vmin,
                        vmax=max(vmax, vmin + 1e-9))
        axes[i, j].set_title(f"{METHOD_NAMES[method]}, " + _title({"L": L} | fixed))
        axes[i, j].set_ylabel(LABELS[y])
    for ax in axes[-1, :]:
        ax.set_xlabel(LABELS["alpha"])
    fig.colorbar(mesh, ax=axes.ravel().tolist(), label=LABELS["log_pred_error"])
    return fig


plot_pred_error_phase.USES = ("alpha", "L", "eta", "eta_ratio")


# ----------------------------------------------------------------------------- two-layer family
def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log10 y against log10 x over the points with x, y > 0 and finite
    (NaN with fewer than two such points). The two-layer distance to A^+ Y falls like width^{-1/2}
    (docs/MODEL.md, "The two-layer family"), a slope of -0.5."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if np.count_nonzero(ok) < 2 or np.ptp(x[ok]) == 0:
        return float("nan")
    return float(np.polyfit(np.log10(x[ok]), np.log10(y[ok]), 1)[0])


def plot_minnorm_vs_width(runs: pd.DataFrame) -> Figure:
    """Distance to the minimum-norm solution, ``error_min_norm`` = ||U V^T - A^+ Y||_F / ||A^+ Y||_F
    (median over trials, interquartile band), against the width h on log-log axes: one line per
    alpha of the ``random`` initialization, its fitted log-log slope in the legend (``loglog_slope``
    of the medians), and the ``range`` initialization (every alpha pooled) as a dashed reference.
    Two-layer rows only."""
    _require_single_slice(runs, plot_minnorm_vs_width.USES, "plot_minnorm_vs_width")
    stats = cell_stats(runs)
    fig, axes = _figure(1, 1)
    fig.set_size_inches(5.0, 4.0)
    ax = axes[0, 0]
    rand = stats[stats["init"] == "random"]
    alphas = _uniq(rand["alpha"])
    colors = _eta_colors(alphas)
    for a in alphas:
        d = rand[rand["alpha"] == a].sort_values("width")
        slope = loglog_slope(d["width"], d["error_min_norm_median"])
        ax.plot(d["width"], d["error_min_norm_median"], "o-", ms=3, color=colors[a],
                label=rf"random, $\alpha$ = {a:g}, slope {slope:.2f}")
        ax.fill_between(d["width"], d["error_min_norm_q25"], d["error_min_norm_q75"],
                        color=colors[a], alpha=0.2, lw=0)
    rng = runs[runs["init"] == "range"]
    if len(rng):
        med = rng.groupby("width")["error_min_norm"].median().sort_index()
        ax.plot(med.index, med.to_numpy(), "s--", ms=3, color=GD_COLOR,
                label=r"range (every $\alpha$)")
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="clip")
    ax.legend(loc="best", fontsize=7)
    _label_outer(axes, LABELS["width"], LABELS["error_min_norm"] + ", median, IQR band")
    return fig


plot_minnorm_vs_width.USES = ("width", "alpha", "init")


def plot_rate_vs_imbalance(runs: pd.DataFrame) -> Figure:
    """The fitted linear convergence rate of the loss per step (``rate``; median over trials,
    interquartile band) against the initialization imbalance lambda, one line per alpha, one
    panel per width. Two-layer rows only; runs without a fitted rate are left out."""
    _require_single_slice(runs, plot_rate_vs_imbalance.USES, "plot_rate_vs_imbalance")
    stats = cell_stats(runs)
    widths, alphas = _uniq(stats["width"]), _uniq(stats["alpha"])
    colors = _eta_colors(alphas)
    fig, axes = _figure(1, len(widths))
    for j, h in enumerate(widths):
        ax = axes[0, j]
        for a in alphas:
            d = stats[(stats["width"] == h) & (stats["alpha"] == a)].sort_values("imbalance")
            ax.plot(d["imbalance"], d["rate_median"], "o-", ms=3, color=colors[a],
                    label=rf"$\alpha$ = {a:g}")
            ax.fill_between(d["imbalance"], d["rate_q25"], d["rate_q75"], color=colors[a],
                            alpha=0.2, lw=0)
        ax.set_title(f"width h = {h:g}")
        ax.legend(loc="best", fontsize=7)
    _label_outer(axes, LABELS["imbalance"], LABELS["rate"])
    return fig


plot_rate_vs_imbalance.USES = ("imbalance", "alpha", "width")


# ----------------------------------------------------------------------------- adaptive contours
def plot_contours(runs: pd.DataFrame) -> Figure:
    """The success contour of a phase diagram (``analysis.contours``), one panel per method.

    Each cell (a value of ``along`` and ``across``) is a square coloured by its success rate,
    sized by its trial count; cells whose interval (``pipeline.adaptive.cell_interval``) still
    contains the level are outlined in red (undecided). The fitted crossing of each row is a
    black dot, its confidence interval a grey band. ``along``, ``across``, the success criterion
    and the level come from the stored adaptive section (``runs.attrs["adaptive"]``)."""
    from analysis.contours import contours
    from pipeline.adaptive import AdaptiveSpec, cell_status, success_array

    stored = runs.attrs.get("adaptive") or {}
    section = AdaptiveSpec(**stored)
    along, across = section.along, section.across
    _require_single_slice(runs, (along, across or along), "plot_contours")
    ok = success_array(runs[section.success_column].to_numpy(), runs["status"].to_numpy(),
                       at_most=section.at_most, at_least=section.at_least)
    work = pd.DataFrame({"method": runs["method"].to_numpy(), "x": runs[along].to_numpy(float),
                         "y": runs[across].to_numpy(float) if across else 0.0, "ok": ok})
    cells = work.groupby(["method", "x", "y"], sort=True)["ok"].agg(["sum", "size"]).reset_index()
    crossings = contours(runs)
    methods = _uniq(cells["method"])
    log = bool((cells["x"] > 0).all() and cells["x"].max() >= 10 * cells["x"].min())
    fig, axes = _figure(1, len(methods), sharey=True, cbar=True)
    for ax, method in zip(axes[0], methods):
        c = cells[cells["method"] == method]
        undecided = [cell_status(int(x), int(n), section) in ("undecided", "limit")
                     for x, n in zip(c["sum"], c["size"])]
        points = ax.scatter(c["x"], c["y"], c=c["sum"] / c["size"], cmap="viridis", vmin=0,
                            vmax=1, marker="s", s=12 + 60 * np.sqrt(c["size"] / c["size"].max()),
                            edgecolors=["red" if u else "none" for u in undecided],
                            linewidths=1.0)
        row = crossings[crossings["method"] == method] if "method" in crossings else crossings
        row = row.sort_values(across) if across else row
        ys = row[across].to_numpy(float) if across else np.zeros(len(row))
        # an interval reaching beyond the cells drawn (a separated or flat column) is cut there
        span = (cells["x"].min(), cells["x"].max())
        ax.fill_betweenx(ys, np.clip(row["crossing_low"], *span),
                         np.clip(row["crossing_high"], *span), color="0.5", alpha=0.35, lw=0,
                         label=f"{section.confidence:.0%} interval (cut at the grid's ends)")
        ax.plot(row["crossing"], ys, "o-", color="black", ms=3, lw=1,
                label=f"P(success) = {section.level:g}")
        if log:
            ax.set_xscale("log")
        if across and len(np.unique(cells["y"])) <= 12:
            ax.set_yticks(np.unique(cells["y"]), labels=[_fmt(v) for v in np.unique(cells["y"])])
        ax.set_title(METHOD_NAMES.get(method, method))
    fig.colorbar(points, ax=axes[0, -1], label="success rate")
    axes[0, 0].legend(loc="best", fontsize=7)
    _label_outer(axes, LABELS.get(along, along), LABELS.get(across, across) if across else "")
    return fig


plot_contours.USES = ("alpha", "s")  # replaced per sweep by the stored along / across
