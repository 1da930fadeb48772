"""Tests of analysis/contours.py: the logistic MLE against a brute-force likelihood maximum,
the NaN reasons, and the coverage of the crossing's interval by simulation, on full-grid data
and on data placed by the adaptive procedure (pipeline/adaptive.py) run in memory."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.contours import (_loglik, _plateau_loglik, contours, fit_crossing, logistic_mle,
                               plateau_mle)
from pipeline import adaptive
from pipeline.axes import logspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import adaptive_sim as sim  # noqa: E402

SUCCESS = {"column": "rel_error_l1", "at_most": 1e-2}


def frame(alpha, ok, **extra) -> pd.DataFrame:
    return pd.DataFrame({"alpha": alpha, "rel_error_l1": np.where(ok, 0.0, 1.0),
                         "status": "converged", **extra})


# ----------------------------------------------------------------------------- the MLE
def test_mle_matches_a_brute_force_grid_maximum():
    x = np.repeat([0.0, 1.0, 2.0, 3.0, 4.0], 4)
    y = np.array([1, 1, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    X = np.column_stack([np.ones_like(x), x])
    beta, ll, ok = logistic_mle(X, y)
    assert ok
    # independent check: the log-likelihood on a grid, refined twice around its maximum
    ca, cb, half = 0.0, 0.0, 5.0
    for _ in range(3):
        a = np.linspace(ca - half, ca + half, 201)
        b = np.linspace(cb - half, cb + half, 201)
        A, B = np.meshgrid(a, b, indexing="ij")
        eta = A[..., None] + B[..., None] * x
        ll_grid = np.sum(np.where(y, -np.logaddexp(0, -eta), -np.logaddexp(0, eta)), axis=-1)
        i, j = np.unravel_index(np.argmax(ll_grid), ll_grid.shape)
        step = a[1] - a[0]                         # this grid's spacing
        ca, cb, half = a[i], b[j], 10 * step
    assert abs(beta[0] - ca) <= step and abs(beta[1] - cb) <= step
    assert ll >= ll_grid.max()                     # the MLE is at least the grid's best
    # the score vanishes at the MLE (to the Newton decrement's tolerance)
    p = 1 / (1 + np.exp(-(X @ beta)))
    assert np.abs(X.T @ (y - p)).max() < 1e-5


def test_profile_interval_is_the_likelihood_ratio_set():
    rng = np.random.default_rng(5)
    x = np.repeat(np.linspace(-3, 0, 13), 16)
    y = rng.random(x.size) < 1 / (1 + np.exp(4 * (x + 1.5)))
    r = fit_crossing(x, y, model="logistic")
    assert r["reason"] == "" and r["crossing_low"] < r["crossing"] < r["crossing_high"]
    X = np.column_stack([np.ones_like(x), x])
    _, ll_max, _ = logistic_mle(X, y)
    q = stats.chi2.ppf(0.95, 1)
    g = 0.0  # logit(0.5)
    for c in (r["crossing_low"], r["crossing_high"]):
        # an independent profile: maximise over b on a fine grid, then refine
        bs = np.linspace(-20, 0, 20001)
        lls = [_loglik(g + b * (x - c), y) for b in bs[::50]]
        b0 = bs[::50][int(np.argmax(lls))]
        fine = np.linspace(b0 - 0.1, b0 + 0.1, 2001)
        prof = max(_loglik(g + b * (x - c), y) for b in fine)
        assert 2 * (ll_max - prof) == pytest.approx(q, abs=1e-5)


def test_recovers_a_known_crossing():
    """Many runs from p = F(-6 (log10 alpha + 1.7)): the crossing 10^-1.7 inside a narrow
    interval."""
    rng = np.random.default_rng(11)
    alpha = np.repeat(logspace(-3, 0, 13), 200)
    ok = rng.random(alpha.size) < 1 / (1 + np.exp(6 * (np.log10(alpha) + 1.7)))
    out = contours(frame(alpha, ok), across=None, success=SUCCESS, model="logistic")
    row = out.iloc[0]
    assert row["reason"] == "" and bool(row["log"])
    assert row["crossing_low"] <= 10 ** -1.7 <= row["crossing_high"]
    assert math.log10(row["crossing_high"] / row["crossing_low"]) < 0.1
    assert row["slope"] == pytest.approx(-6, rel=0.15)


# ----------------------------------------------------------------------------- NaN reasons
GRID = np.repeat(logspace(-3, 0, 7), 8)


@pytest.mark.parametrize("ok, words", [
    (np.zeros(GRID.size, bool), "no successes"),
    (np.ones(GRID.size, bool), "no failures"),
    (np.arange(GRID.size) % 2 == 0, "slope not significant"),
    # a bump: success only in the middle, no trend
    (np.isin(np.round(np.log10(GRID), 6), [-2.0, -1.5, -1.0]), "slope not significant"),
])
def test_nan_reasons(ok, words):
    row = contours(frame(GRID, ok), across=None, success=SUCCESS, model="logistic").iloc[0]
    assert math.isnan(row["crossing"]) and row["reason"].startswith(words), row["reason"]
    assert math.isnan(row["crossing_low"]) and math.isnan(row["crossing_high"])


def test_crossing_outside_the_range():
    # p from 0.9 down to ~0.6 across the range: the fitted 0.5 lies beyond the largest alpha
    x = np.log10(GRID)
    ok = np.zeros(GRID.size, bool)
    for i, v in enumerate(sorted(set(x))):
        at = np.flatnonzero(x == v)
        ok[at[: 7 - i // 2]] = True       # 7, 7, 6, 6, 5, 5, 4 successes of 8
    row = contours(frame(GRID, ok), across=None, success=SUCCESS, model="logistic").iloc[0]
    assert row["reason"].startswith("crossing outside the range"), row["reason"]
    assert math.isnan(row["crossing"]) and math.isnan(row["crossing_low"])


def test_direction_contradicted():
    rng = np.random.default_rng(2)
    ok = rng.random(GRID.size) < 1 / (1 + np.exp(4 * (np.log10(GRID) + 1.5)))
    good = contours(frame(GRID, ok), across=None, success=SUCCESS, direction="decreasing", model="logistic")
    assert good.iloc[0]["reason"] == ""
    bad = contours(frame(GRID, ok), across=None, success=SUCCESS, direction="increasing", model="logistic")
    assert bad.iloc[0]["reason"].startswith("slope contradicts direction: fitted decreasing")


def test_separation_reports_the_profile_set():
    x = np.log10(GRID)
    ok = x < -1.4                                    # all succeed up to 10^-1.5, none after
    row = contours(frame(GRID, ok), across=None, success=SUCCESS, model="logistic").iloc[0]
    assert row["reason"].startswith("separated") and math.isnan(row["crossing"])
    # 8 of 8 at each end of the gap: a crossing beyond either value would give that value's
    # 8 runs probability <= 1/2 each, 2 log-lik units below the supremum: the set is the gap
    assert row["crossing_low"] == pytest.approx(10 ** -1.5, rel=1e-12)
    assert row["crossing_high"] == pytest.approx(10 ** -1.0, rel=1e-12)
    # with 2 runs per value the ends are not decisive: the set widens beyond the gap
    few = np.repeat(logspace(-3, 0, 7), 2)
    row = contours(frame(few, np.log10(few) < -1.4), across=None, success=SUCCESS, model="logistic").iloc[0]
    assert row["reason"].startswith("separated")
    assert row["crossing_low"] < 10 ** -1.5 and row["crossing_high"] > 10 ** -1.0


def test_slices_and_columns():
    rng = np.random.default_rng(4)
    parts = []
    for method, shift in (("gd", 0.0), ("wn", 0.5)):
        for s in (2, 4):
            ok = rng.random(GRID.size) < 1 / (1 + np.exp(4 * (np.log10(GRID) + 2 - shift)))
            parts.append(frame(GRID, ok, method=method, s=s, L=2))
    out = contours(pd.concat(parts, ignore_index=True), success=SUCCESS, model="logistic")
    assert list(out.columns[:2]) == ["method", "s"] and "L" not in out.columns  # L: one value
    assert len(out) == 4 and (out["n_runs"] == GRID.size).all()


# ----------------------------------------------------------------------------- coverage
def test_coverage_full_grid_by_simulation():
    """Full grid (13 alphas x 32 trials, trials shared across alpha: each trial succeeds below
    its own threshold, the strongest dependence) at confidence 0.95: the interval covers the
    true crossing in >= 90% of 40 repetitions."""
    alpha = logspace(-3, 0, 13)
    covered, reps = 0, 40
    for seed in range(reps):
        world = sim.World(seed, -4.0, {"gd": lambda s: -1.6}, 32, paired=True)
        runs = sim.rows(world, {("gd", a, 2): 32 for a in alpha})
        row = contours(runs, success=SUCCESS, model="logistic").iloc[0]
        covered += bool(row["crossing_low"] <= 10 ** -1.6 <= row["crossing_high"])
    print(f"full grid: covered {covered}/{reps}")
    assert covered / reps >= 0.9


def test_coverage_adaptive_by_simulation():
    """The adaptive procedure in memory (8 -> 64 trials, refine 2, paired trials), then the
    contour fit on all its runs: coverage of the true crossing >= 90% over 40 repetitions x 2
    columns at confidence 0.95; and fewer runs than the full grid at the finest resolution."""
    spec = adaptive.AdaptiveSpec("rel_error_l1", at_most=1e-2, along="alpha", across=None,
                                 refine=2)
    base = logspace(-3, 0, 7)
    x0 = {"gd": lambda s: -1.5 + 0.3 * s}
    covered = total = runs = 0
    for seed in range(40):
        world = sim.World(seed, -4.0, x0, spec.trials_max, paired=True)
        cells, _ = sim.run_adaptive(world, spec, ["gd"], base, [0, 1])
        runs += sum(cells.values())
        out = contours(sim.rows(world, cells), success=SUCCESS, model="logistic")
        truth = 10.0 ** (-1.5 + 0.3 * out["s"])
        covered += int(((out["crossing_low"] <= truth) & (truth <= out["crossing_high"])).sum())
        total += len(out)
    grid = 40 * 2 * len(adaptive.finest_values(base, "log", 2)) * spec.trials_max
    print(f"adaptive: covered {covered}/{total}, runs {runs} = {runs / grid:.1%} of the grid")
    assert total == 80 and covered / total >= 0.9
    assert runs / grid <= 0.2


@pytest.mark.slow
@pytest.mark.parametrize("paired", [False, True])
def test_coverage_adaptive_with_across_bisection_slow(paired):
    """The benchmark's setting (2 methods, s in 2..8 with bisection across, refine 3), 40
    repetitions: coverage of the truth and agreement with the full grid's crossing."""
    spec = adaptive.AdaptiveSpec("rel_error_l1", at_most=1e-2, along="alpha", across="s",
                                 refine=3)
    tot = dict(runs=0, grid_runs=0, columns=0, covered=0, grid_columns=0, agrees=0)
    for seed in range(40):
        r = sim.one_repetition(seed, -4.0, paired, spec, logspace(-3, 0, 7), [2, 4, 6, 8])
        for k in tot:
            tot[k] += r[k]
    print(tot)
    assert tot["covered"] / tot["columns"] >= 0.9
    assert tot["agrees"] / tot["grid_columns"] >= 0.9
    assert tot["runs"] / tot["grid_runs"] <= 0.2


# ----------------------------------------------------------------------------- plateau model
def test_plateau_mle_matches_a_brute_force_grid_maximum():
    """The plateau MLE against the log-likelihood on a 4-d grid of (c, b, l, h): at least the
    grid's best, within a few grid spacings of it, and the score vanishes at interior values."""
    rng = np.random.default_rng(3)
    v = np.repeat(np.linspace(-2, 2, 7), 30)
    y = rng.random(v.size) < 0.1 + 0.7 / (1 + np.exp(-3 * (v - 0.3)))
    theta, ll = plateau_mle(v, y)
    vals, inv = np.unique(v, return_inverse=True)
    m, k = np.bincount(inv).astype(float), np.bincount(inv, weights=y.astype(float))
    axes = [np.linspace(-1, 1.5, 26), np.linspace(0.5, 8, 26), np.linspace(0, 0.45, 19),
            np.linspace(0.55, 1, 19)]
    C, B, L, H = np.meshgrid(*axes, indexing="ij")
    q = (0.5 - L) / (H - L)
    eta = (np.log(q / (1 - q)) + B * (0 - C))[..., None] + B[..., None] * vals
    p = L[..., None] + (H - L)[..., None] / (1 + np.exp(-eta))
    grid = np.sum(k * np.log(p) + (m - k) * np.log1p(-p), axis=-1)
    best = np.unravel_index(np.argmax(grid), grid.shape)
    assert ll >= grid.max()
    for t, ax, i in zip(theta, axes, best):
        assert abs(t - ax[i]) <= 3 * (ax[1] - ax[0])
    _, g = _plateau_loglik(theta, vals, k, m, 0.5, grad=True)
    assert np.abs(g).max() < 1e-4


def test_plateau_model_finds_the_cliff_not_the_plateau():
    """Success 0.8 up to a cliff at log10 alpha = -1 (the real WN-GD shape): the plateau model's
    crossing is at the cliff, P = 1/2 where 0.8 F = 1/2; the logistic's is pulled to smaller
    alpha (below the plateau model's interval) by the plateau's failures. One draw (seed 9; seed 8's 95% interval misses narrowly,
    as 5% of draws should: the coverage tests are the evidence)."""
    rng = np.random.default_rng(9)
    alpha = np.repeat(logspace(-3, 0, 13), 200)
    x = np.log10(alpha)
    ok = rng.random(alpha.size) < 0.8 / (1 + np.exp(8 * (x + 1)))
    truth = -1 - math.log(0.625 / 0.375) / 8
    pl = contours(frame(alpha, ok), across=None, success=SUCCESS, model="plateau").iloc[0]
    assert pl["model"] == "plateau" and pl["reason"] == ""
    assert pl["crossing_low"] <= 10 ** truth <= pl["crossing_high"]
    assert pl["p_low"] == pytest.approx(0.8, abs=0.03) and pl["p_high"] < 0.01
    lg = contours(frame(alpha, ok), across=None, success=SUCCESS, model="logistic").iloc[0]
    assert lg["model"] == "logistic" and lg["crossing"] < pl["crossing_low"]


@pytest.mark.slow
@pytest.mark.parametrize("plateau", [False, True])
def test_coverage_plateau_model_slow(plateau):
    """``model="plateau"`` on paired full-grid columns (13 alphas x 32 trials, 40 repetitions):
    in a logistic world and in a plateau world ``P = u F(-4 (log10 alpha + 1.6))``, ``u``
    uniform in 0.7..0.95 per column (trial t succeeds when its shared uniform is below ``P``:
    a share ``1 - u`` of trials never succeeds, as in the real data), coverage >= 90%."""
    alpha = logspace(-3, 0, 13)
    covered, reps = 0, 40
    for seed in range(reps):
        top = float(np.random.default_rng(1000 + seed).uniform(0.7, 0.95)) if plateau else 1.0
        world = sim.World(seed, -4.0, {"gd": lambda s: -1.6}, 32, paired=True)
        base = world.p
        world.p = lambda method, a, s, base=base, top=top: top * base(method, a, s)
        t = math.log((0.5 / top) / (1 - 0.5 / top)) if top < 1 else 0.0
        truth = 10.0 ** (-1.6 + t / -4.0)
        runs = sim.rows(world, {("gd", a, 2): 32 for a in alpha})
        row = contours(runs, success=SUCCESS, model="plateau").iloc[0]
        covered += bool(row["crossing_low"] <= truth <= row["crossing_high"])
    print(f"plateau model, {'plateau' if plateau else 'logistic'} world: {covered}/{reps}")
    assert covered / reps >= 0.9
