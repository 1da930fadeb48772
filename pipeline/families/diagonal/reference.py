"""Reference solutions of one instance (docs/MODEL.md, "Reference solutions").

basis pursuit:  x_l1 = argmin ||x||_1  s.t.  A x = b  (and x >= 0 for the nonneg model), with cvxpy;
                HiGHS solves it as a linear program. The solver is configurable.
minimum l2:     x_l2 = A^+ b.
A failed or inaccurate solve is a status in the result, never an exception.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

DEFAULT_SOLVER = "HIGHS"
#: A basis-pursuit solution whose relative residual ||A x - b|| / ||b|| exceeds this is "inaccurate".
FEASIBILITY_TOL = 1e-8


@dataclass(frozen=True, eq=False)
class BasisPursuit:
    """x: (N,) solution, NaN-filled when the solve failed."""

    x: np.ndarray
    status: str  # "optimal" | "inaccurate" | "infeasible" | "failed: <reason>" | cvxpy's status
    solver: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "optimal"

    @property
    def l1_norm(self) -> float:
        return float(np.abs(self.x).sum())


def basis_pursuit(
    A: np.ndarray, b: np.ndarray, nonneg: bool, solver: str = DEFAULT_SOLVER
) -> BasisPursuit:
    """Solve min ||x||_1 s.t. A x = b (x >= 0 when ``nonneg``) with cvxpy and ``solver``."""
    import cvxpy as cp

    N = A.shape[1]
    start = time.perf_counter()
    problem, x, A_param, b_param = _bp_problem(A.shape[0], N, nonneg)
    try:
        A_param.value, b_param.value = A, b  # cvxpy rejects non-finite data here
        problem.solve(solver=solver, warm_start=False)
    except (cp.error.SolverError, ValueError) as exc:  # an unusable solver or a solver crash
        return BasisPursuit(np.full(N, np.nan), f"failed: {exc}", solver,
                            time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or x.value is None:
        return BasisPursuit(np.full(N, np.nan), str(problem.status), solver, seconds)
    value = np.asarray(x.value, dtype=np.float64)
    residual = np.linalg.norm(A @ value - b) / max(np.linalg.norm(b), np.finfo(float).tiny)
    accurate = problem.status == cp.OPTIMAL and residual <= FEASIBILITY_TOL
    return BasisPursuit(value, "optimal" if accurate else "inaccurate", solver, seconds)


@functools.lru_cache(maxsize=4)
def _bp_problem(M: int, N: int, nonneg: bool):
    """The basis-pursuit problem of one shape with A and b as cvxpy Parameters: cvxpy compiles it
    once per process and shape, then each instance only sets the parameters (5 ms a solve at
    (40, 100) instead of 8; at large shapes the solver's own time dominates). It is solved with
    ``warm_start=False``: a warm start from the previous instance's basis is much faster at large
    shapes but makes x_l1 depend, in its last digits, on what the process solved before (serial
    and Ray would differ). A few shapes are kept (each holds about 9 times the size of A).
    Returns (problem, x, A, b)."""
    import cvxpy as cp

    x = cp.Variable(N, nonneg=nonneg)
    A, b = cp.Parameter((M, N)), cp.Parameter(M)
    problem = cp.Problem(cp.Minimize(cp.sum(x) if nonneg else cp.norm1(x)), [A @ x == b])
    return problem, x, A, b


def silence_highs_banner() -> None:
    """Keep HiGHS's two-line copyright banner out of this process's output.

    The solves are silent (cvxpy's ``verbose=False`` sets HiGHS's ``log_to_console`` off), but
    highspy (1.16) prints the banner when a process creates its first ``Highs`` object, before any
    option can be set: cvxpy creates one to read ``inf`` before it passes options, so neither
    ``verbose`` nor ``output_flag`` reaches it. It is printed once per process, so creating that
    first object here with the C-level standard output pointed at /dev/null spends it; nothing
    else runs meanwhile. Ray workers do not need this when their output is not forwarded."""
    try:
        import highspy
    except ImportError:  # no highspy, no banner
        return
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def min_l2_interpolant(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x_l2 = A^+ b, the minimum-l2-norm solution of A x = b. Shape (N,)."""
    return np.linalg.lstsq(A, b, rcond=None)[0]
