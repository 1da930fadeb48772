"""The single-hidden-layer linear network core (pipeline/families/twolayer/) against docs/MODEL.md,
"The two-layer family": gradients, the batched engine against a plain loop, the range
initialization's exact minimum-norm limit, distance to A^+ Y against width, convergence rate against
imbalance, divergence as a status, and the conservation of U^T U - V^T V."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.families import training
from pipeline.families.diagonal import problems
from pipeline.families.twolayer import engine, model
from pipeline.families.twolayer.engine import TwoLayerConfig

# --- an independent, plain one-run-at-a-time implementation ---------------------------------------


def plain_loss(A, Y, U, V):
    return 0.5 * np.sum((A @ U @ V.T - Y) ** 2)


def plain_run(A, Y, cfg: TwoLayerConfig, U0, V0):
    """GD on (U, V) for one run, straight from the equations, with every loss kept."""
    U, V = np.array(U0, dtype=float), np.array(V0, dtype=float)
    loss0 = plain_loss(A, Y, U, V)
    losses = [loss0]
    status = "converged" if loss0 <= cfg.tol else None
    k = 0
    with np.errstate(all="ignore"):
        while status is None:
            R = A @ U @ V.T - Y
            U, V = U - cfg.eta * (A.T @ R @ V), V - cfg.eta * (R.T @ A @ U)
            k += 1
            loss = plain_loss(A, Y, U, V)
            losses.append(loss)
            if not np.isfinite(loss) or loss > 1e6 * loss0:
                status = "diverged"
            elif loss <= cfg.tol:
                status = "converged"
            elif k >= cfg.max_iters:
                status = "max_iters"
    return status, k, U, V, np.array(losses)


def D_of(U, V):
    return U.T @ U - V.T @ V


UNIT_ROUNDOFF = np.finfo(np.float64).eps / 2


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): a float64 sum of n products is within
    gamma_n * sum |a_i b_i| of the exact one (Accuracy and Stability of Numerical Algorithms,
    Lemma 3.1 and eq. 3.5), in any order of summation, with or without fused multiply-adds."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


@pytest.fixture(scope="module")
def instance():
    return model.generate_instance(10, 30, 1, seed=1)


# --- instances, gradients and initialization -----------------------------------------------------


def test_instances_share_A_with_the_diagonal_family_and_are_seeded():
    inst = model.generate_instance(10, 30, 3, seed=11)
    assert np.array_equal(inst.A, problems.generate_instance(10, 30, 2, False, seed=11).A)
    assert inst.Y.shape == (10, 3) and np.allclose(inst.Y, inst.A @ inst.X_star)
    assert np.array_equal(inst.X_star, model.generate_instance(10, 30, 3, seed=11).X_star)
    sparse = model.generate_instance(10, 30, 3, seed=11, sparsity=4)
    assert list(np.count_nonzero(sparse.X_star, axis=0)) == [4, 4, 4]
    P_ref = model.min_norm_solution(inst.A, inst.Y)
    np.testing.assert_allclose(P_ref, np.linalg.pinv(inst.A) @ inst.Y, atol=1e-12)



@pytest.mark.parametrize("K", [1, 3])
def test_gradients_match_central_differences(K):
    rng = np.random.default_rng(5)
    M, N, h = 4, 7, 5
    A, Y = rng.standard_normal((M, N)), rng.standard_normal((M, K))
    U, V = rng.standard_normal((N, h)), rng.standard_normal((K, h))
    loss, GU, GV = model.loss_and_gradients(A, Y, U, V)
    assert loss == pytest.approx(plain_loss(A, Y, U, V), rel=1e-13)
    eps = 1e-6
    for X, G in ((U, GU), (V, GV)):
        fd = np.empty_like(X)
        for idx in np.ndindex(X.shape):
            saved = X[idx]
            X[idx] = saved + eps
            up = plain_loss(A, Y, U, V)
            X[idx] = saved - eps
            down = plain_loss(A, Y, U, V)
            X[idx] = saved
            fd[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(G, fd, rtol=1e-7, atol=1e-7 * np.abs(fd).max())


def test_initial_weights_are_seeded_and_imbalance_rescales_along_the_symmetry(instance):
    N, K, h, alpha = 30, 2, 40, 0.3
    U, V = model.initial_weights(N, K, h, alpha, "random", 0.0, seed=7)
    U2, V2 = model.initial_weights(N, K, h, alpha, "random", 0.0, seed=7)
    U3, _ = model.initial_weights(N, K, h, alpha, "random", 0.0, seed=8)
    assert np.array_equal(U, U2) and np.array_equal(V, V2) and not np.allclose(U, U3)
    assert U.shape == (N, h) and V.shape == (K, h)
    # entries N(0, alpha^2 / h): E ||U||_F^2 = N alpha^2 with N h = 1200 samples
    assert np.sum(U**2) / (N * alpha**2) == pytest.approx(1.0, rel=0.15)
    lam = 1.5
    Ul, Vl = model.initial_weights(N, K, h, alpha, "random", lam, seed=7)
    # Same product, same loss, up to rounding: both products are float64 sums of h terms
    # (gamma_h each, whatever the BLAS kernel's order), and the rescaled factors differ from
    # the exact e^(+-lam/2) U, V by at most 8 roundings in all (exp(+-lam/2) within one ulp, 2u
    # each; the two scale products and the two entry-wise scalings, u each).
    magnitude = np.abs(U) @ np.abs(V).T
    bound = (2 * gamma(h) + 8 * UNIT_ROUNDOFF) * magnitude
    assert np.all(np.abs(Ul @ Vl.T - U @ V.T) <= bound)
    # The imbalance scales by e^lam and e^-lam: Gram sums of N and K terms, and up to 8
    # roundings of the factors, the two multiplications by exp(+-lam) and the subtraction.
    uu, vv = np.exp(lam) * (np.abs(U).T @ np.abs(U)), np.exp(-lam) * (np.abs(V).T @ np.abs(V))
    bound = (2 * gamma(N) + 12 * UNIT_ROUNDOFF) * uu + (2 * gamma(K) + 12 * UNIT_ROUNDOFF) * vv
    assert np.all(np.abs(D_of(Ul, Vl) - (np.exp(lam) * U.T @ U - np.exp(-lam) * V.T @ V)) <= bound)
    # range: the same draw with the null-space component removed
    Ur, Vr = model.initial_weights(N, K, h, alpha, "range", 0.0, seed=7, A=instance.A)
    assert np.array_equal(Vr, V)
    Q = model.row_space_basis(instance.A)
    assert Q.shape == (30, 10)
    np.testing.assert_allclose(Ur, Q @ Q.T @ U, atol=1e-14)
    np.testing.assert_allclose(instance.A @ (U - Ur), 0.0, atol=1e-13)
    with pytest.raises(ValueError, match="range"):
        model.initial_weights(N, K, h, alpha, "range", 0.0, seed=7)
    with pytest.raises(ValueError, match="underflows"):
        model.initial_weights(N, K, h, alpha, "random", 2000.0, seed=7)


@pytest.mark.parametrize("h", [3, 12, 200])
def test_measured_imbalance_matches_a_dense_eigendecomposition(h):
    rng = np.random.default_rng(h)
    N, K = 9, 2
    U, V = rng.standard_normal((N, h)), 2.0 * rng.standard_normal((K, h))
    d = np.linalg.eigvalsh(D_of(U, V))
    np.testing.assert_allclose(model.imbalance_eigenvalues(U, V), d, atol=1e-10 * abs(d).max())
    imb = model.measured_imbalance(U, V)
    assert imb.lambda_min == pytest.approx(d[0]) and imb.lambda_max == pytest.approx(d[-1])
    expected = max(0.0, -d[K - 1]) + (max(0.0, d[h - N]) if h >= N else 0.0)
    assert imb.margin == pytest.approx(expected, abs=1e-9)
    # the margin bounds lambda_min(V V^T) + lambda_min(U U^T) (the latter 0 when h < N)
    uu = np.linalg.eigvalsh(U @ U.T)[0] if h >= N else 0.0
    assert np.linalg.eigvalsh(V @ V.T)[0] + uu >= imb.margin - 1e-9


# --- the batched engine ---------------------------------------------------------------------------


def test_batched_engine_matches_a_plain_loop(monkeypatch):
    inst = model.generate_instance(6, 15, 2, seed=4)
    A, Y = inst.A, inst.Y
    grid = [(3, 0.02, 2000, 1e-10), (8, 0.05, 300, 1e-14), (8, 0.01, 50, 0.0), (3, 0.05, 2000, 0.0),
            (20, 0.03, 2000, 1e-12), (20, 0.05, 800, 0.0), (8, 5.0, 2000, 1e-12),
            (20, 0.04, 1000, 1e-9)]
    configs, U0s, V0s = [], [], []
    for j, (h, eta, max_iters, tol) in enumerate(grid):
        configs.append(TwoLayerConfig(width=h, eta=eta, max_iters=max_iters, tol=tol,
                                      checkpoints=24))
        U0, V0 = model.initial_weights(15, 2, h, 0.5, "random", 0.5 * (j % 3 - 1), seed=j)
        U0s.append(U0)
        V0s.append(V0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = engine.run_batch(A, Y, configs, U0s, V0s, return_weights=True)
    scale = np.linalg.norm(Y)
    statuses = set()
    for cfg, U0, V0, res in zip(configs, U0s, V0s, results):
        status, k, U, V, losses = plain_run(A, Y, cfg, U0, V0)
        assert (res.status, res.iterations) == (status, k), cfg
        statuses.add(status)
        assert res.curve_iter[0] == 0 and res.curve_iter[-1] == k
        assert np.all(np.diff(res.curve_iter) > 0)
        assert set(res.curve_iter[:-1]) <= set(
            training.checkpoint_iterations(cfg.max_iters, cfg.checkpoints))
        if status == "diverged":
            assert np.isnan(res.rate)
            continue
        np.testing.assert_allclose(res.product, U @ V.T, rtol=1e-10, atol=1e-10 * np.abs(U @ V.T).max())
        np.testing.assert_allclose(res.U_final, U, rtol=1e-10, atol=1e-10 * np.abs(U).max())
        np.testing.assert_allclose(res.V_final, V, rtol=1e-10, atol=1e-10 * np.abs(V).max())
        # residual norms: 1e-10 relative, or the rounding of A P - Y (1e-13 ||Y||)
        np.testing.assert_allclose(np.sqrt(2 * res.curve_loss), np.sqrt(2 * losses[res.curve_iter]),
                                   rtol=1e-10, atol=1e-13 * scale)
        assert res.loss_final == res.curve_loss[-1]
        assert res.imbalance == model.measured_imbalance(U0, V0)
        assert res.seconds > 0
    assert statuses == {"converged", "max_iters", "diverged"}
    assert len({r.iterations for r in results}) >= 6  # rows left the batch at different times
    # one run per chunk: the same numbers (a run does not depend on its batch)
    monkeypatch.setattr(engine, "CHUNK_BYTES", 1)
    alone = engine.run_batch(A, Y, configs, U0s, V0s)
    for res, single in zip(results, alone):
        assert (single.status, single.iterations) == (res.status, res.iterations)
        if res.status != "diverged":
            np.testing.assert_allclose(single.product, res.product, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(single.curve_loss, res.curve_loss, rtol=1e-9, atol=1e-25)


def test_divergence_is_a_status_without_warnings(instance):
    A, Y = instance.A, instance.Y
    U0, V0 = model.initial_weights(30, 1, 20, 1.0, "random", 0.0, seed=0)
    configs = [TwoLayerConfig(width=20, eta=eta, max_iters=3000, tol=1e-12) for eta in (1e3, 0.02, 3.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = engine.run_batch(A, Y, configs, [U0] * 3, [V0] * 3)
        alone = engine.run_batch(A, Y, configs[1:2], [U0], [V0])[0]
    assert [r.status for r in batch] == ["diverged", "converged", "diverged"]
    assert batch[0].iterations < 10
    # the stable row is not disturbed by the diverging ones
    assert batch[1].iterations == alone.iterations
    np.testing.assert_allclose(batch[1].product, alone.product, rtol=1e-12)
    assert np.isfinite(batch[1].rate)


def test_twolayer_config_refuses_a_zero_width_and_a_negative_eta():
    with pytest.raises(ValueError, match="width"):
        TwoLayerConfig(width=0, eta=0.1)
    with pytest.raises(ValueError):
        TwoLayerConfig(width=3, eta=-0.1)


# --- the claims -----------------------------------------------------------------------------------


def test_range_init_ends_at_the_minimum_norm_solution():
    inst = model.generate_instance(10, 30, 2, seed=3)
    P_ref = model.min_norm_solution(inst.A, inst.Y)
    cfg = TwoLayerConfig(width=40, eta=0.02, max_iters=20_000, tol=1e-20)
    weights = {s: model.initial_weights(30, 2, 40, 0.5, s, 0.0, seed=2, A=inst.A)
               for s in ("range", "random")}
    res = {s: engine.run_batch(inst.A, inst.Y, [cfg], [U0], [V0], return_weights=True)[0]
           for s, (U0, V0) in weights.items()}
    assert res["range"].status == "converged"
    assert model.error_min_norm(res["range"].product, P_ref) < 1e-6
    assert model.error_min_norm(res["random"].product, P_ref) > 1e-2
    # only the row-space part of U drives the loss: same curves, and the random run's product
    # differs by exactly the frozen null-space part (I - Pi) U0 times the final V
    np.testing.assert_allclose(np.sqrt(2 * res["random"].curve_loss),
                               np.sqrt(2 * res["range"].curve_loss),
                               rtol=1e-8, atol=1e-13 * np.linalg.norm(inst.Y))
    U_null = weights["random"][0] - weights["range"][0]
    np.testing.assert_allclose(res["random"].product - res["range"].product,
                               U_null @ res["random"].V_final.T, atol=1e-10)


def test_distance_to_min_norm_falls_with_width(instance):
    A, Y = instance.A, instance.Y
    P_ref = model.min_norm_solution(A, Y)
    medians = {}
    for h in (5, 500):
        configs = [TwoLayerConfig(width=h, eta=0.02, max_iters=20_000, tol=1e-18)] * 5
        weights = [model.initial_weights(30, 1, h, 0.5, "random", 0.0, seed=s) for s in range(5)]
        results = engine.run_batch(A, Y, configs, *zip(*weights), return_weights=True)
        assert all(r.status == "converged" for r in results)
        errors = [model.error_min_norm(r.product, P_ref) for r in results]
        medians[h] = np.median(errors)
        # the frozen null-space part's expected size: alpha sqrt((N - M) / h) ||V_T|| / ||P*||
        predicted = [0.5 * np.sqrt(20 / h) * np.linalg.norm(r.V_final) / np.linalg.norm(P_ref)
                     for r in results]
        assert 0.6 < np.median(np.divide(errors, predicted)) < 1.4
    # predicted ~ h^{-1/2}: a factor 10 from h = 5 to h = 500 (measured 0.66 -> 0.067)
    assert 4 < medians[5] / medians[500] < 25
    assert medians[500] < 0.15


def test_rate_grows_with_imbalance_magnitude_and_respects_the_flow_bound(instance):
    A, Y = instance.A, instance.Y
    eta, lams = 0.005, (-3.0, 0.0, 3.0)
    configs = [TwoLayerConfig(width=50, eta=eta, max_iters=20_000, tol=1e-18)] * len(lams)
    weights = [model.initial_weights(30, 1, 50, 1.0, "random", lam, seed=0) for lam in lams]
    results = engine.run_batch(A, Y, configs, *zip(*weights), return_weights=True)
    assert all(r.status == "converged" for r in results)
    rate = dict(zip(lams, (r.rate for r in results)))
    # measured (alpha 1, h 50): 0.128, 0.021, 0.075 per step
    assert rate[-3.0] > 3 * rate[0.0] and rate[3.0] > 2 * rate[0.0]
    for r in results:
        # the fitted rate is GD's asymptotic rate at the final weights ...
        assert r.rate == pytest.approx(model.local_rate(A, r.U_final, r.V_final, eta), rel=0.02)
        # ... and the flow's imbalance bound holds per step (tight when lambda < 0 dominates)
        assert r.rate >= eta * model.flow_rate_bound(A, r.imbalance)
    assert results[0].rate < 1.2 * eta * model.flow_rate_bound(A, results[0].imbalance)


def test_fit_rate_of_geometric_curves():
    k = np.append(training.checkpoint_iterations(1000, 64)[:-8], 731)  # a curve stopped at 731
    assert engine.fit_rate(k, 3.0 * np.exp(-0.07 * k)) == pytest.approx(0.07, rel=1e-12)
    # a plateau followed by geometric decay: only the decay counts
    plateau = np.where(k < 100, 3.0, 3.0 * np.exp(-0.05 * (k - 100)))
    assert engine.fit_rate(k, plateau) == pytest.approx(0.05, rel=1e-12)
    # points below the rounding floor are ignored
    floored = np.maximum(3.0 * np.exp(-0.2 * k), 1e-31)
    assert engine.fit_rate(k, floored) == pytest.approx(0.2, rel=1e-12)
    assert np.isnan(engine.fit_rate(k, np.full(k.shape, 3.0)))  # never left the transient
    assert np.isnan(engine.fit_rate(k[:3], 3.0 * np.exp(-0.07 * k[:3])))
    sparse = np.array([0, 10, 100, 400, 731])  # two points in the later half of the decay
    assert np.isnan(engine.fit_rate(sparse, 3.0 * np.exp(-0.07 * sparse)))


def test_imbalance_is_conserved_up_to_second_order_in_the_step(instance):
    A, Y = instance.A, instance.Y
    U0, V0 = model.initial_weights(30, 1, 20, 0.5, "random", 0.0, seed=1)
    # one GD step changes D by exactly eta^2 (G_U^T G_U - G_V^T G_V)
    eta = 0.01
    _, GU, GV = model.loss_and_gradients(A, Y, U0, V0)
    U1, V1 = model.gd_step(U0, V0, eta * GU, eta * GV)
    np.testing.assert_allclose(D_of(U1, V1) - D_of(U0, V0), eta**2 * (GU.T @ GU - GV.T @ GV),
                               rtol=1e-6, atol=1e-9 * eta**2 * np.abs(GU.T @ GU).max())
    # over a fixed flow time T = 4, the drift of D halves with the step while U^T U moves O(1)
    drift = {}
    for eta in (0.004, 0.002):
        cfg = TwoLayerConfig(width=20, eta=eta, max_iters=round(4 / eta), tol=0.0)
        res = engine.run_batch(A, Y, [cfg], [U0], [V0], return_weights=True)[0]
        assert res.status == "max_iters"
        moved = np.linalg.norm(res.U_final.T @ res.U_final - U0.T @ U0)
        drift[eta] = np.linalg.norm(D_of(res.U_final, res.V_final) - D_of(U0, V0))
        assert moved > 0.5 and drift[eta] < 1e-2 * moved
    assert drift[0.004] / drift[0.002] == pytest.approx(2.0, rel=0.1)
