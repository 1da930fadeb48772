"""One engine step over a stack of instances, compiled with numba (docs/MODEL.md, "Methods").

``step`` advances every live row of a stack by one GD or WN-GD step. It works instance by
instance, so that the instance's A (read by both products) and its rows' data stay in cache
while its step is computed:

1. x~ of every row's stored vector v (``_product_row``);
2. the forward product A x~ for the instance's rows (``_rows_dot``);
3. per row: residual, loss, stop code, and the residual times the row's step factor;
4. the backward product A^T (scaled residual) (``_rows_dot`` with A^T);
5. per row that goes on: the update of v (and of r, nu for WN-GD), then every FLUSH_EVERY steps
   the flush of tiny entries.

Why not BLAS for the products: a sweep's instances have a handful of runs each, so each product
is a gemm with a handful of rows. OpenBLAS packs A for every such call and reaches about half of
its large-matrix rate on them (and rounds odd row counts differently); ``_rows_dot`` reads A in
the layout it is stored in, three rows at a time against four rows of A, and the compiler turns
the inner loop into fused multiply-adds on vectors (benchmarks/engine.py measures the result).

Batch independence: every row goes through the same instructions, in row blocks of
``ROW_BLOCK`` whatever shares them (each row has its own accumulators), so a run's numbers do not
depend on what else is in its stack. Reductions along a row are vectorized (``FASTMATH`` allows
re-association); NaN and inf keep their IEEE meaning, which the stopping tests rely on.

The update rules as numpy functions of arrays, the form that reads like the equations, are in
``pipeline/families/diagonal/dynamics.py``; tests/test_kernels.py checks ``step`` against them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: LLVM fast-math flags: re-association (vectorized sums), contraction into fused multiply-adds and
#: sign-of-zero freedom. Not "nnan"/"ninf": a diverged run is detected by a loss that is inf or NaN.
FASTMATH = {"reassoc", "contract", "nsz"}
#: Rows are processed in blocks of this many (an instance's rows are padded to a multiple of it):
#: 3 rows against 4 rows of A make 12 accumulators, 7 loads per 12 multiply-adds, which fits
#: AVX2's 16 vector registers, and sweeps of 3 or 6 runs per instance need no padding. (Measured
#: against 3 x 2 on one core: 3% faster at 6 runs per instance, 9-12% at 24 and 102.)
ROW_BLOCK = 3

#: ``_rows_dot``'s loop order (cache use only, the arithmetic is the same): up to this many rows,
#: each group of A's rows visits every block of rows; above, tiles of A of A_TILE_BYTES do.
#: Measured (one core): 102 rows at (40, 100) 26 -> 30 GFLOP/s with tiles; 6 rows a wash at
#: (40, 100) and 11% slower at (100, 400).
FEW_ROWS = 12
A_TILE_BYTES = 16 * 2**10

#: ``step``'s stop codes, one per row.
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


@njit(inline="always", fastmath=FASTMATH)
def _product_row(row, x, L, signed):
    """x <- x~(v) for one row: v^L, or u^L - w^L for v = (u, w)."""
    N = x.shape[0]
    if signed:
        for i in range(N):
            x[i] = _ipow(row[i], L) - _ipow(row[N + i], L)
    else:
        for i in range(N):
            x[i] = _ipow(row[i], L)


@njit(fastmath=FASTMATH, nogil=True)
def _rows_dot(X, A, out, live):
    """out[j, m] = <X[j], A[m]> for every block of ROW_BLOCK rows j with a live row.

    X: (B, J) with B a multiple of ROW_BLOCK; A: (C, J); out: (B, C). Rows of a block that is
    computed but not live get values nobody reads. Four rows of A at a time meet a block of 3
    rows in ``_dot_3x4`` (the last C mod 4 rows of A one at a time, ``_dot_3x1``). The loop
    order only decides what stays in cache, never the arithmetic: with a few blocks, each group
    of A rows visits every block (A is read once); with many, a tile of A rows that fits the L1
    cache (A_TILE_BYTES) visits every block, so that neither is re-read from further away."""
    B, J = X.shape
    C = A.shape[0]
    if B % ROW_BLOCK or out.shape[0] != B or out.shape[1] != C or A.shape[1] != J:
        raise ValueError("_rows_dot: shapes do not match, or rows not a multiple of ROW_BLOCK")
    quads = C - C % 4
    if B <= FEW_ROWS:
        for m in range(0, quads, 4):
            for j in range(0, B, ROW_BLOCK):
                if live[j] or live[j + 1] or live[j + 2]:
                    _dot_3x4(X, A, out, j, m)
    else:
        tile = max(4, A_TILE_BYTES // (32 * J) * 4)
        for m0 in range(0, quads, tile):
            for j in range(0, B, ROW_BLOCK):
                if live[j] or live[j + 1] or live[j + 2]:
                    for m in range(m0, min(m0 + tile, quads), 4):
                        _dot_3x4(X, A, out, j, m)
    for m in range(quads, C):
        for j in range(0, B, ROW_BLOCK):
            if live[j] or live[j + 1] or live[j + 2]:
                _dot_3x1(X, A, out, j, m)


@njit(inline="always", fastmath=FASTMATH)
def _dot_3x4(X, A, out, j, m):
    """out[j + r, m + c] = <X[j + r], A[m + c]> for r < 3, c < 4: 12 accumulators."""
    x0, x1, x2 = X[j], X[j + 1], X[j + 2]
    a, c, d, e = A[m], A[m + 1], A[m + 2], A[m + 3]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    h0 = 0.0
    h1 = 0.0
    h2 = 0.0
    for i in range(X.shape[1]):
        p, q, r, w = a[i], c[i], d[i], e[i]
        u0, u1, u2 = x0[i], x1[i], x2[i]
        s0 += u0 * p
        s1 += u1 * p
        s2 += u2 * p
        t0 += u0 * q
        t1 += u1 * q
        t2 += u2 * q
        g0 += u0 * r
        g1 += u1 * r
        g2 += u2 * r
        h0 += u0 * w
        h1 += u1 * w
        h2 += u2 * w
    out[j, m], out[j + 1, m], out[j + 2, m] = s0, s1, s2
    out[j, m + 1], out[j + 1, m + 1], out[j + 2, m + 1] = t0, t1, t2
    out[j, m + 2], out[j + 1, m + 2], out[j + 2, m + 2] = g0, g1, g2
    out[j, m + 3], out[j + 1, m + 3], out[j + 2, m + 3] = h0, h1, h2


@njit(inline="always", fastmath=FASTMATH)
def _dot_3x1(X, A, out, j, m):
    """out[j + r, m] = <X[j + r], A[m]> for r < 3."""
    x0, x1, x2 = X[j], X[j + 1], X[j + 2]
    a = A[m]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    for i in range(X.shape[1]):
        p = a[i]
        s0 += x0[i] * p
        s1 += x1[i] * p
        s2 += x2[i] * p
    out[j, m], out[j + 1, m], out[j + 2, m] = s0, s1, s2


@njit(inline="always")
def _weights(weight, order, batch, k):
    """weight <- M / batch at the rows of A in step k's batch, 0 elsewhere; all 1 for a full
    batch. ``order`` holds the permutations of P consecutive epochs (P M entries); step k is in
    epoch k // E (E = M // batch steps per epoch), so its batch is positions (k mod E) batch ..
    + batch of permutation (k // E) mod P."""
    M = weight.shape[0]
    if batch >= M:
        weight[:] = 1.0
        return
    weight[:] = 0.0
    epoch = M // batch
    start = (k // epoch) % (order.shape[0] // M) * M + (k % epoch) * batch
    scale = M / batch
    for t in range(start, start + batch):
        weight[order[t]] = scale


@njit(inline="always", fastmath=FASTMATH)
def _step_row(row, c, L, signed):
    """v <- v - p with p = v^(L-1) * c (signed: (u^(L-1) * c, -w^(L-1) * c) for v = (u, w));
    returns ||v||^2 of the new v."""
    N = c.shape[0]
    sq = 0.0
    if signed:
        for i in range(N):
            u = row[i] - _ipow(row[i], L - 1) * c[i]
            w = row[N + i] + _ipow(row[N + i], L - 1) * c[i]
            row[i] = u
            row[N + i] = w
            sq += u * u + w * w
    else:
        for i in range(N):
            u = row[i] - _ipow(row[i], L - 1) * c[i]
            row[i] = u
            sq += u * u
    return sq


@njit(cache=True, fastmath=FASTMATH, nogil=True)
def step(A, AT, b, v, live, polar, normalized, depth, eta, eta_ratio, r, r0, nu, loss_limit,
         tol, max_iters, flush_below, signed, k, flush, loss, stop, batch, order, xi, xi_row,
         t_block, accumulate, rsum):
    """Evaluate every live row at iteration k, and advance the rows that go on to k + 1.

    Shapes: A (K, M, N) and AT (K, N, M) = A transposed; b (K, M); v (K, B, n) with B a multiple
    of ROW_BLOCK and n = N, or 2N when ``signed``; every other array (K, B). A GD row's weights
    are w = v; a WN row's are w = r d with d = v / nu (``dynamics.wn_scaled_step``), so
    w = rho v with rho = r / nu and A x~(w) = rho^L A x~(v).

    Writes loss[k, j] = f(w) = ||A x~(w) - b||^2 / 2 and stop[k, j]: DIVERGED (loss above
    ``loss_limit``, inf or NaN, or a WN radius r <= 0), else CONVERGED (loss <= tol), else
    MAX_ITERS (k >= max_iters), else RUNNING. Rows that stop are left as they are. The others
    take the step, with c = A^T (scale * (A x~(w) - b)) and p = v^(L-1) * c (``_step_row``):

    - GD: scale = eta L, so p = eta grad f(w), and v <- v - p (``dynamics.gd_step``);
    - WN-GD: eta_u = eta / r_ref^2 (``dynamics.wn_tangential_rate``), a = eta_u r L rho^(L-1),
      radial = <d, eta_u r grad f(w)> = (a / nu) <A x~(v), A x~(w) - b>, and
      scale = a nu / (1 + radial), so p is ``wn_scaled_step``'s scaled step; then v <- v - p,
      r <- r - eta~ radial / r, nu <- sign(nu (1 + radial)) ||v||.

    Stochastic rows (``dynamics``, "Stochastic steps"): a row with batch[kk, j] < M takes the
    step on the rows of A in its batch of step k (``_weights``: epoch permutations from
    ``order[kk, j]``), its residual entries there multiplied by M / batch and the others 0; a row with xi_row[kk, j] = q >= 0 subtracts the label noise xi[q, t_block] from its
    residual. Both change only the residual the step uses (and so WN's radial part); the loss and
    the stopping tests are on the clean full residual. Rows with ``accumulate`` add the scaled
    residual their step uses to rsum[kk, j] (GD's effective initialization). Full-batch rows
    without label noise run exactly the instructions they ran before these existed.

    If ``flush`` (the new iterate is a multiple of FLUSH_EVERY): WN rows are normalized
    (v <- v / nu, nu <- 1), then entries of v below ``flush_below`` in magnitude are set to 0
    (``dynamics.FLUSH_POWER``). Idle rows (``live`` False) are skipped and must hold zeros.
    Returns the number of rows that stop at k.
    """
    K, M, N = A.shape
    B = v.shape[1]
    if B % ROW_BLOCK or v.shape[0] != K or v.shape[2] != (2 * N if signed else N):
        raise ValueError("step: v must be (K, B, n) with B a multiple of ROW_BLOCK")
    X = np.zeros((B, N))  # x~(v) of the instance's rows, then A^T (scaled residual)
    Z = np.zeros((B, M))  # A x~(v), then the scaled residual
    nu_sign = np.zeros(B)  # WN: the sign nu_{k+1} takes
    weight = np.zeros(M)  # a stochastic row's residual weights (M / batch on its batch, else 0)
    stopping = 0
    for kk in range(K):
        alive = live[kk]
        for j in range(B):
            if alive[j]:
                _product_row(v[kk, j], X[j], depth[kk, j], signed)
            else:
                X[j] = 0.0
        _rows_dot(X, A[kk], Z, alive)
        target = b[kk]
        for j in range(B):
            if not alive[j]:
                continue
            L = depth[kk, j]
            wn = polar[kk, j]
            rho_pow, c = 1.0, 1.0
            if wn:
                rho = r[kk, j] / nu[kk, j]
                rho_pow = _ipow(rho, L - 1)
                c = rho_pow * rho
            row = Z[j]
            sq, cross = 0.0, 0.0
            if batch[kk, j] >= M and xi_row[kk, j] < 0:
                for m in range(M):
                    z = row[m]
                    e = c * z - target[m]
                    row[m] = e
                    sq += e * e
                    cross += z * e
            else:
                _weights(weight, order[kk, j], batch[kk, j], k)
                q = xi_row[kk, j]
                for m in range(M):
                    z = row[m]
                    e = c * z - target[m]
                    sq += e * e
                    if q >= 0:
                        e -= xi[q, t_block, m]
                    e *= weight[m]
                    row[m] = e
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
                radial = a / nu[kk, j] * cross
                scale = a * nu[kk, j] / (1.0 + radial)
                if code == RUNNING:  # r moves now, v after the backward product
                    r[kk, j] -= eta_ratio[kk, j] * radial / r[kk, j]
                    nu_sign[j] = nu[kk, j] * (1.0 + radial)
            else:
                scale = eta[kk, j] * L
            for m in range(M):
                row[m] *= scale
            if accumulate[kk, j] and code == RUNNING:
                acc = rsum[kk, j]
                for m in range(M):
                    acc[m] += row[m]
        _rows_dot(Z, AT[kk], X, alive)
        for j in range(B):
            if not alive[j] or stop[kk, j] != RUNNING:
                continue
            row = v[kk, j]
            sq = _step_row(row, X[j], depth[kk, j], signed)
            if polar[kk, j]:
                nu[kk, j] = np.copysign(np.sqrt(sq), nu_sign[j])
            if flush:
                if polar[kk, j]:
                    norm = nu[kk, j]
                    for i in range(row.shape[0]):
                        row[i] /= norm
                    nu[kk, j] = 1.0
                tiny = flush_below[kk, j]
                for i in range(row.shape[0]):
                    if abs(row[i]) < tiny:
                        row[i] = 0.0
    return stopping
