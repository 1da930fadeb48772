"""The element-wise work of an engine step, compiled (docs/MODEL.md, "Methods").

A step of the stacked engine (``dynamics.run_stack``) is two products with A per instance, each
one ``np.matmul`` over the stack, and between them work on every row: the product map x~, the
residual, the loss, the stopping tests, the step's per-row scale, the update of the weights and,
for WN-GD, of the polar coordinates. Done with whole-array numpy calls that work is ~20 passes
over the stack per step, as much time as the products themselves for the shapes sweeps have
(many instances, few runs each). Here it is two compiled passes, one per row, with the row's
data in cache:

- ``residuals``: after the forward product, A x~(v) -> residual, loss, stop code, and the residual
  scaled by the row's step factor, ready for the backward product.
- ``update``: after the backward product, the step (GD: w - p; WN-GD: ``wn_scaled_step``), the
  periodic flush of tiny entries, and x~ of the new weights for the next forward product.

Layout: every array's leading axes are the (K, B) grid of a stack (instance, row slot); rows
whose ``live`` flag is False (padding, stopped runs) are skipped and must hold zeros. Each row's
arithmetic depends on that row alone, so a run's numbers do not depend on what else shares its
stack. Reductions along a row may be vectorized (``FASTMATH`` allows re-association; NaN and inf
keep their IEEE meaning, which the stopping tests rely on).

The update rules as numpy functions of arrays, the form that reads like the equations, are in
``pipeline/dynamics.py``; tests/test_engine.py checks these kernels against them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: LLVM fast-math flags: re-association (vectorized sums along a row), contraction into fused
#: multiply-adds and sign-of-zero freedom. Not "nnan"/"ninf": a diverged run is detected by a
#: loss that is inf or NaN.
FASTMATH = {"reassoc", "contract", "nsz"}

#: ``residuals``' stop codes, one per row.
RUNNING, CONVERGED, MAX_ITERS, DIVERGED = 0, 1, 2, 3
STATUS = {CONVERGED: "converged", MAX_ITERS: "max_iters", DIVERGED: "diverged"}


@njit(inline="always")
def _ipow(x: float, e: int) -> float:
    """x**e for an integer e >= 1 by repeated multiplication, the same products as
    ``models.ipow``."""
    p = x
    for _ in range(e - 1):
        p *= x
    return p


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def products(v, depth, signed, live, out):
    """out[k, j] = x~(v[k, j]): v^L, or u^L - w^L for v = (u, w) when ``signed``.

    v: (K, B, n); depth: (K, B) int64; live: (K, B) bool; out: (K, B, N). Idle rows are left
    as they are."""
    K, B, N = out.shape
    for k in range(K):
        for j in range(B):
            if not live[k, j]:
                continue
            L = depth[k, j]
            row, x = v[k, j], out[k, j]
            if signed:
                for i in range(N):
                    x[i] = _ipow(row[i], L) - _ipow(row[N + i], L)
            else:
                for i in range(N):
                    x[i] = _ipow(row[i], L)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def residuals(R, b, live, polar, normalized, depth, eta, r, r0, nu, loss_limit, tol, max_iters,
              k, loss, radial, stop):
    """From the forward product to the backward one, for every live row, at iteration k.

    On entry R[k, j] (M,) holds A x~(v), the product of the row's stored vector v. The row's
    weights are w = rho v with rho = r / nu for WN-GD (d = v / nu, w = r d) and rho = 1 for GD,
    so A x~(w) = rho^L A x~(v). Writes:

    - loss[k, j] = f(w) = ||A x~(w) - b||^2 / 2;
    - stop[k, j]: DIVERGED (loss above ``loss_limit``, inf or NaN; or a WN radius r <= 0),
      else CONVERGED (loss <= tol), else MAX_ITERS (k >= max_iters), else RUNNING;
    - radial[k, j] (WN-GD): <d, p> with p = eta_u r grad f(w), eta_u = eta / r_ref^2
      (``wn_tangential_rate``), computed as (a / nu) <A x~(v), A x~(w) - b> with
      a = eta_u r L rho^(L-1);
    - R[k, j] = scale * (A x~(w) - b), the residual times the row's step factor, so that the
      backward product gives the step up to the factor v^(L-1): scale = eta L (GD), and
      a nu / (1 + radial) for WN-GD (``wn_scaled_step``'s scaled step).

    R: (K, B, M); b: (K, M); every other array (K, B). Returns the number of rows that stop.
    """
    K, B, M = R.shape
    stopping = 0
    for kk in range(K):
        target = b[kk]
        for j in range(B):
            if not live[kk, j]:
                continue
            L = depth[kk, j]
            wn = polar[kk, j]
            rho_pow, c = 1.0, 1.0
            if wn:
                rho = r[kk, j] / nu[kk, j]
                rho_pow = _ipow(rho, L - 1)
                c = rho_pow * rho
            row = R[kk, j]
            sq, cross = 0.0, 0.0
            for m in range(M):
                z = row[m]
                e = c * z - target[m]
                row[m] = e
                sq += e * e
                cross += z * e
            f = 0.5 * sq
            loss[kk, j] = f
            ok = f <= loss_limit[kk, j] and (not wn or r[kk, j] > 0.0)
            if not ok:
                code = DIVERGED
            elif f <= tol[kk, j]:
                code = CONVERGED
            elif k >= max_iters[kk, j]:
                code = MAX_ITERS
            else:
                code = RUNNING
            stop[kk, j] = code
            if code != RUNNING:
                stopping += 1
            if wn:
                r_ref = r[kk, j] if normalized[kk, j] else r0[kk, j]
                a = eta[kk, j] / (r_ref * r_ref) * r[kk, j] * L * rho_pow
                rad = a / nu[kk, j] * cross
                radial[kk, j] = rad
                scale = a * nu[kk, j] / (1.0 + rad)
            else:
                scale = eta[kk, j] * L
            for m in range(M):
                row[m] *= scale
    return stopping


@njit(inline="always", fastmath=FASTMATH)
def _step_row(row, x, L, signed, product):
    """v <- v - p for one row (see ``update``), and x <- x~(v) of the new v if ``product``;
    returns ||v||^2 of the new v."""
    N = x.shape[0]
    sq = 0.0
    if signed:
        for i in range(N):
            ci = x[i]
            u = row[i] - _ipow(row[i], L - 1) * ci
            w = row[N + i] + _ipow(row[N + i], L - 1) * ci
            row[i] = u
            row[N + i] = w
            sq += u * u + w * w
            if product:
                x[i] = _ipow(u, L) - _ipow(w, L)
    else:
        for i in range(N):
            u = row[i] - _ipow(row[i], L - 1) * x[i]
            row[i] = u
            sq += u * u
            if product:
                x[i] = _ipow(u, L)
    return sq


@njit(inline="always", fastmath=FASTMATH)
def _product_row(row, x, L, signed):
    """x <- x~(v) for one row."""
    N = x.shape[0]
    if signed:
        for i in range(N):
            x[i] = _ipow(row[i], L) - _ipow(row[N + i], L)
    else:
        for i in range(N):
            x[i] = _ipow(row[i], L)


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def update(v, CX, live, polar, depth, r, nu, radial, eta_ratio, signed, flush, flush_below):
    """One step of every live row, then x~ of its new vector for the next forward product.

    On entry CX[k, j] (N,) holds c = A^T R (R as ``residuals`` left it); the step is
    p = v^(L-1) * c (signed: (u^(L-1) * c, -w^(L-1) * c) for v = (u, w)), and

    - GD: v <- v - p (``gd_step``);
    - WN-GD: v <- v - p, r <- r - eta~ radial / r, nu <- sign(nu (1 + radial)) ||v||
      (``wn_scaled_step``: d = v / nu stays the unit direction).

    If ``flush``: WN rows are normalized (v <- v / nu, nu <- 1), then entries of v below
    ``flush_below[k, j]`` in magnitude are set to 0 (``dynamics.FLUSH_POWER``). On exit CX[k, j]
    holds x~(v). v: (K, B, n); CX: (K, B, N); the others (K, B).
    """
    K, B, N = CX.shape
    for k in range(K):
        for j in range(B):
            if not live[k, j]:
                continue
            L = depth[k, j]
            row, x = v[k, j], CX[k, j]
            # depths 2 and 3 spelled out: a constant power lets the compiler vectorize the loop
            if L == 2:
                sq = _step_row(row, x, 2, signed, not flush)
            elif L == 3:
                sq = _step_row(row, x, 3, signed, not flush)
            else:
                sq = _step_row(row, x, L, signed, not flush)
            if polar[k, j]:
                rad = radial[k, j]
                r[k, j] = r[k, j] - eta_ratio[k, j] * rad / r[k, j]
                nu[k, j] = np.copysign(np.sqrt(sq), nu[k, j] * (1.0 + rad))
            if flush:
                if polar[k, j]:
                    norm = nu[k, j]
                    for i in range(row.shape[0]):
                        row[i] /= norm
                    nu[k, j] = 1.0
                tiny = flush_below[k, j]
                for i in range(row.shape[0]):
                    if abs(row[i]) < tiny:
                        row[i] = 0.0
            if not flush:
                continue
            if L == 2:
                _product_row(row, x, 2, signed)
            elif L == 3:
                _product_row(row, x, 3, signed)
            else:
                _product_row(row, x, L, signed)
