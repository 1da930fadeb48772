"""Tests of the adaptive core (pipeline/adaptive.py): validation, the success rule, the
Clopper-Pearson interval split over the looks, bisection, depths, determinism."""

from __future__ import annotations

import decimal
import itertools
import math
import random
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from pipeline import adaptive as A
from pipeline.axes import logspace

SPEC = A.AdaptiveSpec("rel_error_l1", at_most=1e-2, level=0.5, along="alpha", across="s",
                      trials_start=8, trials_max=64, confidence=0.95, refine=2)
AXES = {"alpha": logspace(-3, 0, 4), "s": (2, 4, 6), "L": (2,)}
COLUMNS = ["rel_error_l1", "error_l1", "status"]


# ----------------------------------------------------------------------------- validation
def test_valid_spec_has_no_findings():
    assert A.validate(SPEC, COLUMNS, AXES) == []
    assert A.validate(replace(SPEC, across=None), COLUMNS, AXES) == []


@pytest.mark.parametrize("change, field, words", [
    (dict(success_column="nope"), "adaptive.success.column", "unknown column 'nope'"),
    (dict(at_most=None), "adaptive.success", "exactly one of at_most and at_least"),
    (dict(at_least=0.5), "adaptive.success", "exactly one of at_most and at_least"),
    (dict(along="eta"), "adaptive.along", "'eta' is not an axis of the sweep"),
    (dict(across="L"), "adaptive.across", "axis 'L' has one value"),
    (dict(across="alpha"), "adaptive.across", "must differ from along"),
    (dict(level=1.0), "adaptive.level", "must be in (0, 1), got 1.0"),
    (dict(level=0.0), "adaptive.level", "must be in (0, 1), got 0.0"),
    (dict(confidence=1.5), "adaptive.confidence", "must be in (0, 1), got 1.5"),
    (dict(trials_start=65), "adaptive.trials", "start (65) > max (64)"),
    (dict(trials_start=0), "adaptive.trials.start", "must be an integer >= 1"),
    (dict(refine=-1), "adaptive.refine", "must be an integer >= 0, got -1"),
])
def test_each_rule_names_its_field(change, field, words):
    findings = A.validate(replace(SPEC, **change), COLUMNS, AXES)
    assert [f for f, _ in findings] == [field], findings
    assert words in findings[0][1]


# ----------------------------------------------------------------------------- success
def test_success_rule():
    assert A.success(1e-2, "converged", SPEC)            # <= is inclusive
    assert A.success(1e-3, "max_iters", SPEC)
    assert not A.success(1e-3, "diverged", SPEC)
    assert not A.success(float("nan"), "converged", SPEC)
    assert not A.success(None, "converged", SPEC)
    assert not A.success(0.02, "converged", SPEC)
    least = replace(SPEC, at_most=None, at_least=0.9)
    assert A.success(0.9, "converged", least) and not A.success(0.8, "converged", least)
    arr = A.success_array([1e-3, None, float("nan"), 1e-3, 1.0],
                          ["converged", "converged", "converged", "diverged", "converged"],
                          at_most=1e-2)
    assert arr.tolist() == [True, False, False, False, False]


# ----------------------------------------------------------------------------- interval
@pytest.mark.parametrize("start, most, k", [(8, 64, 4), (8, 50, 4), (8, 8, 1), (1, 64, 7),
                                             (3, 100, 7), (8, 9, 2)])
def test_looks_is_one_plus_ceil_log2(start, most, k):
    assert A.looks(start, most) == k == 1 + math.ceil(math.log2(most / start))


@pytest.mark.parametrize("x, n", [(0, 8), (1, 8), (4, 8), (7, 8), (8, 8), (13, 64), (0, 1)])
def test_clopper_pearson_against_beta_quantiles(x, n):
    low, high = A.cell_interval(x, n, SPEC)
    e = 0.05 / 4  # four looks for 8 -> 64
    # independent: the interval's definition as tail probabilities of the binomial
    if x > 0:
        assert low == pytest.approx(stats.beta(x, n - x + 1).ppf(e / 2), rel=1e-12)
        assert stats.binom.sf(x - 1, n, low) == pytest.approx(e / 2, rel=1e-9)
    else:
        assert low == 0.0
    if x < n:
        assert high == pytest.approx(stats.beta(x + 1, n - x).isf(e / 2), rel=1e-12)
        assert stats.binom.cdf(x, n, high) == pytest.approx(e / 2, rel=1e-9)
    else:
        assert high == 1.0


def test_error_is_split_over_the_looks():
    one = replace(SPEC, trials_max=8)      # one look: the plain 95% interval
    lo1, hi1 = A.cell_interval(3, 8, one)
    lo4, hi4 = A.cell_interval(3, 8, SPEC)
    assert lo1 == pytest.approx(stats.beta(3, 6).ppf(0.025), rel=1e-12)
    assert lo4 < lo1 and hi4 > hi1


def test_decided_edges():
    s = SPEC
    assert A.cell_interval(0, 0, s) == (0.0, 1.0) and not A.decided(0.0, 1.0, 0.5)
    lo, hi = A.cell_interval(0, 8, s)          # 0/8: high = 1 - (e/2)^(1/8) = 0.42 < 0.5
    assert hi == pytest.approx(1 - (0.05 / 8) ** (1 / 8), rel=1e-12) and A.decided(lo, hi, 0.5)
    lo, hi = A.cell_interval(8, 8, s)
    assert lo == pytest.approx((0.05 / 8) ** (1 / 8), rel=1e-12) and A.decided(lo, hi, 0.5)
    lo, hi = A.cell_interval(4, 8, s)
    assert not A.decided(lo, hi, 0.5)
    assert not A.decided(0.2, 0.5, 0.5) and not A.decided(0.5, 0.7, 0.5)  # closed interval
    assert A.decided(0.2, 0.49, 0.5)


def test_interval_covers_over_all_looks_by_simulation():
    """The union bound: over the whole sequence of looks, p outside some interval in at most
    1 - confidence of the cells (here far less: the bound is conservative)."""
    rng = np.random.default_rng(7)
    misses = 0
    reps = 4000
    for p in (0.3, 0.5):
        draws = rng.random((reps, 64)) < p
        for row in draws:
            for n in (8, 16, 32, 64):
                lo, hi = A.cell_interval(int(row[:n].sum()), n, SPEC)
                if not lo <= p <= hi:
                    misses += 1
                    break
    assert misses / (2 * reps) <= 0.05


# ----------------------------------------------------------------------------- midpoints
def test_midpoints_by_kind():
    m = A.midpoint(1e-3, 1e-2, "log")
    exact = (decimal.Decimal(1e-3) * decimal.Decimal(1e-2)).sqrt(decimal.Context(prec=80))
    assert m == float(exact)
    assert m == pytest.approx(10 ** -2.5, rel=2 ** -52)
    assert A.midpoint(0.1, 0.4, "linear") == 0.25
    assert A.midpoint(1.0, 2.0 ** 53, "linear") == float((1 + 2 ** 53) / 2)
    assert A.midpoint(2, 6, "integer") == 4 and A.midpoint(2, 5, "integer") == 3
    assert A.midpoint(2, 3, "integer") is None
    with pytest.raises(ValueError):
        A.midpoint("a", "b", "category")


def test_log_midpoints_match_logspace_on_the_finer_grid():
    """Bisecting logspace(-3, 0, 4) gives the float nearest 10^e of the finer grid's exponents
    (both correctly rounded): the same values as logspace(-3, 0, 7)."""
    assert A.finest_values(logspace(-3, 0, 4), "log", 1) == tuple(logspace(-3, 0, 7))


def test_no_bisection_at_a_12_digit_collision():
    a, b = 1.0, 1.00000000001                       # distinct at 12 digits
    assert format(a, ".12g") != format(b, ".12g")
    m = A.midpoint(a, b, "linear")
    assert m is not None and a < m < b              # a float exists between them ...
    assert format(m, ".12g") in (format(a, ".12g"), format(b, ".12g"))  # ... with a's or b's id
    spec = replace(SPEC, along="eta", across=None)
    grid = [A.axis("eta", "linear", [a, b])]
    plan = A.next_round({(a,): (8, 8), (b,): (0, 8)}, spec, grid)
    assert plan.new_values == {} and plan.done


# ----------------------------------------------------------------------------- rounds
def grid_for(cells, base_alpha, base_s):
    return [A.axis("method", "category", ["gd", "wn"]),
            A.axis("alpha", "log", base_alpha, {k[1] for k in cells}),
            A.axis("s", "integer", base_s, {k[2] for k in cells})]


def step_cells(base_alpha, base_s, edge):
    """Counts with a sharp contour: all succeed for alpha < edge(s), else none (8 trials)."""
    return {(m, a, s): (8 if a < edge(m, s) else 0, 8)
            for m in ("gd", "wn") for a in base_alpha for s in base_s}


def test_round_doubles_undecided_and_bisects_along_and_across():
    base_a, base_s = logspace(-3, 0, 4), [2, 4, 6]
    cells = step_cells(base_a, base_s, lambda m, s: 10 ** (-3.5 + s / 2))
    cells[("gd", 1.0, 6)] = (4, 8)                    # undecided: gets 16 trials
    plan = A.next_round(cells, SPEC, grid_for(cells, base_a, base_s))
    assert plan.trials[("gd", 1.0, 6)] == 16 and plan.status[("gd", 1.0, 6)] == "undecided"
    assert plan.status[("gd", 1e-3, 2)] == "above" and plan.status[("gd", 1.0, 2)] == "below"
    mid = A.midpoint(1e-3, 1e-2, "log")
    assert plan.trials[("gd", mid, 2)] == 8           # along: between 1e-3 (8/8) and 1e-2 (0/8)
    # across: at alpha = 1e-2, s=2 fails and s=4 succeeds -> s=3, every base alpha
    for a in base_a:
        assert plan.trials[("gd", a, 3)] == 8
    assert dict(plan.new_values["s"]) == {3: 1, 5: 1}
    assert not plan.done
    assert list(plan.trials) == sorted(plan.trials, key=A._order)


def test_depth_limit_and_integer_neighbours():
    base_a, base_s = logspace(-3, 0, 4), [2, 3]
    edge = 10 ** -2.4                                # between 1e-3 and 1e-2, never on a value
    spec = replace(SPEC, refine=2, across="s")
    cells = {(m, a, s): (8 if a < edge else 0, 8)
             for m in ("gd", "wn") for a in base_a for s in base_s}
    rounds = 0
    while True:
        plan = A.next_round(cells, spec, grid_for(cells, base_a, base_s))
        if plan.done:
            break
        rounds += 1
        for k, n in plan.trials.items():
            cells[k] = (n if k[1] < edge else 0, n)
    alphas = sorted({k[1] for k in cells})
    ax = A.axis("alpha", "log", base_a, alphas)
    assert max(ax.depths) == 2 and len(alphas) == 4 + 2   # two levels, one per level
    assert {k[2] for k in cells} == {2, 3}                 # 2 and 3: no integer between
    assert rounds == 2


def test_refine_zero_never_bisects():
    base_a, base_s = logspace(-3, 0, 4), [2, 4]
    cells = step_cells(base_a, base_s, lambda m, s: 0.05)
    plan = A.next_round(cells, replace(SPEC, refine=0), grid_for(cells, base_a, base_s))
    assert plan.new_values == {} and plan.done


def test_next_round_ignores_input_order():
    base_a, base_s = logspace(-3, 0, 7), [2, 4, 6, 8]
    rng = np.random.default_rng(3)
    cells = {(m, a, s): (int(rng.integers(0, 9)), 8)
             for m in ("gd", "wn") for a in base_a for s in base_s}
    grid = grid_for(cells, base_a, base_s)
    ref = A.next_round(cells, SPEC, grid)
    items = list(cells.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        other = A.next_round(dict(items), SPEC, grid)
        assert list(other.trials.items()) == list(ref.trials.items())
        assert other.new_values == ref.new_values and other.status == ref.status
    assert not ref.done and ref.new_values


def test_axis_depths_are_replayed_from_values():
    base = logspace(-3, 0, 4)
    m1 = A.midpoint(base[0], base[1], "log")
    m2 = A.midpoint(base[0], m1, "log")
    ax = A.axis("alpha", "log", base, [m2, m1])
    assert ax.depth(m1) == 1 and ax.depth(m2) == 2 and ax.base() == tuple(base)
    with pytest.raises(ValueError, match="not bisections"):
        A.axis("alpha", "log", base, [0.002])


def test_finest_values_counts():
    assert len(A.finest_values(logspace(-3, 0, 7), "log", 3)) == 6 * 8 + 1
    assert A.finest_values([2, 4, 8], "integer", 3) == (2, 3, 4, 5, 6, 7, 8)
    assert A.finest_values([0.0, 1.0], "linear", 2) == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_new_cells_start_and_cells_at_limit():
    base_a, base_s = logspace(-3, 0, 4), [2, 4]
    cells = {(m, a, s): (32, 64) for m, a, s in itertools.product(("gd", "wn"), base_a, base_s)}
    plan = A.next_round(cells, SPEC, grid_for(cells, base_a, base_s))
    assert set(plan.status.values()) == {"limit"} and plan.done
    cells[("gd", 1e-3, 2)] = (0, 0)                  # not run yet: start trials, no comparison
    plan = A.next_round(cells, SPEC, grid_for(cells, base_a, base_s))
    assert plan.trials == {("gd", 1e-3, 2): 8}
