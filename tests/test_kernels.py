"""The compiled engine step (pipeline/families/diagonal/kernels.py) against the update rules written with numpy
(pipeline/families/diagonal/dynamics.py, pipeline/families/diagonal/models.py), one step at a time, on a grid of rows that mixes GD
and WN-GD, depths 2 to 4, both schedules, idle rows, and every stop code; its products against
numpy's matmul."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.families.diagonal import dynamics, kernels, models

K, B, M, N = 3, 6, 5, 7


def _grid(signed: bool, seed: int = 0) -> dict:
    """A (K, B) grid of rows with random states; rows (k, 3) and (k, 5) idle, zeros as the engine
    keeps them."""
    rng = np.random.default_rng(seed)
    n = models.n_trainable(N, signed)
    live = np.ones((K, B), dtype=bool)
    live[:, [3, 5]] = False
    polar = np.zeros((K, B), dtype=bool)
    polar[:, [1, 2, 4]] = True
    g = {
        "A": rng.standard_normal((K, M, N)), "b": rng.standard_normal((K, M)),
        "v": rng.uniform(0.2, 1.0, (K, B, n)) * rng.choice([-1.0, 1.0], (K, B, n)),
        "live": live, "polar": polar,
        "normalized": np.tile([False, False, True, False, True, False], (K, 1)),
        "depth": np.array([[2, 3, 4, 2, 2, 2], [3, 2, 3, 2, 4, 2], [4, 4, 2, 2, 3, 2]],
                          dtype=np.int64),
        "eta": rng.uniform(0.005, 0.02, (K, B)),
        "eta_ratio": np.where(polar, rng.uniform(0.1, 2.0, (K, B)), 1.0),
        "nu": np.where(polar, rng.uniform(0.5, 2.0, (K, B))
                       * np.where(rng.random((K, B)) < 0.3, -1.0, 1.0), 1.0),
        "r": np.where(polar, rng.uniform(0.5, 3.0, (K, B)), 1.0),
        "tol": np.zeros((K, B)), "loss_limit": np.full((K, B), np.inf),
        "max_iters": np.full((K, B), 100, dtype=np.int64),
    }
    g["v"][~live] = 0.0
    g["r0"] = np.where(polar, g["r"] * rng.uniform(0.5, 2.0, (K, B)), 1.0)
    return g


def _step(g: dict, signed: bool, k: int = 5, flush: bool = False):
    """One ``kernels.step`` call on the grid (changes it in place); returns (loss, stop, count).
    The grid's optional ``batch``, ``order``, ``xi``, ``xi_row``, ``accumulate`` and ``rsum``
    default to full-batch rows without label noise that accumulate nothing."""
    loss, stop = np.zeros((K, B)), np.zeros((K, B), dtype=np.int64)
    AT = np.ascontiguousarray(g["A"].transpose(0, 2, 1))
    stochastic = (g.get("batch", np.full((K, B), M, dtype=np.int64)),
                  g.get("order", np.zeros((K, B, 0), dtype=np.int64)),
                  g.get("xi", np.zeros((0, 1, M))), g.get("xi_row", np.full((K, B), -1)),
                  0, g.get("accumulate", np.zeros((K, B), dtype=bool)),
                  g.get("rsum", np.zeros((K, B, 0))))
    stopping = kernels.step(g["A"], AT, g["b"], g["v"], g["live"], g["polar"], g["normalized"],
                            g["depth"], g["eta"], g["eta_ratio"], g["r"], g["r0"], g["nu"],
                            g["loss_limit"], g["tol"], g["max_iters"], np.full((K, B), 0.3),
                            signed, k, flush, loss, stop, *stochastic)
    return loss, stop, stopping


def _expected(g: dict, signed: bool, kk: int, j: int) -> dict:
    """One row's step by the numpy rules: loss, then GD's w - eta grad f or wn_step."""
    A, b, L = g["A"][kk], g["b"][kk], int(g["depth"][kk, j])
    v, nu, r = g["v"][kk, j], g["nu"][kk, j], g["r"][kk, j]
    w = r * v / nu if g["polar"][kk, j] else v
    x = models.product(w, L, signed)
    residual = A @ x - b
    grad = models.gradient(w, A.T @ residual, L, signed)
    out = {"loss": 0.5 * residual @ residual}
    if not g["polar"][kk, j]:
        out["w"] = dynamics.gd_step(w, g["eta"][kk, j] * grad)
        return out
    eta_u = dynamics.wn_tangential_rate(g["eta"][kk, j], g["r0"][kk, j], r, g["normalized"][kk, j])
    p = eta_u * r * grad
    out["r"], out["d"] = dynamics.wn_step(np.float64(r), v / nu, p, g["eta_ratio"][kk, j])
    return out


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("flush", [False, True])
def test_one_step_equals_the_numpy_update_rules(signed, flush):
    g = _grid(signed)
    expected = {(kk, j): _expected(g, signed, kk, j) for kk in range(K) for j in range(B)
                if g["live"][kk, j]}
    idle_v = g["v"][~g["live"]].copy()
    loss, stop, stopping = _step(g, signed, flush=flush)
    assert stopping == 0 and np.all(stop == kernels.RUNNING)
    for (kk, j), e in expected.items():
        np.testing.assert_allclose(loss[kk, j], e["loss"], rtol=1e-12)
        v = g["v"][kk, j]
        if g["polar"][kk, j]:
            np.testing.assert_allclose(g["r"][kk, j], e["r"], rtol=1e-12)
            if not flush:  # the flush zeroes entries after normalizing
                np.testing.assert_allclose(np.linalg.norm(v / g["nu"][kk, j]), 1.0, rtol=1e-12)
            want, got = e["d"], v / g["nu"][kk, j]
        else:
            want, got = e["w"], v
        if flush:  # WN rows normalized (nu = 1), then entries below 0.3 zeroed
            assert g["nu"][kk, j] == 1.0
            want = np.where(np.abs(want) < 0.3, 0.0, want)
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-15)
    assert np.array_equal(g["v"][~g["live"]], idle_v)  # idle rows untouched


def test_stop_codes_and_stopped_rows_stay_put():
    """Each test of ``step`` on its own row; the row's loss is still reported, and a row that
    stops is not advanced (its run is closed at that iteration)."""
    g = _grid(False, seed=1)
    loss, _, _ = _step({key: np.copy(val) for key, val in g.items()}, False)
    g["tol"][0, 0] = loss[0, 0] * 1.5  # converged
    g["max_iters"][0, 1] = 5  # max_iters: k = 5
    g["loss_limit"][0, 2] = loss[0, 2] * 0.5  # diverged: above the limit
    g["r"][1, 1] = -0.5  # diverged: a WN radius that left (0, inf)
    g["v"][1, 0, 0] = np.nan  # diverged: NaN loss
    g["tol"][2, 0] = loss[2, 0] * 1.5
    g["loss_limit"][2, 0] = loss[2, 0] * 0.5  # diverged wins over converged
    before = {key: np.copy(val) for key, val in g.items()}
    loss2, stop, stopping = _step(g, False)
    want = np.zeros((K, B), dtype=np.int64)
    want[0, :3] = [kernels.CONVERGED, kernels.MAX_ITERS, kernels.DIVERGED]
    want[1, :2] = [kernels.DIVERGED, kernels.DIVERGED]
    want[2, 0] = kernels.DIVERGED
    assert stop.tolist() == want.tolist() and stopping == 6
    assert np.isnan(loss2[1, 0]) and loss2[0, 0] == loss[0, 0]
    stopped = want != kernels.RUNNING
    for key in ("v", "r", "nu"):
        assert np.array_equal(g[key][stopped], before[key][stopped], equal_nan=True), key
    going = g["live"] & ~stopped
    assert not np.any(np.all(g["v"][going] == before["v"][going], axis=-1))


@pytest.mark.parametrize("C", [1, 2, 5, 7, 8])
def test_rows_dot_against_matmul_skipping_idle_blocks(C):
    rng = np.random.default_rng(C)
    X, A = rng.standard_normal((9, 13)), rng.standard_normal((C, 13))
    live = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)  # the middle block is idle
    out = np.full((9, C), 7.0)
    kernels._rows_dot(X, A, out, live)
    np.testing.assert_allclose(out[:3], X[:3] @ A.T, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(out[6:], X[6:] @ A.T, rtol=1e-13, atol=1e-14)
    assert np.all(out[3:6] == 7.0)


def test_a_row_does_not_depend_on_its_block():
    """The same row in different blocks, company and numbers of rows (both loop orders of
    ``_rows_dot``): the same bits (batch independence)."""
    rng = np.random.default_rng(5)
    A, x = rng.standard_normal((7, 50)), rng.standard_normal(50)
    results = []
    for rows in (3, 6, kernels.FEW_ROWS + 3, 60):
        for position in (0, 1, rows - 1):
            X = rng.standard_normal((rows, 50))
            X[position] = x
            out = np.zeros((rows, 7))
            kernels._rows_dot(X, A, out, np.ones(rows, dtype=bool))
            results.append(out[position])
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="ROW_BLOCK"):
        kernels._rows_dot(np.zeros((4, 5)), np.zeros((2, 5)), np.zeros((4, 2)), np.ones(4, bool))
    g = _grid(False)
    g["v"] = np.zeros((K, 4, N))
    with pytest.raises(ValueError, match="ROW_BLOCK"):
        _step(g, False)
