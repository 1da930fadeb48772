"""Problem instances (A, b, x*): generated from a seed, or loaded from a user's .npz (docs/MODEL.md).

A generated instance has A in R^{M x N} with i.i.d. N(0, 1/M) entries, an s-sparse x* with a
uniformly random support and magnitudes i.i.d. Uniform[0.5, 1.5] (times an independent random sign
when ``signed``), and b = A x*.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class InstanceError(ValueError):
    """A user-supplied instance file that cannot be used; the message names the file."""


@dataclass(frozen=True, eq=False)
class Instance:
    """One problem instance. A: (M, N) float64, b: (M,), x_star: (N,) or None."""

    A: np.ndarray
    b: np.ndarray
    x_star: np.ndarray | None
    signed: bool

    @property
    def M(self) -> int:
        return self.A.shape[0]

    @property
    def N(self) -> int:
        return self.A.shape[1]

    @property
    def s(self) -> int | None:
        """Number of nonzeros of x*, or None when x* is unknown."""
        return None if self.x_star is None else int(np.count_nonzero(self.x_star))


def generate_instance(M: int, N: int, s: int, signed: bool, seed: int) -> Instance:
    """A seeded random instance. Same (M, N, s, signed, seed) -> bitwise the same arrays."""
    if not (1 <= s <= M < N):
        raise ValueError(f"need 1 <= s <= M < N, got s={s}, M={M}, N={N}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    A = rng.standard_normal((M, N)) / np.sqrt(M)
    support = rng.choice(N, size=s, replace=False)
    values = rng.uniform(0.5, 1.5, size=s)
    if signed:
        values *= rng.choice(np.array([-1.0, 1.0]), size=s)
    x_star = np.zeros(N)
    x_star[support] = values
    return Instance(A=A, b=A @ x_star, x_star=x_star, signed=signed)


def load_instance(path: str | os.PathLike, signed: bool) -> Instance:
    """Load ``A`` (M x N), ``b`` (M) and optional ``x_star`` (N) from an .npz, checking shapes."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
    except (OSError, ValueError) as exc:
        raise InstanceError(f"{path}: cannot read as .npz: {exc}") from exc
    for key in ("A", "b"):
        if key not in arrays:
            raise InstanceError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
    A, b, x_star = arrays["A"], arrays["b"], arrays.get("x_star")
    if A.ndim != 2 or b.ndim != 1 or A.shape[0] != b.shape[0]:
        raise InstanceError(f"{path}: A must be (M, N) and b (M,), got A {A.shape} and b {b.shape}")
    if not A.shape[0] < A.shape[1]:
        raise InstanceError(f"{path}: need M < N, got A {A.shape}")
    if x_star is not None and x_star.shape != (A.shape[1],):
        raise InstanceError(f"{path}: x_star must be (N,) = ({A.shape[1]},), got {x_star.shape}")
    for key, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise InstanceError(f"{path}: array {key!r} has non-finite entries")
    return Instance(A=A, b=b, x_star=x_star, signed=signed)
