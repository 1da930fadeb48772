"""Adaptive phase diagrams: the decisions of each round as pure functions of stored outcomes.

A sweep's ``adaptive:`` section (issue 18) asks for the contour where a cell's success
probability ``p`` crosses ``level``, located along one axis (``along``) once per value of another
(``across``, optional) in every slice (every value of the other axes and the method). This module
holds the statistics and the round logic only; it reads nothing and runs nothing. Its input is,
per cell, ``(successes, trials)`` counted over the cell's trials ``0 .. trials - 1``.

Terms. A *cell* is a tuple of axis values in the order of the grid's axes (``Axis``); its
*column* is the cell without its ``along`` value, its *slice* the cell without ``along`` and
``across``. A run *succeeds* when its ``success_column`` is ``<= at_most`` (or ``>= at_least``)
and its status is not ``diverged``; a missing or NaN value never succeeds (``success``).

The interval (``cell_interval``). A cell is looked at after ``n_1 = start`` trials, then after
``n_k = min(2 n_{k-1}, max)`` until ``max``: at most ``K = 1 + ceil(log2(max / start))`` looks
(``looks``), the ``n_k`` fixed in advance. At each look the cell gets the two-sided
Clopper-Pearson interval for ``p`` from its first ``n_k`` trials at error ``(1 - confidence) / K``:
``low = Beta^{-1}(e/2; x, n - x + 1)``, ``high = Beta^{-1}(1 - e/2; x + 1, n - x)`` with
``e = (1 - confidence) / K`` (``low = 0`` when ``x = 0``, ``high = 1`` when ``x = n``).
Derivation of its validity over the looks: the trials of a cell are i.i.d. Bernoulli(p) (each
trial has its own instance and initial direction, drawn from its own seed), so at the fixed
``n_k`` the Clopper-Pearson interval misses ``p`` with probability at most ``e`` (it is exact,
i.e. conservative, for every p). Let ``E_k`` be that event for look ``k``, defined on the
cell's infinite trial sequence whether or not the procedure takes look ``k``. Then
``P(some look the procedure takes misses p) <= P(E_1 or ... or E_K) <= K e = 1 - confidence``
(union bound). This holds whatever the stopping rule, because the rule only chooses which of
the ``E_k`` are observed. So every interval a cell ever reports, and hence its final decision,
is right with probability >= ``confidence``, per cell. (Across many cells, about
``(1 - confidence)`` of the decided cells can be wrong; the contour fit, ``analysis.contours``,
does not rely on the decisions, only on the outcomes.) An anytime-valid confidence sequence
would allow unlimited looks; with at most ``K`` (4 for 8 -> 64) looks the union bound costs
little: the interval at level ``1 - 0.05 / 4`` is about 10% wider than at ``0.95``.

A cell is *decided* when its interval excludes ``level`` (``decided``); it is *at its limit*
when it has ``max`` trials.

A round (``next_round``), from every cell's counts:

1. *More trials*: every undecided cell below ``max`` trials gets ``min(2 n, max)`` trials
   (``start`` when it has fewer than ``start / 2``). Trials are always a prefix ``0 .. n - 1``,
   so trial ``t`` of every cell is the same instance and initial direction as in a full grid,
   and cells stay paired.
2. *Bisection*: two cells are *neighbours along* ``along`` when they are in the same column and
   no cell of that column lies between their ``along`` values; *neighbours across* when they have
   the same slice and ``along`` value and no such cell lies between their ``across`` values.
   Neighbours whose point estimates ``x / n`` are on different sides of ``level`` (the sign of
   ``x / n - level`` differs; a cell exactly at ``level`` differs from both sides) are bisected:
   a new value at the midpoint (``midpoint``: geometric on a ``log`` axis, arithmetic on a
   ``linear`` one, ``floor((a + b) / 2)`` on an ``integer`` one) of depth ``1 + max`` of the two
   depths (base values have depth 0), only when that depth is ``<= refine``, the midpoint is
   strictly between the two, and it differs from both at 12 significant digits (run ids write
   floats to 12 significant digits: a value equal to a neighbour there would be the same run).
   Cells with no trials yet are not compared. A new ``along`` value makes one new cell, in the
   column of the two neighbours. A new ``across`` value makes a new column in the slice, with a
   cell at every base (depth 0) value of ``along``, so that its crossing can be located as any
   other column's.
   New cells start at ``start`` trials.
3. *Done* when no cell gets more trials and no cell is new: every cell is decided or at ``max``,
   and no bisection is left within ``refine``.

Determinism: every loop runs over sorted cells and values, so the plan depends only on the
counts, never on the order in which the counts arrived (``next_round`` sorts its input). A
round's plan must be computed from the counts of the runs of the earlier rounds (a resumed sweep
recomputes the same plans from the same stored runs).

Midpoints are machine-independent: ``sqrt(a b)`` is computed in 60-digit decimal arithmetic
(``a b`` exactly, then a correctly rounded square root), then rounded once to the nearest float,
as ``pipeline.axes`` computes powers of ten; ``(a + b) / 2`` exactly (``Fraction``), rounded once.
They are not rounded to 12 significant digits: the run uses the float itself, its id the float's
12-digit form; the 12-digit check above is what keeps two values from sharing an id.
"""

from __future__ import annotations

import decimal
import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "AdaptiveSpec",
    "Axis",
    "RoundPlan",
    "axis",
    "cell_interval",
    "decided",
    "finest_values",
    "looks",
    "midpoint",
    "next_round",
    "success",
    "success_array",
    "validate",
]

KINDS = ("log", "linear", "integer", "category")
_CONTEXT = decimal.Context(prec=60, traps=[])
Key = tuple


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class AdaptiveSpec:
    """The ``adaptive:`` section of a sweep file, as values (``validate`` checks them)."""

    success_column: str
    at_most: float | None = None
    at_least: float | None = None
    level: float = 0.5
    along: str = "alpha"
    across: str | None = None
    trials_start: int = 8
    trials_max: int = 64
    confidence: float = 0.95
    refine: int = 3


def validate(spec: AdaptiveSpec, columns: Iterable[str],
             axes: Mapping[str, Sequence[Any]]) -> list[tuple[str, str]]:
    """Every rule ``spec`` breaks, as ``(field, message)``, fields as dotted paths of the file.

    ``columns``: the result columns a run has; ``axes``: the sweep's axes, name -> values.
    An empty list means the section is valid."""
    out: list[tuple[str, str]] = []
    known = set(columns)
    if spec.success_column not in known:
        out.append(("adaptive.success.column",
                    f"unknown column {spec.success_column!r}; one of {', '.join(sorted(known))}"))
    if (spec.at_most is None) == (spec.at_least is None):
        out.append(("adaptive.success",
                    "give exactly one of at_most and at_least"))
    for name in ("at_most", "at_least"):
        bound = getattr(spec, name)
        if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound)):
            out.append((f"adaptive.success.{name}", f"must be a finite number, got {bound!r}"))
    for name, value in (("along", spec.along), ("across", spec.across)):
        if value is None and name == "across":
            continue
        if value not in axes:
            out.append((f"adaptive.{name}",
                        f"{value!r} is not an axis of the sweep; one of "
                        f"{', '.join(sorted(axes)) or '(none)'}"))
        elif len(axes[value]) < 2:
            out.append((f"adaptive.{name}",
                        f"axis {value!r} has one value; the contour needs at least two"))
    if spec.across is not None and spec.across == spec.along:
        out.append(("adaptive.across", "must differ from along"))
    for name, value in (("level", spec.level), ("confidence", spec.confidence)):
        if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
            out.append((f"adaptive.{name}", f"must be in (0, 1), got {value!r}"))
    start, most = spec.trials_start, spec.trials_max
    if not (isinstance(start, int) and start >= 1):
        out.append(("adaptive.trials.start", f"must be an integer >= 1, got {start!r}"))
    if not (isinstance(most, int) and most >= 1):
        out.append(("adaptive.trials.max", f"must be an integer >= 1, got {most!r}"))
    elif isinstance(start, int) and start > most:
        out.append(("adaptive.trials", f"start ({start}) > max ({most})"))
    if not (isinstance(spec.refine, int) and spec.refine >= 0):
        out.append(("adaptive.refine", f"must be an integer >= 0, got {spec.refine!r}"))
    return out


# ----------------------------------------------------------------------------- success
def success(value: Any, status: str | None, spec: AdaptiveSpec) -> bool:
    """Whether one run succeeds: ``value <= at_most`` (or ``>= at_least``) and ``status`` is not
    ``"diverged"``; ``None`` and NaN never succeed."""
    if status == "diverged" or value is None:
        return False
    v = float(value)
    if math.isnan(v):
        return False
    return v <= spec.at_most if spec.at_most is not None else v >= spec.at_least


def success_array(values: Any, statuses: Any, at_most: float | None = None,
                  at_least: float | None = None) -> np.ndarray:
    """``success`` for arrays (shape (n,)): boolean array, NaN/None values and ``diverged``
    statuses are failures."""
    if (at_most is None) == (at_least is None):
        raise ValueError("give exactly one of at_most and at_least")
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    st = np.asarray(statuses, dtype=object)
    ok = (v <= at_most) if at_most is not None else (v >= at_least)  # NaN compares False
    return ok & (st != "diverged")


# ----------------------------------------------------------------------------- the interval
def looks(trials_start: int, trials_max: int) -> int:
    """The number of looks a cell can take: ``start, 2 start, ...`` capped at ``max``;
    equals ``1 + ceil(log2(max / start))``, computed with integers."""
    n, k = trials_start, 1
    while n < trials_max:
        n, k = min(2 * n, trials_max), k + 1
    return k


def cell_interval(successes: int, trials: int, spec: AdaptiveSpec) -> tuple[float, float]:
    """Clopper-Pearson interval for a cell's success probability at error
    ``(1 - confidence) / looks(start, max)`` (module docstring); ``(0, 1)`` with no trials."""
    x, n = int(successes), int(trials)
    if not 0 <= x <= n:
        raise ValueError(f"need 0 <= successes <= trials, got {x}, {n}")
    if n == 0:
        return 0.0, 1.0
    return _clopper_pearson(x, n, (1.0 - spec.confidence) / looks(spec.trials_start,
                                                                  spec.trials_max))


@functools.lru_cache(maxsize=65536)
def _clopper_pearson(x: int, n: int, e: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval at error ``e`` for ``x`` successes in ``n``."""
    low = 0.0 if x == 0 else float(stats.beta.ppf(e / 2, x, n - x + 1))
    high = 1.0 if x == n else float(stats.beta.ppf(1 - e / 2, x + 1, n - x))
    return low, high


def cell_status(successes: int, trials: int, spec: AdaptiveSpec) -> str:
    """A cell's state after a look: ``"below"`` / ``"above"`` (its interval, ``cell_interval``,
    lies below / above ``level``), ``"limit"`` (undecided at ``max`` trials) or ``"undecided"``."""
    low, high = cell_interval(successes, trials, spec)
    if high < spec.level:
        return "below"
    if low > spec.level:
        return "above"
    return "limit" if trials >= spec.trials_max else "undecided"


def decided(low: float, high: float, level: float) -> bool:
    """Whether the interval ``[low, high]`` excludes ``level`` (a closed interval: touching
    ``level`` is not deciding it)."""
    return high < level or low > level


# ----------------------------------------------------------------------------- axes
@dataclass(frozen=True)
class Axis:
    """One axis of the cell key: its ``name``, ``kind`` (``log``, ``linear``, ``integer``, or
    ``category`` for axes never bisected), its sorted current ``values`` and their ``depths``
    (0 for a base value, ``1 + max`` of the two parents' depths for a bisected one)."""

    name: str
    kind: str
    values: tuple
    depths: tuple[int, ...]

    def depth(self, value: Any) -> int:
        return self.depths[self.values.index(value)]

    def base(self) -> tuple:
        return tuple(v for v, d in zip(self.values, self.depths) if d == 0)


def midpoint(a: Any, b: Any, kind: str) -> Any:
    """The bisection value between ``a < b``: ``sqrt(a b)`` on a log axis (60-digit decimal,
    rounded once to float), ``(a + b) / 2`` on a linear one (exact, rounded once), the integer
    ``(a + b) // 2`` on an integer one. ``None`` when there is no value strictly between them
    (integers differing by 1; floats with no float between them)."""
    if kind == "integer":
        a, b = int(a), int(b)
        m = (a + b) // 2
        return m if a < m < b else None
    if kind == "log":
        if not (a > 0 and b > 0):
            raise ValueError(f"log axis needs positive values, got {a}, {b}")
        prod = _CONTEXT.multiply(decimal.Decimal(float(a)), decimal.Decimal(float(b)))
        m = float(_CONTEXT.sqrt(prod))
    elif kind == "linear":
        m = float((Fraction(float(a)) + Fraction(float(b))) / 2)
    else:
        raise ValueError(f"axis kind {kind!r} cannot be bisected")
    return m if a < m < b else None


def _id12(v: Any) -> Any:
    """A value as a run id writes it (``pipeline.parameter.identity_value``)."""
    if isinstance(v, (int, np.integer)):
        return int(v)
    return format(float(v), ".12g")


def _bisect(a: Any, b: Any, kind: str) -> Any:
    """``midpoint`` unless it equals ``a`` or ``b`` at 12 significant digits (then ``None``)."""
    m = midpoint(a, b, kind)
    if m is None or _id12(m) in (_id12(a), _id12(b)):
        return None
    return m


def axis(name: str, kind: str, base: Sequence[Any], values: Iterable[Any] = ()) -> Axis:
    """An ``Axis`` from its base values and any further values present (e.g. read back from
    stored runs); the depth of each bisected value is recomputed by replaying the bisections
    from the base grid, so it depends on the values only. Raises ``ValueError`` for a value that
    no bisection of the base grid makes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    base_sorted = sorted(set(base), key=_order1)
    extra = set(values) - set(base_sorted)
    depth = {v: 0 for v in base_sorted}
    if extra:
        if kind == "category":
            raise ValueError(f"axis {name}: category axes are never bisected, got {extra}")
        todo = set(extra)
        stack = [(a, b) for a, b in zip(base_sorted, base_sorted[1:])]
        while stack and todo:
            a, b = stack.pop()
            m = _bisect(a, b, kind)
            if m is not None and m in todo:
                todo.discard(m)
                depth[m] = 1 + max(depth[a], depth[b])
                stack += [(a, m), (m, b)]
        if todo:
            raise ValueError(f"axis {name}: values {sorted(todo, key=_order1)} are not "
                             f"bisections of the base grid")
    vals = tuple(sorted(depth, key=_order1))
    return Axis(name, kind, vals, tuple(depth[v] for v in vals))


def finest_values(base: Sequence[Any], kind: str, refine: int) -> tuple:
    """Every value ``refine`` bisection levels can reach from ``base``: the full grid at the
    finest resolution an adaptive sweep may use (for ``wnsweep plan`` and comparisons)."""
    values = sorted(set(base), key=_order1)
    if kind == "category":
        return tuple(values)
    for _ in range(refine):
        new = [m for a, b in zip(values, values[1:]) if (m := _bisect(a, b, kind)) is not None]
        values = sorted(set(values) | set(new), key=_order1)
    return tuple(values)


# ----------------------------------------------------------------------------- ordering
def _order1(v: Any) -> tuple:
    """A total order on axis values of mixed types: None, then numbers, then strings."""
    if v is None:
        return (0, 0.0, "")
    if isinstance(v, str):
        return (2, 0.0, v)
    return (1, float(v), "")


def _order(key: Key) -> tuple:
    return tuple(_order1(v) for v in key)


# ----------------------------------------------------------------------------- the rounds
@dataclass(frozen=True)
class RoundPlan:
    """What a round asks for.

    ``trials``: cell -> total trials it must have after the round (every undecided cell below
    ``max``, and every new cell at ``start``), in sorted cell order; the runs to add are trials
    ``current .. total - 1``. ``new_values``: axis name -> ``((value, depth), ...)`` created by
    bisection this round (sorted). ``status``: every known cell -> ``"below"`` / ``"above"``
    (decided, interval below / above ``level``), ``"undecided"`` (more trials asked),
    ``"limit"`` (undecided at ``max`` trials). ``done``: nothing asked."""

    trials: dict[Key, int]
    new_values: dict[str, tuple[tuple[Any, int], ...]]
    status: dict[Key, str]
    done: bool = field(default=False)


def next_round(cells: Mapping[Key, tuple[int, int]], spec: AdaptiveSpec,
               grid: Sequence[Axis]) -> RoundPlan:
    """The next round's plan from every cell's ``(successes, trials)`` (module docstring).

    ``cells``: cell key (one value per axis of ``grid``, in its order) -> counts over trials
    ``0 .. trials - 1``. ``grid``: the axes, with their current values and depths (``axis``).
    The output depends only on the counts (input order is irrelevant)."""
    names = [a.name for a in grid]
    if spec.along not in names or (spec.across is not None and spec.across not in names):
        raise ValueError(f"along/across must be axes of the grid {names}")
    ia = names.index(spec.along)
    ic = names.index(spec.across) if spec.across is not None else None
    ax_along, ax_across = grid[ia], (grid[ic] if ic is not None else None)
    keys = sorted(cells, key=_order)
    start, most = spec.trials_start, spec.trials_max

    trials: dict[Key, int] = {}
    status: dict[Key, str] = {}
    for k in keys:
        x, n = cells[k]
        status[k] = cell_status(x, n, spec)
        if status[k] == "undecided":
            trials[k] = start if 2 * n < start else min(2 * n, most)

    def side(k: Key) -> int | None:
        x, n = cells[k]
        return None if n == 0 else int(np.sign(x / n - spec.level))

    def depth_of(ax: Axis, v: Any, made: dict) -> int:
        return made[v] if v in made else ax.depth(v)

    made_along: dict[Any, int] = {}
    made_across: dict[Any, int] = {}
    new_cells: set[Key] = set()
    known = set(keys)

    # along: neighbours within a column
    columns: dict[Key, list[Key]] = {}
    for k in keys:
        columns.setdefault(k[:ia] + k[ia + 1:], []).append(k)
    for col in sorted(columns, key=_order):
        members = columns[col]  # sorted by along value (keys are sorted, col fixed)
        members = sorted(members, key=lambda k: _order1(k[ia]))
        for k1, k2 in zip(members, members[1:]):
            m = _split(k1, k2, ia, ax_along, side, spec, depth_of, made_along)
            if m is not None:
                new = k1[:ia] + (m,) + k1[ia + 1:]
                if new not in known:
                    new_cells.add(new)

    # across: neighbours with the same slice and along value
    if ic is not None:
        rows: dict[Key, list[Key]] = {}
        for k in keys:
            rows.setdefault(k[:ic] + k[ic + 1:], []).append(k)
        base_along = ax_along.base()
        for row in sorted(rows, key=_order):
            members = sorted(rows[row], key=lambda k: _order1(k[ic]))
            for k1, k2 in zip(members, members[1:]):
                m = _split(k1, k2, ic, ax_across, side, spec, depth_of, made_across)
                if m is not None:
                    for a in base_along:
                        new = list(k1)
                        new[ic], new[ia] = m, a
                        if tuple(new) not in known:
                            new_cells.add(tuple(new))

    for k in sorted(new_cells, key=_order):
        trials[k] = start
    trials = {k: trials[k] for k in sorted(trials, key=_order)}
    new_values = {}
    for ax, made in ((ax_along, made_along), (ax_across, made_across)):
        fresh = {v: d for v, d in made.items() if v not in ax.values}
        if ax is not None and fresh:
            new_values[ax.name] = tuple((v, fresh[v]) for v in sorted(fresh, key=_order1))
    return RoundPlan(trials=trials, new_values=new_values, status=status, done=not trials)


def _split(k1: Key, k2: Key, i: int, ax: Axis, side, spec: AdaptiveSpec, depth_of,
           made: dict) -> Any:
    """The bisection value between neighbours ``k1``, ``k2`` on axis position ``i``, or None
    (same side, no trials, depth beyond ``refine``, no value between, 12-digit collision).
    Records a made value and its depth in ``made``."""
    s1, s2 = side(k1), side(k2)
    if s1 is None or s2 is None or s1 == s2:
        return None
    a, b = k1[i], k2[i]
    d = 1 + max(depth_of(ax, a, made), depth_of(ax, b, made))
    if d > spec.refine:
        return None
    m = _bisect(a, b, ax.kind)
    if m is None:
        return None
    made.setdefault(m, d)
    return m
