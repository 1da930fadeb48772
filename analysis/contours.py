"""The success contour of a phase diagram, with its confidence interval, per column.

``contours(runs, along="alpha", across="s", success=..., level=0.5)`` locates, for each slice
and value of ``across``, the value of ``along`` where the probability of success crosses
``level``. It needs only the run rows (one per run), so it works on full-grid sweeps and on
adaptive ones (whose cells have unequal trial counts and bisected values) alike.

The fit. A run succeeds when its ``success["column"]`` is ``<= at_most`` (or ``>= at_least``)
and its status is not ``diverged`` (``pipeline.adaptive.success_array``). With ``x`` =
``log10(along)`` on a log axis (``log=None``: detected as all values positive with
``max / min >= 10``) or ``along`` itself, the model is logistic in ``x``:
``P(success | x) = F(a + b x)``, ``F(t) = 1 / (1 + e^-t)``, fitted by maximum likelihood over the
individual runs (Newton's method with step halving on the concave log-likelihood, ``x``
standardized). The crossing is ``x* = (F^-1(level) - a) / b``, returned in ``along``'s units.

The interval: the profile-likelihood set ``{c : 2 (l_max - l_p(c)) <= chi2_1(confidence)}``
with ``l_p(c) = max_b l(F^-1(level) - b c, b)`` (for fixed ``c`` a one-parameter concave
logistic fit, offset ``F^-1(level)``, covariate ``x - c``). Its coverage is asymptotic
(Wilks' theorem, as the number of runs near the crossing grows), not exact; it is invariant
under reparametrization and, unlike the delta method, asymmetric where the likelihood is.
Adaptive sampling (where runs are placed depends on earlier outcomes) leaves the likelihood, and
so this interval, unchanged: the design depends on the data only through past outcomes. Because
``l_p(c) -> l_0`` (the intercept-only fit) as ``|c| -> inf``, the set is bounded exactly when the
likelihood-ratio test of ``b = 0`` rejects at ``1 - confidence``, as Fieller's interval is.
The tests check the coverage by simulation (``tests/test_contours.py``).

Dependent runs. Trial ``t`` of every cell of a column shares its instance and initial direction,
so its outcomes across ``along`` are dependent (typically: it succeeds below its own threshold
and fails above). The likelihood above treats runs as independent and is then overconfident (in
simulation with fully dependent trials, the plain interval covered the true crossing in 62% of
columns at 0.95). So, with ``cluster`` labels (default: the ``trial`` column), the interval is
``{c : 2 (l_max - l_p(c)) <= deff chi2_1(confidence)}`` with the design effect ``deff =
max(1, v_rob / v_naive)``: the ratio of the crossing's delta-method variance from the
cluster-robust (sandwich) covariance to that from the model's information (a Rao-Scott-type
first-order correction of the likelihood ratio; flooring at 1 is conservative). The same
``deff`` scales the test of ``b = 0``. It needs a few clusters (trials) per column (the
sandwich is unreliable with fewer than ~10) and is not applied to separated data (no finite
MLE, no sandwich).

NaN crossing, with ``reason``:

- ``no successes`` / ``no failures``: the success rate does not cross the level in range;
- ``one value``: a single value of ``along``;
- ``slope not significant``: the likelihood-ratio statistic for ``b = 0`` is ``<= chi2_1``;
  the interval would be unbounded (data without a trend, or non-monotone data such as a bump);
  ``crossing_low`` / ``crossing_high`` are NaN too;
- ``slope contradicts direction``: only when ``direction`` is given and the fitted slope has the
  other sign (without ``direction`` the fit cannot contradict the data's direction: the
  maximum-likelihood slope has the sign of ``cov(x, success)``, since the profile of the concave
  log-likelihood in ``b`` has derivative ``n cov(x, y)`` at ``b = 0``);
- ``crossing outside the range``: ``x*`` beyond the smallest or largest ``x`` observed (an
  extrapolation; the interval is NaN too);
- ``separated``: every run at ``x <= x_f`` fails and every run at ``x >= x_s`` succeeds (or the
  reverse), ``x_f <= x_s``; the maximum-likelihood estimate does not exist (``b -> inf``), and
  every crossing in ``(x_f, x_s)`` attains the supremum of the likelihood. The crossing is NaN,
  but the profile-likelihood set above is still well defined (with ``l_max`` the supremum) and
  is reported as ``crossing_low`` / ``crossing_high``: it contains ``[x_f, x_s]`` and widens it
  by what the counts near the ends allow. Its coverage rests on the same asymptotics.

``fit_p`` is a diagnostic, not a filter: the p-value of the deviance of the logistic fit
against one free probability per distinct ``x`` (chi-squared with ``k - 2`` degrees of freedom,
``k`` distinct values; NaN when ``k <= 2`` or separated): a small value says the logistic shape
(or monotonicity) fits poorly.
The plateau model (``model="plateau"``, the default; ``"logistic"`` is the model above). Real success
rates can level off below 1 (a share of instances never recovered) and then fall off a cliff;
the logistic is then pulled toward the plateau. ``model="plateau"`` fits ``P(x) = l + (h - l)
F(logit(q) + b (x - c))``, ``q = (level - l) / (h - l)``, ``0 <= l < level < h <= 1``
(``p_low`` / ``p_high``: ``P`` at small / large ``x``), which nests the logistic (``l = 0``,
``h = 1``) and is parametrized by its crossing ``c``. Maximum likelihood by projected Fisher
scoring within the box (``plateau_mle``), with the slope's sign taken from the logistic fit and
``b`` bounded by ``_B_MAX`` per standard deviation of ``x`` (an MLE at the bound is a step:
``separated``, with the profile set). The interval is the profile-likelihood set of ``c`` (the
maximum over ``(b, l, h)`` at fixed ``c``), widened by the design effect of ``c`` recomputed
from the plateau model's sandwich (parameters at a bound held fixed); coverage asymptotic, not
exact. Extra reason: ``plateau below the level`` (the fitted upper plateau does not exceed the
level: no crossing). ``model="auto"`` uses it only when ``2 (l_plateau - l_logistic) > deff
chi2_2(confidence)``. Measured at 0.95, paired trials, 40 repetitions (``tests/test_contours.py``
and its slow tier): ``plateau`` covers 38/40 and 37/40 (full grid, logistic world, two sets of draws), 72/80 (adaptive,
logistic world), 39/40 and 38/40 (full grid, plateau world ``u`` in 0.7..0.95), 74/80 (adaptive,
plateau world); ``auto`` covers only 29/40 on the full-grid plateau world (with paired trials
``deff`` ~ 5 hides the plateau from its test), so it is not recommended, while the logistic
itself covers only 29/40 in the plateau world. Only ``plateau`` covers >= 90% in every world
measured, and on real sweeps (``benchmarks/adaptive.py``: WN-GD's plateau-then-cliff curves) it
is the model under which the adaptive and the full-grid crossings agree (12 of 12 columns,
against 10 of 13 for the logistic). So it is the default. Its costs: about 0.3 s per column
(the logistic: ms), and wide intervals when the crossing lies near the edge of the range (the
plateau is then weakly identified: an honest width).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from pipeline.adaptive import success_array

__all__ = ["DEFAULT_CELL_KEYS", "contours", "fit_crossing", "logistic_mle"]

#: Parameter columns that, when they vary, split the runs into slices (each its own contour).
DEFAULT_CELL_KEYS = ("method", "L", "init", "eta", "eta_ratio", "schedule", "M", "N", "sign",
                     "max_iters", "tol")

#: Newton stops when the decrement ``g^T H^-1 g / 2`` (the log-likelihood still to gain, to
#: second order) is below this: far below the chi-squared half-quantiles (~1.9) that set the
#: interval, so the endpoints move by a negligible ~1e-12 / |l_p'(c)|.
_DECREMENT = 1e-12
_MAX_NEWTON = 200


def _log_f(t: np.ndarray) -> np.ndarray:
    """log F(t), stable for every t."""
    return -np.logaddexp(0.0, -t)


def _loglik(eta: np.ndarray, y: np.ndarray) -> float:
    """Bernoulli log-likelihood of outcomes ``y`` (0/1, shape (n,)) at logits ``eta``."""
    return float(np.sum(np.where(y, _log_f(eta), _log_f(-eta))))


def logistic_mle(X: np.ndarray, y: np.ndarray, offset: np.ndarray | float = 0.0,
                 start: np.ndarray | None = None) -> tuple[np.ndarray, float, bool]:
    """Maximum-likelihood ``beta`` of ``P(y = 1) = F(offset + X beta)`` by Newton's method with
    step halving. ``X``: (n, p); ``y``: (n,) of 0/1. Returns ``(beta, loglik, converged)``;
    ``converged`` is False when the decrement did not fall below ``_DECREMENT`` in
    ``_MAX_NEWTON`` steps (as under separation, where no maximum exists)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=bool)
    beta = np.zeros(X.shape[1]) if start is None else np.array(start, dtype=float)
    ll = _loglik(offset + X @ beta, y)
    for _ in range(_MAX_NEWTON):
        eta = offset + X @ beta
        p = np.exp(_log_f(eta))
        grad = X.T @ (y - p)
        w = p * (1.0 - p)
        hess = (X * w[:, None]).T @ X
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return beta, ll, False
        decrement = float(grad @ step) / 2
        if not np.isfinite(decrement):
            return beta, ll, False
        if decrement < _DECREMENT:
            return beta, ll, True
        t = 1.0
        while t > 1e-10:
            cand = beta + t * step
            ll_c = _loglik(offset + X @ cand, y)
            if ll_c >= ll:
                break
            t /= 2
        else:
            return beta, ll, False
        beta, ll = cand, ll_c
    return beta, ll, False


def _separation(u: np.ndarray, y: np.ndarray) -> int:
    """+1 when every failure is at ``u <= `` every success (increasing separation), -1 for the
    reverse, 0 when the classes overlap (then the MLE exists; Albert & Anderson 1984)."""
    if u[~y].max() <= u[y].min():
        return 1
    if u[y].max() <= u[~y].min():
        return -1
    return 0


def _binom_ll(k: float, m: float, p: float) -> float:
    """``k log p + (m - k) log(1 - p)`` with ``0 log 0 = 0``."""
    out = 0.0
    if k > 0:
        out += k * math.log(p)
    if m - k > 0:
        out += (m - k) * math.log1p(-p)
    return out


def _profile(u: np.ndarray, y: np.ndarray, g: float, c: float, b0: float) -> float:
    """``l_p(c) = sup_b l(g + b (u - c))`` (one concave parameter). When every point is
    classified correctly by ``b -> +inf`` (or ``-inf``), ``l`` is monotone in ``b`` and the
    supremum is the limit, in which points at ``u = c`` keep probability ``F(g) = level``."""
    z = u - c
    zero = z == 0
    level = 1.0 / (1.0 + math.exp(-g))
    at_c = _binom_ll(float(y[zero].sum()), float(zero.sum()), level)
    for sgn in (1.0, -1.0):
        s = sgn * z
        if np.all(y[s > 0]) and not np.any(y[s < 0]):
            return at_c
    _, ll, _ = logistic_mle(z[:, None], y, offset=g, start=np.array([b0]))
    return ll


def fit_crossing(x: np.ndarray, y: np.ndarray, level: float = 0.5, confidence: float = 0.95,
                 direction: str | None = None, clusters: np.ndarray | None = None,
                 name: str = "x", show: Callable[[float], float] = float,
                 model: str = "plateau") -> dict[str, Any]:
    """The crossing of ``level`` by a logistic fit of outcomes ``y`` (0/1, shape (n,)) against
    ``x`` (shape (n,), already on the fitted scale), with its profile-likelihood interval
    (module docstring). Returns ``crossing``, ``crossing_low``, ``crossing_high`` (in ``x``'s
    units), ``slope`` (per unit of ``x``), ``fit_p`` and ``reason`` ('' when defined).
    ``clusters`` (shape (n,), optional): runs with the same label may be dependent (the same
    trial index across ``along``); the interval is then widened by the design effect (module
    docstring), reported as ``deff`` (1 without clusters).
    ``name`` and ``show`` (x -> the axis' own units) only shape the messages of ``reason``."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=bool)
    nan = float("nan")
    if model not in ("logistic", "plateau", "auto"):
        raise ValueError(f"model must be 'logistic', 'plateau' or 'auto', not {model!r}")
    out = dict(crossing=nan, crossing_low=nan, crossing_high=nan, slope=nan, fit_p=nan,
               deff=1.0, model="logistic", p_low=0.0, p_high=1.0, reason="")
    n, n1 = len(y), int(y.sum())
    if n1 == 0:
        return {**out, "reason": "no successes: the success rate is below the level everywhere"}
    if n1 == n:
        return {**out, "reason": "no failures: the success rate is above the level everywhere"}
    if np.unique(x).size < 2:
        return {**out, "reason": "one value of the axis: no slope"}
    m, s = float(x.mean()), float(x.std())
    u = (x - m) / s
    g = math.log(level / (1.0 - level))
    q = float(stats.chi2.ppf(confidence, 1))
    ll0 = _binom_ll(n1, n, n1 / n)
    sep = _separation(u, y)

    if sep:
        # flip so that success increases with v; the supremum of the likelihood
        v = sep * u
        vf, vs = float(v[~y].max()), float(v[y].min())
        if vf < vs:
            ll_max = 0.0
        else:  # quasi-complete: both classes at the one value vf == vs
            tie = v == vf
            k, mm = float(y[tie].sum()), float(tie.sum())
            ll_max = _binom_ll(k, mm, k / mm)
        slope_sign = float(sep)
        lo_v, hi_v = vf, vs
        b_hat = 1.0
    else:
        X = np.column_stack([np.ones(n), u])
        beta, ll_max, ok = logistic_mle(X, y)
        if not ok:
            return {**out, "reason": "the logistic fit did not converge"}
        a_u, b_u = float(beta[0]), float(beta[1])
        slope_sign = math.copysign(1.0, b_u)
        if clusters is not None:
            out["deff"] = _design_effect(X, y, beta, g, np.asarray(clusters))
        out["slope"] = b_u / s
        k_vals, inv = np.unique(x, return_inverse=True)
        if k_vals.size > 2:
            counts = np.bincount(inv)
            succ = np.bincount(inv, weights=y.astype(float))
            ll_sat = sum(_binom_ll(k, mm, k / mm) for k, mm in zip(succ, counts))
            out["fit_p"] = float(stats.chi2.sf(max(2 * (ll_sat - ll_max), 0.0), k_vals.size - 2))
    lr = 2 * (ll_max - ll0)
    q *= out["deff"]
    if lr <= q:
        return {**out, "reason": f"slope not significant: likelihood ratio {lr:.3g} <= "
                                 f"{q:.3g} (chi2_1 at {confidence} x design effect "
                                 f"{out['deff']:.3g}); the interval is unbounded"}
    if direction is not None:
        want = {"increasing": 1.0, "decreasing": -1.0}[direction]
        if slope_sign != want:
            got = "increasing" if slope_sign > 0 else "decreasing"
            return {**out, "reason": f"slope contradicts direction: fitted {got}, "
                                     f"expected {direction}"}
    thr = ll_max - q / 2

    if sep:
        # profile in v = sep * u (success increases with v); sup region between vf and vs
        def f(c: float) -> float:
            return _profile(v, y, g, c, b_hat) - thr
        k_f = float(y[v == vf].sum()), float((v == vf).sum())
        k_s = float(y[v == vs].sum()), float((v == vs).sum())
        left_lim = _binom_ll(*k_f, max(level, k_f[0] / k_f[1])) - thr   # c -> vf from below
        right_lim = _binom_ll(*k_s, min(level, k_s[0] / k_s[1])) - thr  # c -> vs from above
        span = float(v.max() - v.min())
        lo = vf if left_lim < 0 else _outward(f, vf, left_lim, -span)
        hi = vs if right_lim < 0 else _outward(f, vs, right_lim, span)
        lo_u, hi_u = sorted((sep * lo, sep * hi))
        x_f, x_s = show(m + s * sep * lo_v), show(m + s * sep * hi_v)
        le, ge = ("<=", ">=") if sep > 0 else (">=", "<=")
        what = (f"every run at {name} {le} {x_f:.6g} fails, every run at {name} {ge} {x_s:.6g} "
                "succeeds" if lo_v < hi_v else
                f"runs fail at {name} < {x_f:.6g} and succeed at {name} > {x_f:.6g} (or the "
                "reverse), both outcomes only at that value")
        return {**out, "crossing_low": m + s * lo_u, "crossing_high": m + s * hi_u,
                "slope": sep * math.inf,
                "reason": f"separated: {what}; no maximum-likelihood crossing, the interval "
                          "is the profile-likelihood set"}

    c_hat = (g - a_u) / b_u
    if model != "logistic":
        v = slope_sign * u
        theta, ll_pl = plateau_mle(v, y, level, start=(slope_sign * c_hat, abs(b_u), 0.0, 1.0))
        q_extra = out["deff"] * float(stats.chi2.ppf(confidence, 2))
        if model == "plateau" or 2 * (ll_pl - ll_max) > q_extra:
            return _plateau_result(out, v, y, theta, ll_pl, level, confidence, clusters,
                                   slope_sign, m, s, name, show, x)
    if not (u.min() <= c_hat <= u.max()):
        return {**out, "reason": f"crossing outside the range: fitted {name} = "
                                 f"{show(m + s * c_hat):.6g} beyond [{show(x.min()):.6g}, "
                                 f"{show(x.max()):.6g}]"}

    def f(c: float) -> float:
        return _profile(u, y, g, c, b_u) - thr
    f_hat = q / 2  # l_p(c_hat) = l_max
    span = float(u.max() - u.min())
    lo = _outward(f, c_hat, f_hat, -span)
    hi = _outward(f, c_hat, f_hat, span)
    return {**out, "crossing": m + s * c_hat, "crossing_low": m + s * lo,
            "crossing_high": m + s * hi}


def _quiet(fn):
    """Run ``fn`` without numpy floating-point warnings: the plateau optimizer tries steps whose
    probabilities overflow to 0 or 1 and rejects them by their (non-finite) likelihood."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def _plateau_result(out: dict, v, y, theta, ll_max: float, level: float, confidence: float,
                    clusters, sign: float, m: float, s: float, name: str, show,
                    x: np.ndarray) -> dict:
    """``fit_crossing``'s result under the plateau model fitted in ``v = sign * (x - m) / s``
    (success increasing in ``v``) with MLE ``theta = (c, b, l, h)``: the crossing, its
    profile-likelihood interval widened by the plateau model's design effect, or a reason."""
    c_hat, b_hat, lo, hi = (float(t) for t in theta)
    vals, inv = np.unique(v, return_inverse=True)
    mm = np.bincount(inv).astype(float)
    kk = np.bincount(inv, weights=y.astype(float))
    p_small, p_large = (lo, hi) if sign > 0 else (hi, lo)   # P at small and at large x
    out = {**out, "model": "plateau", "p_low": p_small, "p_high": p_large, "fit_p": math.nan,
           "slope": sign * b_hat / s, "deff": 1.0}
    if hi - level <= 2 * _GAP:
        return {**out, "slope": math.nan,
                "reason": f"plateau below the level: the fitted upper plateau does not exceed "
                          f"{level:.6g}"}
    separated = b_hat >= _B_MAX * (1 - 1e-9)
    if not separated and clusters is not None:
        out["deff"] = _plateau_deff(theta, v, y, level, np.asarray(clusters))
    thr = ll_max - out["deff"] * float(stats.chi2.ppf(confidence, 1)) / 2
    starts = [np.asarray(theta[1:], dtype=float), np.array([b_hat, 0.0, 1.0])]

    def f(c: float) -> float:  # deterministic: the same starts at every c
        return _plateau_profile(vals, kk, mm, level, c, starts)[0] - thr
    span = float(np.ptp(v))
    lo_c = _outward(f, c_hat, ll_max - thr, -span, doublings=12)
    hi_c = _outward(f, c_hat, ll_max - thr, span, doublings=12)
    ends = sorted((m + s * sign * lo_c, m + s * sign * hi_c))
    if separated:
        return {**out, "crossing_low": ends[0], "crossing_high": ends[1], "slope": sign * math.inf,
                "reason": "separated: the plateau model's best fit is a step (slope at its "
                          "bound); no maximum-likelihood crossing, the interval is the "
                          "profile-likelihood set"}
    if not (v.min() <= c_hat <= v.max()):
        return {**out, "reason": f"crossing outside the range: fitted {name} = "
                                 f"{show(m + s * sign * c_hat):.6g} beyond "
                                 f"[{show(x.min()):.6g}, {show(x.max()):.6g}]"}
    return {**out, "crossing": m + s * sign * c_hat, "crossing_low": ends[0],
            "crossing_high": ends[1]}


def _design_effect(X: np.ndarray, y: np.ndarray, beta: np.ndarray, g: float,
                   clusters: np.ndarray) -> float:
    """``max(1, v_rob / v_naive)`` for the crossing ``c = (g - a) / b``: its delta-method
    variance from the cluster-robust (sandwich) covariance ``H^-1 B H^-1`` (``B`` the sum of the
    outer products of each cluster's summed score, times ``G / (G - 1)`` for ``G`` clusters)
    over that from the model's ``H^-1``. 1 with fewer than 2 clusters."""
    labels, inv = np.unique(clusters, return_inverse=True)
    G = labels.size
    if G < 2:
        return 1.0
    p = np.exp(_log_f(X @ beta))
    H = (X * (p * (1 - p))[:, None]).T @ X
    scores = np.zeros((G, X.shape[1]))
    np.add.at(scores, inv, X * (y - p)[:, None])
    B = scores.T @ scores * G / (G - 1)
    a, b = beta
    grad = np.array([-1.0 / b, -(g - a) / b ** 2])
    h_grad = np.linalg.solve(H, grad)
    naive = float(grad @ h_grad)
    robust = float(h_grad @ B @ h_grad)
    return max(1.0, robust / naive)


def _outward(f, c0: float, f0: float, step: float, doublings: int = 60) -> float:
    """The root of ``f`` beyond ``c0`` (where ``f(c0) = f0 >= 0``) in the direction of
    ``step``: steps of ``step * 2^k / 8`` until ``f < 0``, then Brent's method (to a relative
    tolerance of 4 float epsilons). ``f0`` stands for ``f(c0)``: under separation it is the
    one-sided limit from the side searched, which differs from ``f`` at ``c0`` itself.
    ``+-inf`` when ``f`` stays >= 0 over ``doublings`` doublings."""
    def h(c: float) -> float:  # f, continued by f0 at c0 (a one-sided limit when separated)
        return f0 if c == c0 else f(c)

    prev, f_prev = c0, f0
    for k in range(doublings):
        c = c0 + step * 2.0 ** k / 8
        fc = f(c)
        if fc < 0:
            a, b = (prev, c) if prev < c else (c, prev)
            if f_prev == 0:
                return prev
            return optimize.brentq(h, a, b, xtol=1e-14, rtol=4 * np.finfo(float).eps)
        prev, f_prev = c, fc
    return math.copysign(math.inf, step)


# ----------------------------------------------------------------------------- plateau model
#: Largest slope of the plateau model per standard deviation of x: a transition 100 times
#: narrower than the data's spread is a step; an MLE at this bound is reported as separated.
_B_MAX = 400.0
#: The plateaus' distance from their bounds ``level`` (where the crossing is undefined).
_GAP = 1e-6


def _plateau_logs(theta: np.ndarray, v: np.ndarray, level: float):
    """For ``P(v) = l + (h - l) F(eta)``, ``eta = logit(q) + b (v - c)``, ``q = (level - l) /
    (h - l)`` at ``theta = (c, b, l, h)``: ``eta``, ``log F(eta)``, ``log F(-eta)``,
    ``log P``, ``log(1 - P)`` (shape (n,) each, stable for every ``eta``)."""
    c, b, lo, hi = (float(t) for t in theta)
    w = hi - lo
    q = (level - lo) / w
    eta = math.log(q / (1.0 - q)) + b * (v - c)
    lf, lg = _log_f(eta), _log_f(-eta)
    lw = math.log(w)
    log_p = np.logaddexp(math.log(lo) if lo > 0 else -math.inf, lw + lf)
    log_q = np.logaddexp(math.log1p(-hi) if hi < 1 else -math.inf, lw + lg)
    return eta, lf, lg, log_p, log_q


def _plateau_dp(theta: np.ndarray, v: np.ndarray, level: float):
    """``dP/dtheta / P`` and ``dP/dtheta / (1 - P)`` (shape (n, 4) each) of the plateau model
    (``_plateau_logs``), with ``dP = G dl + F dh + (h - l) F G deta``, ``F = F(eta)``,
    ``G = F(-eta)``, ``deta/dc = -b``, ``deta/db = v - c``, ``deta/dl = -1 / (level - l)``,
    ``deta/dh = -1 / (h - level)``."""
    c, b, lo, hi = (float(t) for t in theta)
    _, lf, lg, log_p, log_q = _plateau_logs(theta, v, level)
    lw = math.log(hi - lo)
    d_eta = np.column_stack([np.full(v.size, -b), v - c, np.full(v.size, -1.0 / (level - lo)),
                             np.full(v.size, -1.0 / (hi - level))])
    out = []
    with np.errstate(over="ignore"):  # inf where P (or 1 - P) underflows; callers mask
        for log_den in (log_p, log_q):
            slope = np.exp(lw + lf + lg - log_den)
            dp = d_eta * slope[:, None]
            dp[:, 2] += np.exp(lg - log_den)
            dp[:, 3] += np.exp(lf - log_den)
            out.append(dp)
    return out[0], out[1]


def _plateau_loglik(theta: np.ndarray, v: np.ndarray, k: np.ndarray, m: np.ndarray,
                    level: float, grad: bool = False):
    """Log-likelihood of ``k`` successes of ``m`` runs at each ``v`` under the plateau model,
    and (``grad``) its gradient in ``theta = (c, b, l, h)``."""
    _, _, _, log_p, log_q = _plateau_logs(theta, v, level)
    f = m - k
    ll = float(np.sum(np.where(k > 0, k * log_p, 0.0)) + np.sum(np.where(f > 0, f * log_q, 0.0)))
    if not grad:
        return ll
    dp_p, dp_q = _plateau_dp(theta, v, level)
    dp_p[k == 0], dp_q[f == 0] = 0.0, 0.0   # 0 * inf: no runs, no term
    return ll, k @ dp_p - f @ dp_q


def _plateau_bounds(level: float) -> list[tuple[float, float]]:
    """Box bounds of ``(b, l, h)``: ``0 <= b <= _B_MAX``, ``0 <= l < level < h <= 1``."""
    return [(0.0, _B_MAX), (0.0, level - _GAP), (level + _GAP, 1.0)]


@_quiet
def _plateau_fisher(theta, v, k, m, level: float):
    """Log-likelihood, gradient and Fisher information ``sum m dP dP^T / (P (1 - P))`` (4 x 4)
    of the plateau model at ``theta`` (``_plateau_loglik``)."""
    ll, grad = _plateau_loglik(theta, v, k, m, level, grad=True)
    _, _, _, log_p, _ = _plateau_logs(theta, v, level)
    p = np.exp(log_p)
    dp_p, dp_q = _plateau_dp(theta, v, level)
    ok = (p > 0) & (p < 1)
    dp = dp_p[ok] * p[ok, None]                     # dP
    w = m[ok] / (p[ok] * (1 - p[ok]))
    return ll, grad, (dp * w[:, None]).T @ dp


def _box_ascent(theta, free, bounds, v, k, m, level: float) -> tuple[np.ndarray, float]:
    """Maximize the plateau log-likelihood over ``theta[free]`` within ``bounds`` (one (low,
    high) per parameter) by projected Fisher scoring with step halving: a coordinate at a bound
    whose gradient points outward is held. Stops when the scoring decrement ``g^T I^-1 g / 2``
    over the moving coordinates is below ``_DECREMENT``."""
    lo, hi = np.array(bounds, dtype=float).T
    theta = np.clip(np.asarray(theta, dtype=float), lo, hi)
    ll, g, info = _plateau_fisher(theta, v, k, m, level)
    for _ in range(_MAX_NEWTON):
        move = free & ~(((theta <= lo) & (g < 0)) | ((theta >= hi) & (g > 0)))
        if not move.any():
            break
        gi, hi_ = g[move], info[np.ix_(move, move)]
        hi_ = hi_ + 1e-12 * np.trace(hi_) * np.eye(gi.size)
        try:
            step_m = np.linalg.solve(hi_, gi)
        except np.linalg.LinAlgError:
            break
        if not float(gi @ step_m) / 2 >= _DECREMENT:
            break
        step = np.zeros_like(theta)
        step[move] = step_m
        t = 1.0
        while t > 1e-10:
            cand = np.clip(theta + t * step, lo, hi)
            ll_c = _plateau_loglik(cand, v, k, m, level)
            if ll_c >= ll:
                break
            t /= 2
        else:
            break
        if ll_c - ll < 1e-14 and t < 1:
            theta = cand
            break
        theta = cand
        ll, g, info = _plateau_fisher(theta, v, k, m, level)
    return theta, _plateau_loglik(theta, v, k, m, level)


@_quiet
def _plateau_profile(v, k, m, level: float, c: float, starts) -> tuple[float, np.ndarray]:
    """``l_p(c) = max over (b, l, h)`` of the plateau log-likelihood at crossing ``c``
    (``_box_ascent`` from each of ``starts``); returns ``(l_p, (b, l, h))``."""
    bounds = [(c, c)] + _plateau_bounds(level)
    free = np.array([False, True, True, True])
    best = (-math.inf, None)
    for z0 in starts:
        theta, ll = _box_ascent(np.r_[c, z0], free, bounds, v, k, m, level)
        if ll > best[0]:
            best = (ll, theta[1:])
    return best


@_quiet
def plateau_mle(v: np.ndarray, y: np.ndarray, level: float = 0.5,
                start: tuple | None = None) -> tuple[np.ndarray, float]:
    """Maximum-likelihood ``theta = (c, b, l, h)`` of the plateau model ``P(v) = l + (h - l)
    F(logit(q) + b (v - c))``, ``q = (level - l) / (h - l)``, increasing in ``v`` (``b >= 0``),
    for outcomes ``y`` (0/1) at ``v`` (both shape (n,)). ``start``: an extra starting point.
    Joint ascent in all four parameters (``_box_ascent``) from a few starts (the crossing at
    the largest rise of the success rate between adjacent ``v``, plateaus at the extreme rates
    or at 0 and 1), the best kept (the tests check it against a grid search). Returns
    ``(theta, loglik)``."""
    vals, inv = np.unique(v, return_inverse=True)
    m = np.bincount(inv).astype(float)
    k = np.bincount(inv, weights=np.asarray(y, dtype=float))
    rate = k / m
    hi0 = min(max(float(rate.max()), level + 0.05), 0.999)
    lo0 = max(min(float(rate.min()), level - 0.05), 0.001)
    b0 = 4.0 / max(float(np.ptp(vals)), 1e-12)
    jump = int(np.argmax(np.diff(rate))) if vals.size > 1 else 0
    c_jump = float(vals[jump:jump + 2].mean())
    cands = [np.array([c_jump, b0, lo0, hi0]), np.array([c_jump, 10 * b0, lo0, hi0]),
             np.array([c_jump, b0, 0.0, 1.0])]
    if start is not None:
        cands.append(np.asarray(start, dtype=float))
    bounds = [(-math.inf, math.inf)] + _plateau_bounds(level)
    best = (None, -math.inf)
    for t0 in cands:
        theta, ll = _box_ascent(t0, np.ones(4, bool), bounds, vals, k, m, level)
        if ll > best[1]:
            best = (theta, ll)
    return best


@_quiet
def _plateau_deff(theta, v, y, level: float, clusters: np.ndarray) -> float:
    """The design effect of the crossing ``c`` under the plateau model: ``max(1, v_rob /
    v_naive)`` for ``c``'s variance from the cluster sandwich ``I^-1 B I^-1`` over that from
    the Fisher information ``I = sum dP dP^T / (P (1 - P))`` (``B``: the outer products of each
    cluster's summed score, times ``G / (G - 1)``), over the parameters not at a bound (a
    plateau at 0 or 1 is then fixed). 1 with fewer than 2 clusters."""
    labels, inv = np.unique(clusters, return_inverse=True)
    G = labels.size
    if G < 2:
        return 1.0
    _, b, lo, hi = theta
    free = [0, 1] + ([2] if lo > 1e-8 else []) + ([3] if hi < 1 - 1e-8 else [])
    _, _, _, log_p, _ = _plateau_logs(theta, v, level)
    p = np.exp(log_p)
    dp_p, dp_q = _plateau_dp(theta, v, level)
    dp_p, dp_q = dp_p[:, free], dp_q[:, free]
    info = (dp_p * p[:, None]).T @ dp_p + (dp_q * (1 - p)[:, None]).T @ dp_q
    score = np.where(np.asarray(y, bool)[:, None], dp_p, -dp_q)
    per = np.zeros((G, len(free)))
    np.add.at(per, inv, score)
    B = per.T @ per * G / (G - 1)
    try:
        inv_info = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return 1.0
    naive = float(inv_info[0, 0])
    robust = float((inv_info @ B @ inv_info)[0, 0])
    return max(1.0, robust / naive) if naive > 0 and np.isfinite(robust) else 1.0


_STORED = object()  # an argument left to the stored spec


def contours(runs: pd.DataFrame, along: str | None = None, across: Any = _STORED,
             success: dict | None = None, level: float | None = None,
             confidence: float | None = None, log: bool | None = None,
             cell_keys: Sequence[str] | None = None, direction: str | None = None,
             cluster: str | None = "trial", model: str = "plateau") -> pd.DataFrame:
    """One row per slice and value of ``across``: the crossing of ``level`` along ``along``.

    Arguments not given come from the adaptive section of the sweep the runs were loaded from
    (``runs.attrs["adaptive"]``, set by ``analysis.load``), else: ``along="alpha"``,
    ``across="s"``, ``success={"column": "rel_error_l1", "at_most": 1e-2}``, ``level=0.5``,
    ``confidence=0.95``.

    ``runs``: one row per run (``analysis.load``), with ``along``, ``across`` (if given),
    ``status`` and ``success["column"]``. ``success``: ``{"column": ..., "at_most": ...}`` or
    ``{..., "at_least": ...}`` (default: ``rel_error_l1 <= 1e-2``). Slices: the ``cell_keys``
    (default ``DEFAULT_CELL_KEYS``) present in ``runs``, other than ``along`` / ``across``, that
    take more than one value (nulls count as a value). ``log``: fit in ``log10(along)``;
    ``None`` detects it (every value positive and ``max / min >= 10``, over all runs).
    ``direction``: ``"increasing"`` / ``"decreasing"`` if known (module docstring).
    ``cluster``: the column whose equal values (within a column of the diagram) may be
    dependent runs, default ``trial`` (trial t shares its instance and initial direction across
    ``along``); ignored when absent from ``runs``; ``None``: runs independent.

    Returns columns: the slice columns, ``across``, ``n_runs``, ``n_success``, ``crossing``,
    ``crossing_low``, ``crossing_high`` (in ``along``'s units), ``slope`` (per unit of the
    fitted x: per decade on a log axis), ``fit_p``, ``deff``, ``log``, ``reason``."""
    stored = runs.attrs.get("adaptive") or {}
    along = along or stored.get("along", "alpha")
    across = stored.get("across", "s") if across is _STORED else across
    if success is None:
        success = ({"column": stored["success_column"], "at_most": stored.get("at_most"),
                    "at_least": stored.get("at_least")} if stored
                   else {"column": "rel_error_l1", "at_most": 1e-2})
    level = level if level is not None else stored.get("level", 0.5)
    confidence = confidence if confidence is not None else stored.get("confidence", 0.95)
    keys = [k for k in (cell_keys if cell_keys is not None else DEFAULT_CELL_KEYS)
            if k in runs.columns and k not in (along, across)
            and runs[k].nunique(dropna=False) > 1]
    groups = keys + ([across] if across is not None else [])
    a = pd.to_numeric(runs[along], errors="raise").to_numpy(dtype=float)
    if log is None:
        log = bool(np.all(a > 0) and a.max() / a.min() >= 10)
    x_all = np.log10(a) if log else a
    ok = success_array(runs[success["column"]].to_numpy(), runs["status"].to_numpy(),
                       at_most=success.get("at_most"), at_least=success.get("at_least"))
    labels = (runs[cluster].to_numpy() if cluster is not None and cluster in runs.columns
              else None)
    cols = groups + ["n_runs", "n_success", "crossing", "crossing_low", "crossing_high",
                     "slope", "fit_p", "deff", "model", "p_low", "p_high", "log", "reason"]
    rows = []
    iterator = (runs.groupby(groups, dropna=False, sort=True).indices.items() if groups
                else [((), np.arange(len(runs)))])
    for key, idx in iterator:
        key = key if isinstance(key, tuple) else (key,)
        fit = fit_crossing(x_all[idx], ok[idx], level, confidence, direction,
                           clusters=None if labels is None else labels[idx], name=along,
                           show=(lambda v: 10.0 ** v) if log else float, model=model)
        if log:
            for c in ("crossing", "crossing_low", "crossing_high"):
                fit[c] = 10.0 ** fit[c]
        rows.append(dict(zip(groups, key), n_runs=len(idx), n_success=int(ok[idx].sum()),
                         log=log, **fit))
    return pd.DataFrame(rows, columns=cols)
