"""The two-layer family's figures (docs/MODEL.md, "The two-layer family"): the distance to the
minimum-norm solution against width, the convergence rate against the imbalance."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import plots
from analysis.figures import Figure, need_values


def _need_rates(df: pd.DataFrame) -> str | None:
    ok = np.isfinite(pd.to_numeric(df["rate"], errors="coerce")).any() if "rate" in df else False
    return None if ok else "no fitted convergence rate (every run diverged or stopped early)"


FIGURES = [
    Figure("minnorm_vs_width", "distance to the minimum-norm solution vs width",
           plots.plot_minnorm_vs_width, (need_values("width", "width"),), family="twolayer"),
    Figure("rate_vs_imbalance", "convergence rate vs imbalance", plots.plot_rate_vs_imbalance,
           (need_values("imbalance", "imbalance"), _need_rates), family="twolayer"),
]
