"""Per-run metrics (docs/MODEL.md, "Metrics per run" and the alpha_eff diagnostic)."""

from __future__ import annotations

import numpy as np


def c_inf(r0: float, r_final: float, eta_ratio: float) -> float:
    """C_inf = log(r_0 / r_T) + (r_T^2 - r_0^2) / (2 eta~)."""
    return float(np.log(r0 / r_final) + (r_final**2 - r0**2) / (2.0 * eta_ratio))


def alpha_eff(alpha: float, c: float) -> float:
    """The initialization scale of the plain GD flow with WN-GD's limit: alpha * exp(-C_inf).
    inf when the norm shrank by so much that exp(-C_inf) overflows."""
    with np.errstate(over="ignore"):
        return float(alpha * np.exp(-c))


def solution_metrics(
    x_final: np.ndarray, x_l1: np.ndarray, x_star: np.ndarray | None
) -> dict[str, float | None]:
    """Distances of the final product x~_T (N,) to the basis-pursuit solution and the ground truth.

    error_l1 = ||x~ - x_l1||_2, rel_error_l1 = error_l1 / ||x_l1||_2, error_truth = ||x~ - x*||_2
    (None without x*), l1_norm = ||x~||_1, l1_gap = ||x~||_1 - ||x_l1||_1.
    """
    error_l1 = float(np.linalg.norm(x_final - x_l1))
    norm_l1 = float(np.linalg.norm(x_l1))
    l1_norm = float(np.abs(x_final).sum())
    return {
        "error_l1": error_l1,
        "rel_error_l1": error_l1 / norm_l1 if norm_l1 > 0 else float("nan"),
        "error_truth": None if x_star is None else float(np.linalg.norm(x_final - x_star)),
        "l1_norm": l1_norm,
        "l1_gap": l1_norm - float(np.abs(x_l1).sum()),
    }


def wn_metrics(alpha: float, eta_ratio: float, r0: float, r_final: float) -> dict[str, float]:
    """r0, r_final, c_inf and alpha_eff of a WN-GD run (NaN where r_T is not a positive number)."""
    if not (np.isfinite(r_final) and r_final > 0):
        return {"r0": r0, "r_final": r_final, "c_inf": float("nan"), "alpha_eff": float("nan")}
    c = c_inf(r0, r_final, eta_ratio)
    return {"r0": r0, "r_final": r_final, "c_inf": c, "alpha_eff": alpha_eff(alpha, c)}
