"""Problem instances (A, b, x*): generated from a seed, or loaded from a user's .npz (docs/MODEL.md).

A generated instance has A in R^{M x N} with i.i.d. N(0, 1/M) entries, an s-sparse x* with a
uniformly random support and magnitudes i.i.d. Uniform[0.5, 1.5] (times an independent random sign
when ``signed``), and b = A x* + sigma xi with xi ~ N(0, I_M) (``noise`` sigma, default 0: b = A x*).
A, x* and xi come from three streams of the instance's seed (spawn keys (0,) and (2,); (1,) is
the random initialization's), so instances that differ only in sigma share A, x* and xi.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np


class InstanceError(ValueError):
    """A user-supplied instance file that cannot be used; the message names the file
    (``read_instance_arrays``)."""


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


def generate_instance(M: int, N: int, s: int, signed: bool, seed: int,
                      noise: float = 0.0) -> Instance:
    """A seeded random instance. Same (M, N, s, signed, seed, noise) -> bitwise the same arrays;
    noise 0 gives b = A x* exactly."""
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
    b = A @ x_star
    if noise > 0:
        xi = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))).standard_normal(M)
        b = b + noise * xi
    return Instance(A=A, b=b, x_star=x_star, signed=signed)


def load_instance(source: str | os.PathLike | BinaryIO, signed: bool) -> Instance:
    """The instance of an .npz file (a path, or a binary file object holding its bytes), read and
    checked by ``read_instance_arrays``."""
    A, b, x_star = read_instance_arrays(source)
    return Instance(A=A, b=b, x_star=x_star, signed=signed)


def read_instance_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an instance file; InstanceError naming the path if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InstanceError(f"{os.fspath(path)}: cannot read the file "
                            f"({exc.strerror or exc})") from None


def read_instance_arrays(source: str | os.PathLike | bytes | BinaryIO, name: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(A, b, x_star)`` of an instance file, as float64, checked: A (M, N) with 1 <= M < N,
    b (M,), x_star (N,) or None when absent; all real (integer or floating dtype) and finite.
    Other arrays in the file are ignored. The one reader of instance files: sweep validation
    (``pipeline.spec``) and the tasks (``load_instance``) give the same messages.

    source: a path, the file's bytes, or a binary file object; name: how messages name the file
    (default: the path). Raises InstanceError naming the file, the array and the shapes found.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source) if name is None else name
        source = read_instance_bytes(source)
    name = "the instance file" if name is None else name
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        npz = np.load(source, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - not a zip, pickled data, truncated, ...
        raise InstanceError(f"{name}: not an .npz archive of arrays A and b (numpy cannot read "
                            f"it: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InstanceError(f"{name}: must be an .npz archive with arrays A and b, got a single "
                            "array")
    arrays: dict[str, np.ndarray] = {}
    with npz:
        for key in ("A", "b", "x_star"):
            if key in npz.files:
                try:
                    arrays[key] = npz[key]
                except Exception as exc:  # noqa: BLE001 - object arrays (no pickle), bad CRC, ...
                    raise InstanceError(f"{name}: cannot read array {key} ({exc})") from None
    found = ", ".join(f"{k} {a.shape}" for k, a in arrays.items()) or "no A, b or x_star"
    missing = [key for key in ("A", "b") if key not in arrays]
    if missing:
        raise InstanceError(f"{name}: missing array {' and '.join(missing)}; needs arrays "
                            f"A (M x N) and b (M), found {found}")
    for key, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise InstanceError(f"{name}: array {key} must be real numbers, got dtype {a.dtype}")
        if not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise InstanceError(f"{name}: array {key} has non-finite entries ({bad} of "
                                f"{np.size(a)})")
    A, b, x_star = arrays["A"], arrays["b"], arrays.get("x_star")
    if A.ndim != 2 or A.shape[0] < 1 or not A.shape[0] < A.shape[1]:
        raise InstanceError(f"{name}: A must be 2-D, M x N with 1 <= M < N; found {found}")
    M, N = A.shape
    if b.shape != (M,):
        raise InstanceError(f"{name}: A and b disagree: b must have shape ({M},); found {found}")
    if x_star is not None and x_star.shape != (N,):
        raise InstanceError(f"{name}: A and x_star disagree: x_star must have shape ({N},); "
                            f"found {found}")
    x_star = None if x_star is None else np.asarray(x_star, dtype=np.float64)
    return np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64), x_star
