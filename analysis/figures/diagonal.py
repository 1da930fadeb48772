"""The diagonal family's figures (docs/MODEL.md): errors to the basis-pursuit solution against
alpha, loss curves, phase diagrams of the GD / WN-GD ratio, recovery rates, alpha_eff and the
theory overlay; then the figures comparing GD, SGD, label-noise GD and WN-GD drawn with seaborn
(``analysis.figures.methods``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import plots
from analysis.aggregate import paired_ratios
from analysis.figures import Figure, methods, need_curves, need_values


def _need_methods(df: pd.DataFrame) -> str | None:
    found = sorted(df["method"].dropna().unique())
    return None if {"gd", "wn"} <= set(found) else f"needs GD and WN-GD runs, found {found}"


def _need_ratios(df: pd.DataFrame) -> str | None:
    n = int(paired_ratios(df)["dropped"].isna().sum())
    return None if n else "no valid paired GD/WN-GD ratio (unpaired or non-finite errors)"


def _need_alpha_eff(df: pd.DataFrame) -> str | None:
    a = pd.to_numeric(df.loc[df["method"] == "wn", "alpha_eff"], errors="coerce")
    return None if (np.isfinite(a) & (a > 0)).any() else "needs WN-GD runs with a finite alpha_eff"


def _need_predictions(df: pd.DataFrame) -> str | None:
    if "pred_status" not in df or df["pred_status"].isna().all():
        return "no predicted limits (results written before the theory overlay)"
    ok = np.isfinite(pd.to_numeric(df["pred_rel_error_l1"], errors="coerce")).any()
    return None if ok else "no usable predicted limit (every pred_status failed)"


def _need_step_axis(df: pd.DataFrame) -> str | None:
    counts = [need_values(col, col, method)(df) is None
              for col, method in (("eta", "gd"), ("eta", "wn"), ("eta_ratio", "wn"))]
    return None if any(counts) else "needs >= 2 values of eta or eta~"


ALPHA, S = need_values("alpha", "alpha"), need_values("s", "s")
ETA_RATIO = need_values("eta_ratio", "eta~ (WN-GD)", "wn")

FIGURES = [
    Figure("error_vs_alpha", "error vs alpha", plots.plot_error_vs_alpha, (ALPHA,)),
    Figure("loss_curves", "training loss vs iteration", plots.plot_loss_curves, (need_curves,)),
    Figure("phase_alpha_s", "phase diagram alpha x s", plots.plot_phase_alpha_s,
           (_need_methods, ALPHA, S, _need_ratios)),
    Figure("phase_alpha_eta", "phase diagram alpha x eta~", plots.plot_phase_alpha_eta,
           (_need_methods, ALPHA, ETA_RATIO, _need_ratios)),
    Figure("recovery_alpha_s", "recovery rate alpha x s", plots.plot_recovery_heatmaps,
           (ALPHA, S), options=("threshold",)),
    Figure("alpha_eff", "alpha_eff vs alpha", plots.plot_alpha_eff, (_need_alpha_eff,)),
    Figure("theory_error_vs_alpha", "error vs alpha, measured and predicted by gradient flow",
           plots.plot_error_vs_alpha_theory, (ALPHA, _need_predictions)),
    Figure("theory_pred_error", "distance to the gradient-flow limit, alpha x step size",
           plots.plot_pred_error_phase, (ALPHA, _need_predictions, _need_step_axis)),
    *methods.FIGURES,
]
