"""GD's effective initialization (docs/MODEL.md, "GD's effective initialization").

A GD step moves each u entry by u_{k+1} = u_k - u_k^(L-1) c_k and each v entry (signed model) by
v_{k+1} = v_k + v_k^(L-1) c_k, with c_k = A^T z_k and z_k the scaled residual the step used
(eta L (A x~ - b), masked and rescaled for a mini-batch, with the noisy labels for label noise).
With R = sum_k z_k, the final iterate has exactly the gradient flow's form from an effective
initialization w_eff:

    L = 2:  log(w_eff / w0) = log|w_T / w0| +/- A^T R                  (a factor)
    L > 2:  w_eff^(2-L)     = |w_T|^(2-L) -/+ (L - 2) A^T R            (an additive shift)

(upper signs for u entries, lower for v), so when it interpolates it is the flow's limit from
w_eff. For L = 2 the log-shrink is sum_k log|1 - rho_k| + rho_k per u entry (rho_k = c_k); the
engine sums R (M numbers per run, one addition per entry and step) instead of a logarithm per
entry and step, and this module recovers the same sums from w_T, w0 and R.
"""

from __future__ import annotations

import numpy as np


def log_shrink(A: np.ndarray, w0: np.ndarray, w_final: np.ndarray, residual_sum: np.ndarray,
               signed: bool, depth: int = 2) -> np.ndarray | None:
    """l = log(w_eff / w0) per trainable entry, shape (n,) (n = N, or 2N signed: u then v).

    A: (M, N); w0, w_final: (n,); residual_sum: R (M,); depth: L >= 2. At even L the forms hold
    through a step that flips an entry's sign (they use |w|); at odd L a flipped entry is not of
    the flow's form. None when l is unknown: an entry of w0 or w_T is zero (an entry flushed to
    zero), an entry's sign flipped at odd L, w_eff^(2-L) is not positive, or anything is not
    finite (a diverged run)."""
    if depth % 2 == 1 and np.any(np.sign(w_final) != np.sign(w0)):
        return None
    g = A.T @ residual_sum
    shift = np.concatenate((g, -g)) if signed else g
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if depth == 2:
            out = np.log(np.abs(w_final)) - np.log(np.abs(w0)) + shift
        else:
            q = 2.0 - depth
            base = np.abs(w_final) ** q - (depth - 2) * shift  # w_eff^(2-L)
            out = np.log(base / np.abs(w0) ** q) / q
    if not np.all(np.isfinite(out)):
        return None
    return out


def summary(log_shrink: np.ndarray) -> dict[str, float]:
    """The per-run columns: ``log_shrink_l1`` = sum_i |l_i| and ``shrink_factor`` =
    exp(mean_i l_i), the factor a constant initialization's alpha would need (GD's counterpart
    of WN-GD's alpha_eff / alpha = e^{-C_inf})."""
    return {"log_shrink_l1": float(np.abs(log_shrink).sum()),
            "shrink_factor": float(np.exp(log_shrink.mean()))}
