"""The numerical core against docs/MODEL.md: gradients, the batched engine against a plain loop,
stopping and divergence, basis pursuit, the alpha_eff statement and the headline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import linprog

from pipeline.families import training
from pipeline.families.diagonal import (
    dynamics,
    initialization,
    metrics,
    models,
    problems,
    reference,
)
from pipeline.families.diagonal.dynamics import RunConfig

# --- an independent, plain one-run-at-a-time implementation of docs/MODEL.md -------------------------


def plain_run(A, b, cfg: RunConfig, w0):
    """GD / WN-GD for one run, written straight from docs/MODEL.md with matrix-vector products."""
    N, L = A.shape[1], cfg.depth

    def x_of(w):
        return w[:N] ** L - w[N:] ** L if cfg.signed else w**L

    def loss_of(w):
        return 0.5 * np.sum((A @ x_of(w) - b) ** 2)

    def grad_of(w):
        c = A.T @ (A @ x_of(w) - b)
        if cfg.signed:
            return np.concatenate([L * w[:N] ** (L - 1) * c, -L * w[N:] ** (L - 1) * c])
        return L * w ** (L - 1) * c

    w = np.array(w0, dtype=float)
    r0 = r = np.linalg.norm(w)
    d = w / r
    loss0 = loss_of(w)
    losses = [loss0]
    status = "converged" if loss0 <= cfg.tol else None
    k = 0
    with np.errstate(all="ignore"):
        while status is None:
            if cfg.method == "gd":
                w = w - cfg.eta * grad_of(w)
            else:
                g = grad_of(r * d)
                eta_u = cfg.eta / (r0**2 if cfg.schedule == "constant" else r**2)
                eta_r = cfg.eta_ratio * eta_u
                radial = d @ g
                r_next = r - eta_r * radial
                d = d - eta_u * r * (g - radial * d)
                d = d / np.linalg.norm(d)
                r = r_next
                w = r * d
            k += 1
            loss = loss_of(w)
            losses.append(loss)
            if not np.isfinite(loss) or loss > 1e6 * loss0 or not r > 0:
                status = "diverged"
            elif loss <= cfg.tol:
                status = "converged"
            elif k >= cfg.max_iters:
                status = "max_iters"
    return dict(status=status, iterations=k, x=x_of(w), r=r, d=d, losses=np.array(losses))


def assert_close(a, b, rtol=1e-10):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = max(np.max(np.abs(b)), 1e-300)
    assert np.max(np.abs(a - b)) <= rtol * scale, (np.max(np.abs(a - b)), scale)


@pytest.fixture(scope="module")
def inst():
    return problems.generate_instance(M=20, N=50, s=3, signed=False, seed=7)


# --- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("L", [2, 3, 4])
def test_gradient_matches_finite_differences(signed, L):
    rng = np.random.default_rng(L + 10 * signed)
    M, N = 6, 9
    A = rng.standard_normal((M, N))
    b = rng.standard_normal(M)
    w = rng.uniform(0.3, 1.2, size=models.n_trainable(N, signed))

    def f(w):
        return float(models.loss(A, b, models.product(w, L, signed)))

    c = A.T @ (A @ models.product(w, L, signed) - b)
    g = models.gradient(w, c, L, signed)
    h = 1e-6
    fd = np.array([(f(w + h * e) - f(w - h * e)) / (2 * h) for e in np.eye(w.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


def test_product_and_gradient_work_on_batches_and_out():
    rng = np.random.default_rng(0)
    W = rng.uniform(size=(4, 10))
    C = rng.standard_normal((4, 5))
    for L in (2, 3):
        X = models.product(W, L, signed=True)
        np.testing.assert_allclose(X, W[:, :5] ** L - W[:, 5:] ** L, rtol=1e-14)
        G = np.empty_like(W)
        models.gradient(W, C, L, True, out=G)
        for i in range(4):
            np.testing.assert_allclose(G[i], models.gradient(W[i], C[i], L, True), rtol=1e-14)


# --- the engine against the plain loop -----------------------------------------------------------


def mixed_batch(N, seed=3):
    """GD and WN, L 2 and 3, nonneg and signed, both schedules, random and constant init,
    different tolerances and iteration budgets, so the runs stop at different times."""
    rng = np.random.default_rng(seed)
    configs, w0 = [], []
    for signed in (False, True):
        n = models.n_trainable(N, signed)
        direction = initialization.init_direction(n, "random", seed=11)
        for L in (2, 3):
            for method, ratio, schedule in [
                ("gd", 1.0, "constant"),
                ("wn", 0.1, "constant"),
                ("wn", 1.0, "normalized"),
            ]:
                for scheme in ("constant", "random"):
                    alpha = float(rng.choice([0.05, 0.2, 0.5]))
                    configs.append(RunConfig(
                        method=method, signed=signed, depth=L, eta=0.01 if L == 2 else 0.005,
                        eta_ratio=ratio, schedule=schedule,
                        max_iters=int(rng.integers(300, 4000)),
                        tol=float(rng.choice([1e-3, 1e-5, 1e-8])), checkpoints=16,
                    ))
                    w0.append(initialization.initial_weights(
                        n, alpha, direction if scheme == "random" else None))
    return configs, w0


@pytest.mark.slow
def test_mixed_batch_equals_plain_loop(inst):
    configs, w0 = mixed_batch(inst.N)
    results = dynamics.run_batch(inst.A, inst.b, configs, w0)
    statuses, iterations = set(), set()
    for cfg, w, res in zip(configs, w0, results):
        ref = plain_run(inst.A, inst.b, cfg, w)
        assert res.status == ref["status"], cfg
        assert res.iterations == ref["iterations"], cfg
        assert_close(res.x_final, ref["x"])
        assert_close(res.loss_final, ref["losses"][-1], rtol=1e-8)
        assert_close(res.curve_loss, ref["losses"][res.curve_iter], rtol=1e-8)
        if cfg.method == "wn":
            assert_close(res.r_final, ref["r"])
            assert_close(res.w_final / res.r_final, ref["d"])
        statuses.add(res.status)
        iterations.add(res.iterations)
    assert {"converged", "max_iters"} <= statuses
    assert len(iterations) > 10  # the runs really stopped at different times


def test_result_does_not_depend_on_batch_company(inst):
    configs, w0 = mixed_batch(inst.N)
    together = dynamics.run_batch(inst.A, inst.b, configs, w0)
    for i in (0, 7, len(configs) - 1):
        alone = dynamics.run_batch(inst.A, inst.b, [configs[i]], [w0[i]])[0]
        assert alone.status == together[i].status
        assert alone.iterations == together[i].iterations
        assert_close(alone.x_final, together[i].x_final)


def test_wn_direction_keeps_unit_norm(inst):
    cfg = RunConfig("wn", False, 2, eta=0.02, eta_ratio=0.1, max_iters=2000, tol=0.0)
    res = dynamics.run_batch(inst.A, inst.b, [cfg], [np.full(inst.N, 0.3)])[0]
    d = res.w_final / res.r_final
    assert abs(np.linalg.norm(d) - 1.0) < 1e-12
    assert res.r0 == pytest.approx(0.3 * np.sqrt(inst.N), rel=1e-14)


def test_too_large_step_is_a_diverged_status(inst):
    configs = [
        RunConfig("gd", False, 2, eta=50.0, max_iters=500),
        RunConfig("wn", False, 2, eta=50.0, eta_ratio=1.0, max_iters=500),
        RunConfig("gd", False, 2, eta=0.01, max_iters=50),  # a healthy neighbour
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning may escape
        results = dynamics.run_batch(inst.A, inst.b, configs, [np.full(inst.N, 0.5)] * 3)
    assert [r.status for r in results] == ["diverged", "diverged", "max_iters"]
    assert results[0].iterations < 500 and results[2].iterations == 50
    assert results[2].curve_iter[0] == 0 and results[2].curve_iter[-1] == 50


def test_loss_curve_is_log_spaced_with_first_and_last(inst):
    cfg = RunConfig("gd", False, 2, eta=0.02, max_iters=10_000, tol=1e-5, checkpoints=32)
    res = dynamics.run_batch(inst.A, inst.b, [cfg], [np.full(inst.N, 0.1)])[0]
    its = res.curve_iter
    assert its[0] == 0 and its[-1] == res.iterations and np.all(np.diff(its) > 0)
    assert res.curve_loss[-1] == res.loss_final <= 1e-5 and res.status == "converged"
    assert res.iterations < 10_000
    grid = training.checkpoint_iterations(10_000, 32)
    assert grid[0] == 0 and grid[-1] == 10_000 and 25 <= len(grid) <= 33
    big = grid[grid >= 10]
    ratios = big[1:] / big[:-1]
    assert ratios.max() < 1.5 and ratios.min() > 1.2  # log-spaced: a near-constant ratio


@pytest.mark.slow
def test_flush_keeps_results_within_tolerance_on_long_runs(inst):
    """A long WN run drives off-support entries far below 1e-100: the flush of tiny entries
    (dynamics.FLUSH_POWER) must not change the result beyond rounding."""
    cfg = RunConfig("wn", False, 2, eta=0.02, eta_ratio=0.01, schedule="normalized",
                    max_iters=20_000, tol=1e-20)
    res = dynamics.run_batch(inst.A, inst.b, [cfg], [np.full(inst.N, 0.01)])[0]
    ref = plain_run(inst.A, inst.b, cfg, np.full(inst.N, 0.01))
    assert res.iterations == ref["iterations"]
    assert_close(res.x_final, ref["x"], rtol=1e-9)
    assert np.min(np.abs(ref["x"][ref["x"] != 0])) < 1e-200  # the plain loop went subnormal


# --- problems and initialization -----------------------------------------------------------------


def test_generated_instance_is_seeded_and_as_specified():
    a = problems.generate_instance(40, 100, 5, signed=True, seed=123)
    b = problems.generate_instance(40, 100, 5, signed=True, seed=123)
    c = problems.generate_instance(40, 100, 5, signed=True, seed=124)
    assert np.array_equal(a.A, b.A) and np.array_equal(a.x_star, b.x_star)
    assert not np.array_equal(a.A, c.A)
    assert a.s == 5 and np.allclose(a.b, a.A @ a.x_star)
    mags = np.abs(a.x_star[a.x_star != 0])
    assert np.all((mags >= 0.5) & (mags <= 1.5))
    big = problems.generate_instance(400, 1000, 5, signed=False, seed=1)
    assert abs(big.A.var() * 400 - 1.0) < 0.02  # N(0, 1/M) entries
    assert np.all(big.x_star >= 0)


def test_load_instance_checks_shapes(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, A=np.ones((2, 4)), b=np.ones(2), x_star=np.zeros(4))
    assert problems.load_instance(good, signed=True).N == 4
    bad = tmp_path / "bad.npz"
    np.savez(bad, A=np.ones((2, 4)), b=np.ones(3))
    with pytest.raises(problems.InstanceError, match="bad.npz.*A .*b "):
        problems.load_instance(bad, signed=False)


def test_random_init_has_the_constant_norm_and_is_seeded():
    d1 = initialization.init_direction(50, "random", seed=5)
    d2 = initialization.init_direction(50, "random", seed=5)
    assert np.array_equal(d1, d2) and np.all(d1 >= 0)
    w = initialization.initial_weights(50, 0.2, d1)
    assert np.linalg.norm(w) == pytest.approx(0.2 * np.sqrt(50), rel=1e-14)
    assert np.array_equal(initialization.initial_weights(3, 0.2, None), [0.2, 0.2, 0.2])


# --- reference solutions -------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [False, True])
def test_basis_pursuit_matches_linprog(signed):
    inst = problems.generate_instance(30, 80, 10, signed=signed, seed=2)
    bp = reference.basis_pursuit(inst.A, inst.b, nonneg=not signed)
    N = inst.N
    if signed:  # x = p - q, p, q >= 0
        lp = linprog(np.ones(2 * N), A_eq=np.hstack([inst.A, -inst.A]), b_eq=inst.b,
                     bounds=(0, None), method="highs")
    else:
        lp = linprog(np.ones(N), A_eq=inst.A, b_eq=inst.b, bounds=(0, None), method="highs")
    assert bp.status == "optimal" and lp.status == 0
    assert abs(bp.l1_norm - lp.fun) <= 1e-8 * max(1.0, lp.fun)
    assert np.linalg.norm(inst.A @ bp.x - inst.b) <= 1e-8


@pytest.mark.parametrize("signed", [False, True])
def test_basis_pursuit_recovers_a_very_sparse_truth(signed):
    inst = problems.generate_instance(40, 100, 2, signed=signed, seed=4)
    bp = reference.basis_pursuit(inst.A, inst.b, nonneg=not signed)
    assert np.linalg.norm(bp.x - inst.x_star) <= 1e-8


def test_basis_pursuit_does_not_depend_on_earlier_solves():
    """The compiled problem is reused across instances of a shape: an instance's x_l1 must be the
    same bits whatever the process solved before (serial and Ray solve in different orders)."""
    insts = [problems.generate_instance(20, 50, 3, signed=k % 2 == 1, seed=40 + k) for k in range(6)]

    def solve(order):
        reference._bp_problem.cache_clear()
        return {k: reference.basis_pursuit(insts[k].A, insts[k].b, not insts[k].signed).x
                for k in order}

    forward, backward = solve(range(6)), solve(reversed(range(6)))
    assert all(np.array_equal(forward[k], backward[k]) for k in range(6))


def test_basis_pursuit_of_non_finite_data_is_a_status():
    A = np.array([[1.0, np.nan, 3.0]])
    bp = reference.basis_pursuit(A, np.array([1.0]), nonneg=True)
    assert bp.status.startswith("failed") and np.all(np.isnan(bp.x))


def test_basis_pursuit_failure_is_a_status():
    A = np.array([[1.0, 1.0, 1.0]])
    bp = reference.basis_pursuit(A, np.array([-1.0]), nonneg=True)  # infeasible with x >= 0
    assert bp.status == "infeasible" and not bp.ok and np.all(np.isnan(bp.x))
    bad = reference.basis_pursuit(A, np.array([1.0]), nonneg=True, solver="NO_SUCH_SOLVER")
    assert bad.status.startswith("failed")


def test_min_l2_interpolant(inst):
    x = reference.min_l2_interpolant(inst.A, inst.b)
    np.testing.assert_allclose(inst.A @ x, inst.b, atol=1e-12)
    np.testing.assert_allclose(x, np.linalg.pinv(inst.A) @ inst.b, atol=1e-12)


# --- metrics and the two statements of docs/MODEL.md --------------------------------------------------


def test_metrics_by_hand():
    m = metrics.solution_metrics(np.array([1.0, -2.0, 0.0]), np.array([1.0, 0.0, 2.0]),
                                 np.array([0.0, 0.0, 3.0]))
    assert m["error_l1"] == pytest.approx(np.sqrt(8))
    assert m["rel_error_l1"] == pytest.approx(np.sqrt(8) / np.sqrt(5))
    assert m["error_truth"] == pytest.approx(np.sqrt(1 + 4 + 9))
    assert m["l1_norm"] == 3.0 and m["l1_gap"] == 0.0
    assert metrics.solution_metrics(np.zeros(3), np.ones(3), None)["error_truth"] is None
    c = metrics.c_inf(r0=1.0, r_final=2.0, eta_ratio=0.5)
    assert c == pytest.approx(np.log(0.5) + 3.0)
    w = metrics.wn_metrics(alpha=0.1, eta_ratio=0.5, r0=1.0, r_final=2.0)
    assert w["alpha_eff"] == pytest.approx(0.1 * np.exp(-c))


@pytest.mark.slow
def test_alpha_eff_statement():
    """WN-GD's limit is (close to) plain GD's limit from alpha_eff = alpha exp(-C_inf).

    Small instance, small steps: the statement is exact for the flows; with steps of 2e-3 the two
    discrete limits agree to 1e-3 relative, while GD from alpha itself lands far away."""
    inst = problems.generate_instance(M=8, N=20, s=2, signed=False, seed=5)
    alpha, eta, ratio = 0.3, 2e-3, 0.5
    n = inst.N
    wn_cfg = RunConfig("wn", False, 2, eta=eta, eta_ratio=ratio, schedule="normalized",
                       max_iters=400_000, tol=1e-20)
    wn = dynamics.run_batch(inst.A, inst.b, [wn_cfg], [np.full(n, alpha)])[0]
    a_eff = metrics.wn_metrics(alpha, ratio, wn.r0, wn.r_final)["alpha_eff"]
    assert wn.r_final > wn.r0 and a_eff < alpha  # the norm grew: a magnified bias
    gd_cfg = RunConfig("gd", False, 2, eta=eta, max_iters=400_000, tol=1e-20)
    gd_eff, gd_alpha = dynamics.run_batch(
        inst.A, inst.b, [gd_cfg, gd_cfg], [np.full(n, a_eff), np.full(n, alpha)])
    scale = np.linalg.norm(gd_eff.x_final)
    gap_eff = np.linalg.norm(wn.x_final - gd_eff.x_final) / scale
    gap_alpha = np.linalg.norm(wn.x_final - gd_alpha.x_final) / scale
    assert gap_eff <= 1e-3, gap_eff
    assert gap_alpha > 20 * gap_eff


@pytest.mark.slow
def test_headline_wn_beats_gd_at_alpha_0_1():
    """nonneg, L = 2, alpha = 0.1, eta~ = 0.01: WN-GD's error to the basis-pursuit solution is at
    least 100x smaller than GD's on a fixed instance."""
    inst = problems.generate_instance(M=40, N=100, s=5, signed=False, seed=0)
    bp = reference.basis_pursuit(inst.A, inst.b, nonneg=True)
    w0 = np.full(inst.N, 0.1)
    configs = [RunConfig("gd", False, 2, eta=0.05, max_iters=100_000, tol=1e-12),
               RunConfig("wn", False, 2, eta=0.05, eta_ratio=0.01, max_iters=100_000, tol=1e-12)]
    gd, wn = dynamics.run_batch(inst.A, inst.b, configs, [w0, w0])
    assert gd.status == wn.status == "converged"
    err_gd = np.linalg.norm(gd.x_final - bp.x)
    err_wn = np.linalg.norm(wn.x_final - bp.x)
    assert err_gd >= 100 * err_wn, (err_gd, err_wn)
