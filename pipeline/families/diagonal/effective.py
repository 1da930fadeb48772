"""GD's effective initialization (docs/MODEL.md, "GD's effective initialization").

For L = 2 a GD step multiplies each u entry by (1 - rho_t) and each v entry (signed model) by
(1 + rho_t), with rho_t = A^T z_t and z_t the scaled residual the step used (2 eta (A x~ - b),
masked and rescaled for a mini-batch, with the noisy labels for label noise). So

    w_T = w_eff * exp(-/+ A^T R),   R = sum_t z_t,   log(w_eff / w0) = log|w_T / w0| +/- A^T R,

(- and + for u and v entries): the final iterate has exactly the gradient flow's form from w_eff,
and when it interpolates it is the flow's limit from w_eff. Per entry the log-shrink is
sum_t log|1 - rho_t| + rho_t (u) or sum_t log|1 + rho_t| - rho_t (v); the engine sums R (M
numbers per run) instead of a logarithm per entry and step, and this module recovers the same
sum from w_T, w0 and R.
"""

from __future__ import annotations

import numpy as np


def log_shrink(A: np.ndarray, w0: np.ndarray, w_final: np.ndarray, residual_sum: np.ndarray,
               signed: bool) -> np.ndarray | None:
    """l = log(w_eff / w0) per trainable entry, shape (n,) (n = N, or 2N signed: u then v).

    A: (M, N); w0, w_final: (n,); residual_sum: R (M,). None when an entry of w0 or w_T is zero
    or anything is not finite (an entry flushed to zero, a diverged run): l is then unknown."""
    g = A.T @ residual_sum
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_ratio = np.log(np.abs(w_final)) - np.log(np.abs(w0))
    out = log_ratio + (np.concatenate((g, -g)) if signed else g)
    if not np.all(np.isfinite(out)):
        return None
    return out


def summary(log_shrink: np.ndarray) -> dict[str, float]:
    """The per-run columns: ``log_shrink_l1`` = sum_i |l_i| and ``shrink_factor`` =
    exp(mean_i l_i), the factor a constant initialization's alpha would need (GD's counterpart
    of WN-GD's alpha_eff / alpha = e^{-C_inf})."""
    return {"log_shrink_l1": float(np.abs(log_shrink).sum()),
            "shrink_factor": float(np.exp(log_shrink.mean()))}
