"""The predicted gradient-flow limit (pipeline.families.diagonal.theory) against independent computations: the primal
convex programs solved by cvxpy (exponential and power cones, Clarabel), long small-step GD and
WN-GD runs of the engine (pipeline.families.diagonal.dynamics), and a Farkas-infeasible instance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.families.diagonal import dynamics, initialization, metrics, problems, theory

cp = pytest.importorskip("cvxpy")

#: Clarabel's tolerances for the reference solves: with its defaults (1e-8 gaps) x is only good to
#: ~1e-5 on these programs. With these it often ends "optimal_inaccurate" (it cannot certify gaps
#: this small), but its x is then within ~1e-7 of the Newton solution (measured: 3e-11 .. 7e-7).
CLARABEL_TIGHT = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-8,
                      max_iter=500)


def _instance(M, N, s, signed, seed):
    inst = problems.generate_instance(M, N, s, signed, seed)
    return inst.A, inst.b


def _weights(n, alpha, scheme, seed=7):
    return initialization.initial_weights(n, alpha, initialization.init_direction(n, scheme, seed))


def _rel(x, y):
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


# --- against the primal programs (cvxpy) ---------------------------------------------------------


def _cvxpy_primal(A, b, w0, depth, signed):
    """The Bregman-projection primal of the module docstring, split as x = p - q (q absent for
    nonneg): L = 2 with kl_div (exponential cones), L > 2 with a concave power (power cones)."""
    N = A.shape[1]
    u0 = w0[:N]
    v0 = w0[N:] if signed else None

    def potential(var, w):
        if depth == 2:  # sum var log(var / w^2) - var + w^2
            return cp.sum(cp.kl_div(var, w**2))
        # sum w^{2-L} var - (L/2) var^{2/L}
        return cp.sum(cp.multiply(w ** (2.0 - depth), var) - (depth / 2) * cp.power(var, 2 / depth))

    p = cp.Variable(N, nonneg=True)
    objective, x = potential(p, u0), p
    if signed:
        q = cp.Variable(N, nonneg=True)
        objective, x = objective + potential(q, v0), p - q
    problem = cp.Problem(cp.Minimize(objective), [A @ x == b])
    with warnings.catch_warnings():  # "Solution may be inaccurate": see CLARABEL_TIGHT
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(solver="CLARABEL", **CLARABEL_TIGHT)
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
    value = np.asarray(x.value, dtype=np.float64)
    assert np.linalg.norm(A @ value - b) <= 1e-8 * np.linalg.norm(b)
    return value


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("scheme,alpha", [("constant", 0.3), ("random", 0.1)])
def test_dual_solve_matches_cvxpy_primal(signed, depth, scheme, alpha):
    A, b = _instance(12, 30, 3, signed, seed=11)
    w0 = _weights(2 * 30 if signed else 30, alpha, scheme)
    pred = theory.predicted_limit(A, b, w0, depth, signed)
    assert pred.status == "ok", pred.message
    x_ref = _cvxpy_primal(A, b, w0, depth, signed)
    err = _rel(pred.x, x_ref)
    sign = "signed" if signed else "nonneg"
    print(f"L={depth} {sign} {scheme}: |x - x_cvxpy| / |x_cvxpy| = {err:.1e}"
          f" ({pred.iterations} Newton iterations)")
    assert err <= 1e-6


# --- against gradient descent (the engine) -------------------------------------------------------

#: (depth, scheme) -> alpha for the GD runs: moderate scales so that every run converges in a few
#: 10^4 steps; signed L = 3 random uses a smaller alpha: at 0.7 the step eta = 0.01 is not yet in
#: the O(eta) regime (ratio 2.6).
GD_ALPHA = {
    False: {(2, "constant"): 0.7, (2, "random"): 0.7, (3, "constant"): 0.7, (3, "random"): 0.7},
    True: {(2, "constant"): 0.7, (2, "random"): 0.7, (3, "constant"): 0.7, (3, "random"): 0.4},
}
GD_ETA = 0.01


@pytest.mark.slow
@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
def test_gd_lands_within_order_eta_of_the_prediction(signed):
    """Converged GD runs at eta and eta/2, L = 2 and 3, constant and random init: pred_error halves
    with eta (the discrete iteration's O(eta) gap to the flow), and is small."""
    M, N = 10, 20
    A, b = _instance(M, N, 2, signed, seed=4)
    n = 2 * N if signed else N
    configs, w0s, keys = [], [], []
    for (depth, scheme), alpha in GD_ALPHA[signed].items():
        w0 = _weights(n, alpha, scheme)
        for eta in (GD_ETA, GD_ETA / 2):
            configs.append(dynamics.RunConfig("gd", signed, depth, eta, max_iters=60_000,
                                              tol=1e-22, checkpoints=4))
            w0s.append(w0)
            keys.append((depth, scheme, eta))
    runs = dict(zip(keys, dynamics.run_batch(A, b, configs, w0s)))
    for (depth, scheme), alpha in GD_ALPHA[signed].items():
        pred = theory.predicted_limit(A, b, _weights(n, alpha, scheme), depth, signed)
        assert pred.status == "ok", pred.message
        err = {}
        for eta in (GD_ETA, GD_ETA / 2):
            run = runs[(depth, scheme, eta)]
            assert run.status == "converged", (depth, scheme, eta, run.status)
            err[eta] = theory.prediction_metrics(run.x_final, pred.x, pred.x)["pred_error"]
        ratio = err[GD_ETA] / err[GD_ETA / 2]
        print(f"L={depth} {scheme} alpha={alpha}: pred_error {err[GD_ETA]:.2e} (eta={GD_ETA}), "
              f"{err[GD_ETA / 2]:.2e} (eta/2), ratio {ratio:.3f}")
        assert err[GD_ETA] < 0.05
        assert 1.6 <= ratio <= 2.5


# --- tiny initialization -------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
@pytest.mark.parametrize("depth", [2, 3])
def test_tiny_alpha_no_overflow(signed, depth):
    """alpha = 1e-6 (u0^2 = 1e-12; L = 3: u0^{2-L} = 1e6): finite, A x = b to 1e-9, and (as the
    theory says for tiny alpha) next to the minimum-l1 solution, which is the sparse x* here."""
    M, N = 20, 50
    inst = problems.generate_instance(M, N, 3, signed, seed=2)
    for scheme in ("constant", "random"):
        w0 = _weights(2 * N if signed else N, 1e-6, scheme)
        # no overflow, invalid or division warnings either (underflow to 0 is expected and fine)
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            pred = theory.predicted_limit(inst.A, inst.b, w0, depth, signed)
        assert pred.status == "ok", pred.message
        assert np.all(np.isfinite(pred.x))
        residual = np.linalg.norm(inst.A @ pred.x - inst.b) / np.linalg.norm(inst.b)
        assert residual <= 1e-9
        if scheme == "constant":
            assert _rel(pred.x, inst.x_star) <= 1e-4


# --- WN-GD: the alpha_eff statement --------------------------------------------------------------


@pytest.mark.slow
def test_wn_limit_is_the_flow_limit_from_alpha_eff():
    """A converged WN-GD run (nonneg, L = 2, normalized schedule, eta~ = 0.3, norm grows from 1.34
    to 1.50): the prediction from w0 e^{-C_inf} is within 1e-2 of its limit, the prediction from w0
    itself at least 10x further."""
    M, N = 10, 20
    A, b = _instance(M, N, 2, False, seed=5)
    w0 = _weights(N, 0.3, "constant")
    config = dynamics.RunConfig("wn", False, 2, 0.05, eta_ratio=0.3, schedule="normalized",
                                max_iters=30_000, tol=1e-14, checkpoints=4)
    (run,) = dynamics.run_batch(A, b, [config], [w0])
    assert run.status == "converged"
    assert run.r_final > 1.1 * run.r0
    log_scale = theory.wn_log_scale(run.r0, run.r_final, config.eta_ratio)
    assert log_scale == pytest.approx(-metrics.c_inf(run.r0, run.r_final, config.eta_ratio))
    from_eff = theory.predicted_limit(A, b, w0, 2, False, log_scale=log_scale)
    from_alpha = theory.predicted_limit(A, b, w0, 2, False)
    # the same prediction from explicitly scaled weights (alpha_eff = alpha e^{-C_inf})
    scaled = theory.predicted_limit(A, b, w0 * np.exp(log_scale), 2, False)
    assert from_eff.ok and from_alpha.ok and scaled.ok
    assert _rel(scaled.x, from_eff.x) <= 1e-9
    err_eff = theory.prediction_metrics(run.x_final, from_eff.x, from_eff.x)["pred_error"]
    err_alpha = theory.prediction_metrics(run.x_final, from_alpha.x, from_alpha.x)["pred_error"]
    print(f"C_inf = {-log_scale:.3f}: pred_error from alpha_eff {err_eff:.2e}, from alpha "
          f"{err_alpha:.2e}")
    assert err_eff <= 1e-2
    assert err_alpha >= 10 * err_eff


# --- statuses and metrics ------------------------------------------------------------------------


def test_infeasible_nonneg_b_is_a_status():
    """b outside the cone A R^N_+ (row 0 of A positive, b_0 < 0): the dual is unbounded below."""
    A, b = _instance(8, 20, 2, False, seed=1)
    A[0] = np.abs(A[0])
    b = b.copy()
    b[0] = -1.0
    for depth in (2, 3):
        pred = theory.predicted_limit(A, b, np.full(20, 0.1), depth, False)
        assert pred.status == "infeasible", (depth, pred.status, pred.message)
        assert np.all(np.isnan(pred.x))
    # the same b is attainable with signed weights
    pred = theory.predicted_limit(A, b, np.full(40, 0.1), 2, True)
    assert pred.status == "ok"


def test_unusable_inputs_are_statuses_and_shapes_raise():
    A, b = _instance(8, 20, 2, False, seed=1)
    for w0 in (np.full(20, np.nan), np.full(20, np.inf), np.zeros(20), -np.ones(20)):
        pred = theory.predicted_limit(A, b, w0, 2, False)
        assert pred.status == "failed" and pred.message
    assert theory.predicted_limit(A, b, np.ones(20), 2, False, log_scale=np.nan).status == "failed"
    # an initial scale e^400 (a WN run whose norm collapsed): x(0) overflows, a status, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for depth in (2, 3):
            huge = theory.predicted_limit(A, b, np.ones(20), depth, False, log_scale=400.0)
            assert huge.status == "failed" and np.all(np.isnan(huge.x))
    # a budget too small to converge: a status with the residual reached, not an exception
    tight = theory.predicted_limit(A, b, np.full(20, 1e-6), 2, False, max_newton=2)
    assert tight.status in ("failed", "inaccurate") and tight.iterations <= 2
    with pytest.raises(ValueError):
        theory.predicted_limit(A, b, np.ones(21), 2, False)
    with pytest.raises(ValueError):
        theory.predicted_limit(A, b, np.ones(20), 1, False)
    assert np.isnan(theory.wn_log_scale(1.0, np.nan, 0.1))
    assert np.isnan(theory.wn_log_scale(1.0, 0.0, 0.1))


def test_flushed_weights_contribute_zero():
    """Entries with u0_i = 0 stay 0 under the flow (and in the prediction)."""
    inst = problems.generate_instance(8, 30, 2, False, seed=3)
    A, b = inst.A, inst.b
    w0 = np.full(30, 0.2)
    flushed = np.zeros(30, dtype=bool)
    flushed[::3] = True
    flushed[inst.x_star != 0] = False  # keep b attainable
    w0[flushed] = 0.0
    for depth in (2, 3):
        pred = theory.predicted_limit(A, b, w0, depth, False)
        assert pred.status == "ok", pred.message
        assert np.all(pred.x[flushed] == 0.0)
        # the prediction ignores those columns entirely
        sub = theory.predicted_limit(A[:, ~flushed], b, w0[~flushed], depth, False)
        assert _rel(pred.x[~flushed], sub.x) <= 1e-9


def test_pred_error_and_pred_l1_gap_follow_their_formulas_and_are_nan_without_x_pred():
    x_pred = np.array([3.0, 4.0, 0.0])
    x_final = np.array([3.0, 4.0, 0.5])
    x_l1 = np.array([2.0, 3.0, 0.0])
    m = theory.prediction_metrics(x_final, x_pred, x_l1)
    assert m["pred_error"] == pytest.approx(0.5 / 5.0)
    assert m["pred_l1_gap"] == pytest.approx(7.0 / 5.0 - 1.0)
    m = theory.prediction_metrics(x_final, np.full(3, np.nan), x_l1)
    assert np.isnan(m["pred_error"]) and np.isnan(m["pred_l1_gap"])


def test_flow_map_is_the_limit_map():
    """x = x(A^T nu) at the returned nu, and the map's closed forms at z = 0 are u0^L - v0^L."""
    A, b = _instance(10, 25, 2, True, seed=6)
    w0 = _weights(50, 0.2, "random")
    for depth in (2, 3, 4):
        pred = theory.predicted_limit(A, b, w0, depth, True)
        assert pred.status == "ok"
        assert _rel(theory.flow_map(A.T @ pred.nu, w0, depth, True), pred.x) <= 1e-8
        x0 = theory.flow_map(np.zeros(25), w0, depth, True)
        assert np.allclose(x0, w0[:25] ** depth - w0[25:] ** depth, rtol=1e-12, atol=0)


# --- astronomically small effective scales (WN-GD with small eta~: C_inf in the hundreds) --------


def _natural_log_scale(A, b, w0, depth):
    """log gamma with max_i (gamma w0_i)^L = ||A^+ b||_inf: the scale of the solution."""
    x_l2 = np.linalg.lstsq(A, b, rcond=None)[0]
    return np.log(np.abs(x_l2).max()) / depth - np.log(w0.max())


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
def test_extreme_scales_l2(signed):
    """L = 2 from w0 e^{-800} (alpha_eff = 1e-348, below float64): a log-domain solve, A x = b to
    1e-9, and (the sparse x* is the unique minimum-l1 solution here) equal to basis pursuit."""
    from pipeline.families.diagonal import reference

    M, N = 20, 50
    inst = problems.generate_instance(M, N, 3, signed, seed=2)
    bp = reference.basis_pursuit(inst.A, inst.b, nonneg=not signed)
    assert bp.ok
    for scheme in ("constant", "random"):
        w0 = _weights(2 * N if signed else N, 0.1, scheme)
        for log_scale in (-100.0, -800.0):
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                pred = theory.predicted_limit(inst.A, inst.b, w0, 2, signed, log_scale=log_scale)
            assert pred.status == "ok", (scheme, log_scale, pred.message)
            assert np.linalg.norm(inst.A @ pred.x - inst.b) <= 1e-9 * np.linalg.norm(inst.b)
            assert _rel(pred.x, bp.x) <= 1e-7, (scheme, log_scale)


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
def test_alpha_zero_limit_matches_newton_where_both_apply(signed):
    """L = 3: just above the threshold where predicted_limit switches to the weighted-l1 LP, the
    Newton solve and the LP agree; far below it the LP is what is returned (status ok), and with a
    random init its weights u0^{2-L} make it differ from plain basis pursuit."""
    M, N = 20, 50
    inst = problems.generate_instance(M, N, 3, signed, seed=4)
    n = 2 * N if signed else N
    for scheme in ("constant", "random"):
        w0 = _weights(n, 0.1, scheme)
        natural = _natural_log_scale(inst.A, inst.b, w0, 3)
        near = natural + 0.9 * theory.LIMIT_LOG_SCALE
        newton = theory.predicted_limit(inst.A, inst.b, w0, 3, signed, log_scale=near)
        assert newton.status == "ok" and newton.iterations > 0
        limit = theory.alpha_zero_limit(inst.A, inst.b, w0, 3, signed, log_scale=near)
        assert limit.status == "ok"
        assert _rel(newton.x, limit.x) <= 1e-8
        far = theory.predicted_limit(inst.A, inst.b, w0, 3, signed, log_scale=-800.0)
        assert far.status == "ok" and far.iterations == 0 and "LP" in far.message
        assert _rel(far.x, limit.x) <= 1e-8
