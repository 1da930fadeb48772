"""Diagonal linear networks: the product map x~(w) and the gradient of the loss (docs/MODEL.md, "Models").

Every function works along the last axis, so ``w`` may be one run (shape ``(n,)``) or a batch of
runs stacked as rows (shape ``(B, n)``). ``n`` is the number of trainable entries: ``N`` for the
nonneg model (x~ = w^L) and ``2N`` for the signed model (w = (u, v), x~ = u^L - v^L).
"""

from __future__ import annotations

import numpy as np

SIGNS = ("nonneg", "signed")


def n_trainable(N: int, signed: bool) -> int:
    """Number of trainable entries for an N-dimensional product."""
    return 2 * N if signed else N


def ipow(x: np.ndarray, k: int, out: np.ndarray | None = None) -> np.ndarray:
    """``x**k`` for an integer ``k >= 1`` by repeated multiplication (no pow()); ``out`` as in numpy."""
    if k < 1:
        raise ValueError(f"ipow needs k >= 1, got {k}")
    if k == 1:
        if out is None:
            return x.copy()
        np.copyto(out, x)
        return out
    out = np.multiply(x, x, out=out)
    for _ in range(k - 2):
        np.multiply(out, x, out=out)
    return out


def product(w: np.ndarray, L: int, signed: bool, out: np.ndarray | None = None) -> np.ndarray:
    """The network's end-to-end vector x~.

    w: (..., n) trainable entries.  Returns (..., N): ``w**L`` (nonneg) or ``u**L - v**L`` (signed,
    u = first half of w, v = second half). ``out``, if given, receives the result.
    """
    if not signed:
        return ipow(w, L, out=out)
    N = w.shape[-1] // 2
    out = ipow(w[..., :N], L, out=out)
    out -= ipow(w[..., N:], L)
    return out


def gradient(
    w: np.ndarray, c: np.ndarray, L: int, signed: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """Gradient of f(w) = 1/2 ||A x~(w) - b||^2 given c = A^T (A x~ - b).

    w: (..., n), c: (..., N).  Returns (..., n):
    nonneg ``L w^(L-1) c``; signed ``(L u^(L-1) c, -L v^(L-1) c)``. ``out`` may not alias w or c.
    """
    if out is None:
        out = np.empty(w.shape, dtype=np.result_type(w, c))
    if not signed:
        _power_times(w, L - 1, c, out)
        out *= L
        return out
    N = c.shape[-1]
    _power_times(w[..., :N], L - 1, c, out[..., :N])
    out[..., :N] *= L
    _power_times(w[..., N:], L - 1, c, out[..., N:])
    out[..., N:] *= -L
    return out


def _power_times(x: np.ndarray, k: int, c: np.ndarray, out: np.ndarray) -> None:
    """out = c * x**k for an integer k >= 1, in place."""
    np.multiply(x, c, out=out)
    for _ in range(k - 1):
        out *= x


def loss(A: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """f = 1/2 ||A x - b||^2 for x of shape (N,) or rows of shape (B, N)."""
    r = x @ A.T - b
    return 0.5 * np.einsum("...m,...m->...", r, r)
