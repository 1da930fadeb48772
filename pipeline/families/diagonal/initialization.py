"""Initial weights of scale alpha (docs/MODEL.md, "Initialization").

constant: every trainable entry equals alpha.
random:   alpha * sqrt(n) * z / ||z||_2 with z_i = |g_i|, g ~ N(0, I_n): the constant scheme's l2
          norm alpha*sqrt(n) in a random (nonnegative) direction, seeded per trial so that every
          alpha, depth, step and method of a trial starts from the same direction.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("constant", "random")


def init_direction(n: int, scheme: str, seed: int) -> np.ndarray | None:
    """The unit direction z / ||z|| of the random scheme (shape (n,)), or None for constant."""
    if scheme == "constant":
        return None
    if scheme != "random":
        raise ValueError(f"unknown init scheme {scheme!r}; allowed: {SCHEMES}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    z = np.abs(rng.standard_normal(n))
    return z / np.linalg.norm(z)


def initial_weights(n: int, alpha: float, direction: np.ndarray | None) -> np.ndarray:
    """w0 of shape (n,): alpha * ones (direction None) or alpha * sqrt(n) * direction."""
    if direction is None:
        return np.full(n, float(alpha))
    return (alpha * np.sqrt(n)) * direction
