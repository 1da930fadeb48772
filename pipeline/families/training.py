"""What every family's engine shares (docs/MODEL.md, "Stopping and status"): when a run has
diverged, and the iterations at which its loss curve is recorded."""

from __future__ import annotations

import functools

import numpy as np

#: A run whose loss exceeds this multiple of its initial loss has diverged.
DIVERGENCE_FACTOR = 1e6


@functools.lru_cache(maxsize=256)
def checkpoint_iterations(max_iters: int, checkpoints: int) -> np.ndarray:
    """About ``checkpoints`` log-spaced iterations in [0, max_iters], always with 0 and max_iters.
    Cached: a read-only array."""
    grid = np.logspace(0.0, np.log10(max_iters), max(checkpoints - 1, 1))
    its = np.unique(np.rint(grid).astype(np.int64))
    out = np.unique(np.concatenate(([0, max_iters], its)))
    out.flags.writeable = False
    return out
