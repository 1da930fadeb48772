"""The report's figures, declared once each and grouped by model family: one module per family
(``analysis/figures/<family>.py``, a ``FIGURES`` list), found through the family registry
(``pipeline.families``). A family without such a module has tables and no figures.

A ``Figure`` names its drawing function (``analysis.plots``: a function of the family's rows,
returning a matplotlib figure; its ``USES`` attribute lists the columns it draws, see
``plots.split_by_extra``), what the rows must hold for it (``needs``: checks that return a
reason when a requirement is not met, in order) and its family.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from pipeline import families

#: A requirement: None when the rows satisfy it, else the reason the figure is skipped.
Check = Callable[[pd.DataFrame], "str | None"]


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    draw: Callable[..., Any]
    needs: tuple[Check, ...] = ()
    family: str | None = families.DEFAULT_FAMILY  # None: every family (``common.py``)
    options: tuple[str, ...] = field(default=())  # report options the function takes ("threshold")
    uses: Callable[[pd.DataFrame], tuple[str, ...]] | None = None  # else ``draw.USES``
    #: whether the figure is of this kind of results at all (else left out, not "skipped")
    applies: Callable[[pd.DataFrame], bool] | None = None

    def columns(self, rows: pd.DataFrame) -> tuple[str, ...]:
        """The columns the figure draws (the others split it into slices)."""
        return self.uses(rows) if self.uses is not None else self.draw.USES


def figures_for(family: str) -> list[Figure]:
    """The figures declared for ``family`` (none when it has no module here)."""
    name = f"{__name__}.{family}"
    if importlib.util.find_spec(name) is None:
        return []
    figures = importlib.import_module(name).FIGURES
    wrong = [f.name for f in figures if f.family != family]
    if wrong:
        raise ValueError(f"{name} declares figures of another family: {wrong}")
    return list(figures)


def all_figures() -> list[Figure]:
    """Every declared figure, family by family in registry order, each followed by the figures
    of every family (``analysis/figures/common.py``) bound to it."""
    from analysis.figures import common

    return [fig for name in families.FAMILIES
            for fig in (*figures_for(name),
                        *(dataclasses.replace(f, family=name) for f in common.FIGURES))]


def need_values(col: str, label: str, method: str | None = None) -> Check:
    """At least two values of ``col`` (among ``method``'s rows, when given)."""
    def check(df: pd.DataFrame) -> str | None:
        d = df if method is None else df[df["method"] == method]
        n = int(d[col].nunique(dropna=True)) if col in d else 0
        return None if n >= 2 else f"needs >= 2 values of {label}, found {n}"

    return check


def need_curves(df: pd.DataFrame) -> str | None:
    ok = df["curve_iter"].map(lambda c: c is not None and len(c) > 0).any()
    return None if ok else "no loss curves stored (curve_iter empty)"
