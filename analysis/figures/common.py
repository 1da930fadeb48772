"""Figures of every family: the success contour of an adaptive sweep (``analysis.contours``)."""

from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.figures import Figure


def _adaptive(df: pd.DataFrame) -> bool:
    return bool(df.attrs.get("adaptive"))


def _need_columns(df: pd.DataFrame) -> str | None:
    stored = df.attrs["adaptive"]
    missing = [c for c in (stored["along"], stored.get("across"), stored["success_column"])
               if c is not None and (c not in df or df[c].isna().all())]
    return f"no values of {', '.join(missing)} in these rows" if missing else None


def _contour_columns(df: pd.DataFrame) -> tuple[str, ...]:
    stored = df.attrs.get("adaptive") or {}
    return tuple(c for c in (stored.get("along"), stored.get("across")) if c)


FIGURES = [
    Figure("contour", "success contour with its confidence band (adaptive)", plots.plot_contours,
           (_need_columns,), family=None, uses=_contour_columns, applies=_adaptive),
]
