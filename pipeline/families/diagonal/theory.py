"""Predicted gradient-flow limits of GD and WN-GD (docs/MODEL.md, "Predicted gradient-flow limits").

Gradient flow on a diagonal linear network converges, when it interpolates, to a point fixed by
the initial weights alone through a convex program; this module computes that point (the
"predicted limit" x_pred) by damped Newton on the program's dual, in numpy (no cvxpy).

Derivation
----------
Model: x~ = u^L - v^L (signed, w = (u, v) in R^{2N}) or x~ = u^L (nonneg: the same with v absent;
read v0 = 0 below), loss f = 1/2 ||A x~ - b||^2, rho(t) = A^T (A x~(t) - b) in R^N. Gradient flow
w' = -grad f reads, per coordinate,

    u_i' = -L u_i^{L-1} rho_i ,    v_i' = +L v_i^{L-1} rho_i .

Let g(t) = int_0^t rho ds = A^T int_0^t (A x~ - b) ds: it lies in range(A^T) for every t.

* L = 2: (log u_i)' = -2 rho_i, so u_i^2 = u0_i^2 e^{-4 g_i} and v_i^2 = v0_i^2 e^{+4 g_i}.
* L > 2: (u_i^{2-L})' = (2-L) u_i^{1-L} u_i' = L(L-2) rho_i, so
  u_i^{2-L} = u0_i^{2-L} + L(L-2) g_i and v_i^{2-L} = v0_i^{2-L} - L(L-2) g_i.

With z = -4 g (L = 2) or z = -L(L-2) g (L > 2), again in range(A^T), every point of the trajectory,
and so its limit, is x(z) for some z = A^T nu, with the per-coordinate "mirror map"

    L = 2:  x_i(z) = u0_i^2 e^{z_i} - v0_i^2 e^{-z_i}
    L > 2:  x_i(z) = (u0_i^{2-L} - z_i)^{-k} - (v0_i^{2-L} + z_i)^{-k},   k = L / (L-2),

on the domain where both bases are positive (along the flow they are u_i^{2-L} and v_i^{2-L}).
A coordinate with u0_i = 0 (v0_i = 0) keeps u_i = 0 (v_i = 0): its term is 0 (u0^{2-L} = +inf).
If the flow converges to an interpolant (loss 0), its limit is x(A^T nu*) with A x(A^T nu*) = b.
Each x_i is strictly increasing in z_i, so x_i = G_i' for a strictly convex G_i,

    L = 2:  G_i(z) = u0_i^2 e^{z} + v0_i^2 e^{-z}
    L > 2:  G_i(z) = (1/q) [(u0_i^{2-L} - z)^{-q} + (v0_i^{2-L} + z)^{-q}],   q = k - 1 = 2/(L-2),

and nu* is the minimizer of the smooth convex dual

    D(nu) = sum_i G_i(a_i^T nu) - b^T nu,     grad D = A x(A^T nu) - b,
    Hess D = A diag(x'(A^T nu)) A^T,  x_i' = u0_i^2 e^{z} + v0_i^2 e^{-z}                 (L = 2),
                                      x_i' = k [(u0_i^{2-L} - z)^{-k-1} + (v0_i^{2-L} + z)^{-k-1}].

D is strictly convex when A has full row rank, so nu* and the limit are unique when they exist.
For L > 2 the G_i blow up at the boundary of the domain (a barrier): minimizing D stays inside.
If no x of the allowed signs solves A x = b (nonneg: b outside the cone A R^N_+), D is unbounded
below along a Farkas direction (A^T d <= 0, b^T d > 0): status "infeasible".

Primal (the implicit bias). With Q the potential whose gradient inverts the map (grad Q(x) = z(x);
grad Q(x0) = 0 at x0 = x(0) = u0^L - v0^L), the limit is the Bregman projection
argmin {D_Q(x, x0) : A x = b}: its KKT condition is z(x) in range(A^T). Splitting x = p - q with
p, q >= 0 (p the u^L part, q the v^L part) gives programs with the same stationarity conditions:

    L = 2:  min sum_i p_i log(p_i / u0_i^2) - p_i + q_i log(q_i / v0_i^2) - q_i  s.t. A(p - q) = b
            (stationarity log(p_i / u0_i^2) = z_i = -log(q_i / v0_i^2): exactly the map above).
            Minimizing over the split for fixed x gives the hypentropy: with beta_i = 2 u0_i v0_i,
            Q(x) = sum_i x_i arcsinh(x_i / beta_i) - sqrt(x_i^2 + beta_i^2) + x_i log(v0_i / u0_i),
            i.e. z_i(x) = arcsinh(x_i / beta_i) + log(v0_i / u0_i); nonneg: the KL divergence
            Q(x) = sum_i x_i log(x_i / u0_i^2) - x_i.
    L > 2:  min sum_i u0_i^{2-L} p_i - (L/2) p_i^{2/L} + v0_i^{2-L} q_i - (L/2) q_i^{2/L}
            s.t. A(p - q) = b
            (stationarity u0_i^{2-L} - p_i^{-1/k} = z_i, i.e. p_i = (u0_i^{2-L} - z_i)^{-k}).

These are exponential-cone and power-cone programs; tests/test_theory.py solves them with cvxpy
(Clarabel) as an independent check of the dual solve. As alpha -> 0 the L > 2 objective is
dominated by sum_i u0_i^{2-L} p_i: a weighted l1 norm with weights u0_i^{2-L}, the plain l1 norm
only for a constant initialization (for L = 2 the weights are log(1/u0_i^2) = 2 log(1/alpha) + O(1),
uniform to leading order).

WN-GD (docs/MODEL.md, "The alpha_eff derivation"). With eta_r / eta_u = eta~ fixed (both
schedules), the WN flow is w' = -eta_u r^2 grad f - c(t) w with
c(t) = (eta_r / r^2 - eta_u) <w, grad f>, and since (r^2)' = -2 eta_r <w, grad f>,
int_0^t c = C(t) = log(r_0 / r_t) + (r_t^2 - r_0^2) / (2 eta~). The first term is gradient flow in
the time tau' = eta_u r^2, the second a common rescaling. For L = 2, log w_i gains -C(t), so
u_i^2 = (u0_i e^{-C})^2 e^{z_i}. For L > 2, phi = w_i^{2-L} obeys
phi' = L(L-2) tau' rho_i + (L-2) c phi, so phi(t) = e^{(L-2)C(t)} (phi_0 + (A^T mu)_i)
= (w0_i e^{-C(t)})^{2-L} + (A^T mu')_i. Either way the limit is the map above from the initial
weights w0 e^{-C_inf}: the WN-GD prediction is ``predicted_limit(..., log_scale=-C_inf)``
(``wn_log_scale``), for every L.

Discrete GD with step eta lands O(eta) from the flow's limit (tested: the gap halves with eta).

Numerics
--------
Damped Newton on D from nu = 0: per iteration one Gram matrix A diag(x') A^T (M^2 N flops, the
cost), one Jacobi-scaled M x M Cholesky solve (a Levenberg shift only if the factorization fails
or the step stalls), and an Armijo backtracking line search whose trial points cost O(N) each.
* Scaled arithmetic: the per-coordinate state is kept as theta_u = log(u0^2) + z,
  theta_v = log(v0^2) - z (L = 2), or s_u = u0^{2-L} - z, s_v = v0^{2-L} + z (L > 2), updated by
  the same increments as nu. Tiny initializations neither overflow nor lose the O(1) bases to
  cancellation (alpha = 1e-6, L = 3: u0^{2-L} = 1e6 while s_u ~ 1 on the support).
* The Armijo test uses D(nu + t p) - D(nu) = t r^T p + sum_i R_i(t), with r = A x - b and
  R_i >= 0 the second-order remainders of the G_i, each evaluated without cancellation (series
  near 0), so the test stays meaningful down to rounding-level residuals.
* The Newton system is formed from log x'(z) scaled by its maximum, and the full Newton step
  length 1 / max x'(z) is kept apart (the line search starts from it, capped by the domain), so a
  start where every x'(z) underflows (alpha_eff = e^{-800}) still has a direction.
* Steps are capped: |t A^T p| <= Z_STEP_CAP for L = 2, a fraction-to-the-boundary rule for L > 2.
* Effective scale: lambda = log-scale of the weights relative to the "natural" scale at which
  max_i (gamma w0_i)^L = ||A^+ b||_inf. L = 2 with lambda < 2 EXTRAPOLATE_START (-50): a
  continuation over lambda = -25, -50, -100, ... where nu is started from the linear extrapolation
  of the last two solutions (nu is asymptotically affine in lambda: -2 lambda nu_hat + nu_c), so
  e^{-1600} costs ~80-90 iterations instead of failing. L > 2 with lambda < LIMIT_LOG_SCALE (-50):
  the finite-scale program is not representable (u0^{2-L} overflows, x underflows) and its solution
  equals the alpha -> 0 limit, the weighted-l1 LP min sum_i u0_i^{2-L} p_i + v0_i^{2-L} q_i
  s.t. A (p - q) = b, p, q >= 0, to ~1e-10 already at lambda = -30 (measured: 1e-10 over 72
  instances, L = 3, lambda in {-30, -50, -80}); ``alpha_zero_limit`` solves it (scipy HiGHS).
  For L = 2 the same substitution is not accurate (differences up to 4e-2 at lambda = -80 when the
  l1 minimizer has M nonzeros), hence the continuation.
* L >= 4 with weights far below the natural scale: warm start from the same weights scaled up
  (a loose solve there, then an exact rescaling of the state: scaling the weights by gamma and nu
  by gamma^{2-L} scales s_u and s_v by gamma^{2-L}); see WARM_START_MIN_DEPTH.
* Stopping: relative residual ||A x - b|| / ||b|| <= rtol. Measured (benchmarks/theory.py): 6-27
  Newton iterations for L = 2, 3 and alpha in [1e-3, 0.1]; up to ~40 (L = 3) and ~80 (L = 4) at
  alpha = 1e-10; 50-140 for L = 2 at log-scale -300. A solve costs 0.01-0.8x a basis-pursuit
  solve from (40, 100) to (200, 1000) (median 0.2); at log-scale -300 (WN-GD with a small eta~)
  0.1-7x for L = 2 (the continuation) and 0.3-2.3x for L > 2 (the LP).

Statuses: "ok" (converged); "inaccurate" (stalled or out of iterations with relative residual
<= INACCURATE_RTOL; x is returned); "infeasible" (no x of the allowed signs solves A x = b: a
Newton direction that is a Farkas certificate, or an LP feasibility check with scipy's HiGHS, run
only when a solve has not converged after LP_CHECK_AFTER iterations or failed); "failed" (anything
else, or unusable initial weights). x is NaN unless the status is "ok" or "inaccurate". A failed
solve is never an exception; only malformed shapes raise ValueError. A Prediction's message says
how it was obtained when that is not the plain Newton solve (e.g. the alpha -> 0 LP limit).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from pipeline.families.diagonal import metrics

STATUSES = ("ok", "inaccurate", "infeasible", "failed")
#: The statuses whose x is a usable prediction.
USABLE = ("ok", "inaccurate")
#: A solve that stops early with a relative residual at most this is "inaccurate", not "failed".
INACCURATE_RTOL = 1e-6
#: L = 2: largest change of any z_i per Newton step (x_i changes by at most e^Z_STEP_CAP).
Z_STEP_CAP = 20.0
#: L > 2: a step goes at most this fraction of the way to the boundary of the domain.
BOUNDARY_FRACTION = 0.95
ARMIJO = 1e-4
#: Backtracking halvings before a line search counts as stalled (from the capped step).
MAX_HALVINGS = 60
#: Warm start for L >= WARM_START_MIN_DEPTH when the initial weights are smaller than the solution's
#: scale: first solve (to relative residual WARM_START_RTOL) from the weights scaled up to it, then
#: rescale that state to the target scale (``_Coordinates.rescale``). Measured over 1440 solves
#: (M, N) in {(20, 50), (40, 100)}, nonneg and signed, alpha 0.1 .. 1e-10, constant and random init:
#: for L = 4 it cuts the worst case from 136 to 79 Newton iterations; for L = 2 and 3 it costs
#: 10-15% more iterations in total, so it is not used there.
WARM_START_MIN_DEPTH = 4
WARM_START_RTOL = 0.1
#: L = 2 more than e^{-2 EXTRAPOLATE_START} below the natural scale: a continuation over the
#: log-scales EXTRAPOLATE_START * 2^j relative to the natural one (each solved to EXTRAPOLATE_RTOL),
#: each started from the linear extrapolation of the previous two, and the target from the last
#: two. Without it the iterations grow like |log-scale| / 2 (steps from below are capped at
#: Z_STEP_CAP in z) and the solve fails beyond about e^{-300}.
EXTRAPOLATE_START = -25.0
EXTRAPOLATE_RTOL = 1e-8
#: L > 2 more than e^{-LIMIT_LOG_SCALE} below the solution's natural scale (the gamma at which
#: max_i (gamma w0_i)^L = ||A^+ b||_inf): the prediction is the alpha -> 0 limit, a weighted-l1 LP
#: (``alpha_zero_limit``).
LIMIT_LOG_SCALE = -50.0
#: Newton iterations after which a solve that has not converged runs one LP feasibility check.
LP_CHECK_AFTER = 40
BUDGET_EXHAUSTED = "Newton iteration budget exhausted"
#: Levenberg shifts tried (relative to the unit diagonal of the Jacobi-scaled Hessian) when the
#: Cholesky factorization fails or the line search stalls.
LEVENBERG_SHIFTS = (0.0, 1e-12, 1e-9, 1e-6, 1e-3, 1.0)


@dataclass(frozen=True, eq=False)
class Prediction:
    """The predicted gradient-flow limit of one (instance, depth, initial weights).

    x: (N,) predicted limit of the product x~ (NaN-filled unless status is "ok" or "inaccurate");
    nu: (M,) dual variable (z = A^T nu is the mirror coordinate, see the module docstring);
    status: one of STATUSES; iterations: Newton iterations done; residual: ||A x - b|| / ||b||
    (NaN when there is no x); seconds: wall time; message: why a solve was not "ok" ("" when ok).
    """

    x: np.ndarray
    nu: np.ndarray
    status: str
    iterations: int
    residual: float
    seconds: float
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --- the per-coordinate mirror map ---------------------------------------------------------------


def _series_exp_remainder(d: np.ndarray) -> np.ndarray:
    """e^d - 1 - d, accurate for all finite d (series for |d| < 0.1, else expm1(d) - d)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.expm1(d) - d
    small = np.abs(d) < 0.1
    if small.any():
        ds = d[small]
        acc = np.full_like(ds, 1.0 / math.factorial(12))
        for j in range(11, 1, -1):  # Horner on d^2 sum_{j=2..12} d^{j-2} / j!
            acc = acc * ds + 1.0 / math.factorial(j)
        out[small] = acc * ds * ds
    return out


def _series_power_remainder(e: np.ndarray, q: float) -> np.ndarray:
    """(1 - e)^{-q} - 1 - q e for e < 1, accurate near e = 0 (series for |e| < 0.05)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.expm1(-q * np.log1p(-e)) - q * e
    small = np.abs(e) < 0.05
    if small.any():
        es = e[small]
        # coefficients c_j = binom(q + j - 1, j), j = 2..14: error < 0.05^13 relative to c_2 e^2
        coef = [1.0, q]
        for j in range(2, 15):
            coef.append(coef[-1] * (q + j - 1) / j)
        acc = np.full_like(es, coef[14])
        for j in range(13, 1, -1):  # Horner on e^2 sum_{j=2..14} c_j e^{j-2}
            acc = acc * es + coef[j]
        out[small] = acc * es * es
    return out


class _Coordinates:
    """The N coordinates' state for a fixed (w0, L, signed): x(z), x'(z) and the remainders of G.

    L = 2 stores theta_u = log(u0^2) + z, theta_v = log(v0^2) - z (-inf for a zero weight);
    L > 2 stores s_u = u0^{2-L} - z, s_v = v0^{2-L} + z (+inf for a zero weight). Nonneg: v absent.
    """

    def __init__(self, u0: np.ndarray, v0: np.ndarray | None, depth: int, log_scale: float):
        self.L = depth
        self.signed = v0 is not None
        with np.errstate(divide="ignore"):
            log_u = np.log(u0) + log_scale
            log_v = None if v0 is None else np.log(v0) + log_scale
        if depth == 2:
            self.a = 2.0 * log_u
            self.b = None if log_v is None else 2.0 * log_v
        else:
            self.k = depth / (depth - 2.0)
            self.q = 2.0 / (depth - 2.0)
            with np.errstate(over="ignore"):
                self.a = np.exp((2.0 - depth) * log_u)  # u0^{2-L}, +inf where u0 = 0
                self.b = None if log_v is None else np.exp((2.0 - depth) * log_v)

    def step_limit(self, dz: np.ndarray) -> float:
        """Largest t for which z + t dz stays safely inside the domain (may be inf)."""
        if self.L == 2:
            m = float(np.max(np.abs(dz), initial=0.0))
            return Z_STEP_CAP / m if m > 0 else np.inf
        t = np.inf
        up = dz > 0  # s_u = a - z shrinks
        if up.any():
            t = min(t, float(np.min(self.a[up] / dz[up])))
        if self.b is not None:
            down = dz < 0  # s_v = b + z shrinks
            if down.any():
                t = min(t, float(np.min(self.b[down] / -dz[down])))
        return BOUNDARY_FRACTION * t

    def move(self, dz: np.ndarray) -> None:
        """z += dz, in the scaled state."""
        if self.L == 2:
            self.a = self.a + dz
            if self.b is not None:
                self.b = self.b - dz
        else:
            self.a = self.a - dz
            if self.b is not None:
                self.b = self.b + dz

    def rescale(self, log_factor: float, nu: np.ndarray) -> np.ndarray:
        """Multiply the initial weights by e^{log_factor}; returns the warm start for nu.

        L = 2: nu is kept (theta_u, theta_v gain 2 log_factor). L > 2: nu is multiplied by
        e^{(2-L) log_factor}, which multiplies both bases s_u, s_v by the same factor (exactly, no
        cancellation): the point of the barrier problem's central path scales this way."""
        if self.L == 2:
            self.a = self.a + 2.0 * log_factor
            if self.b is not None:
                self.b = self.b + 2.0 * log_factor
            return nu
        factor = math.exp((2.0 - self.L) * log_factor)
        self.a = self.a * factor
        if self.b is not None:
            self.b = self.b * factor
        return nu * factor

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """x(z) and log x'(z), both (N,) (the log, so that the Newton system can be scaled even
        when every x'(z) underflows)."""
        with np.errstate(over="ignore", divide="ignore"):
            if self.L == 2:
                pu = np.exp(self.a)
                if self.b is None:
                    return pu, self.a.copy()
                return pu - np.exp(self.b), np.logaddexp(self.a, self.b)
            pu = self.a ** -self.k
            log_du = -(self.k + 1.0) * np.log(self.a)
            if self.b is None:
                return pu, log_du + math.log(self.k)
            x = pu - self.b ** -self.k
            return x, np.logaddexp(log_du, -(self.k + 1.0) * np.log(self.b)) + math.log(self.k)

    def remainder(self, dz: np.ndarray) -> float:
        """sum_i G_i(z_i + dz_i) - G_i(z_i) - x_i(z_i) dz_i (>= 0; inf if it overflows)."""
        with np.errstate(over="ignore", invalid="ignore"):
            if self.L == 2:
                total = np.exp(self.a) * _series_exp_remainder(dz)
                if self.b is not None:
                    total = total + np.exp(self.b) * _series_exp_remainder(-dz)
            else:
                # G_u = s_u^{-q}/q, s_u -> s_u - dz: s_u^{-q}/q ((1 - dz/s_u)^{-q} - 1 - q dz/s_u)
                total = self.a ** -self.q / self.q * _series_power_remainder(dz / self.a, self.q)
                if self.b is not None:
                    total = total + self.b ** -self.q / self.q * _series_power_remainder(
                        -dz / self.b, self.q)
            # a zero weight (theta = -inf, s = +inf) contributes exactly 0 (0 * finite); a NaN can
            # only come from a step outside the domain, which step_limit prevents: rejected anyway
            s = float(np.sum(total))
        return s if np.isfinite(s) else np.inf

    def allowed_signs(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounds (lower, upper) on x_i that every x(z) satisfies: x_i >= 0 without a v-part,
        x_i <= 0 without a u-part, x_i = 0 without either."""
        has_u = self.a != (-np.inf if self.L == 2 else np.inf)
        if self.b is None:
            has_v = np.zeros_like(has_u)
        else:
            has_v = self.b != (-np.inf if self.L == 2 else np.inf)
        lower = np.where(has_v, -np.inf, 0.0)
        upper = np.where(has_u, np.inf, 0.0)
        return lower, upper


def flow_map(
    z: np.ndarray, w0: np.ndarray, depth: int, signed: bool, log_scale: float = 0.0
) -> np.ndarray:
    """The mirror map x(z) of the module docstring: (N,) for z of shape (N,), from the initial
    weights w0 * e^{log_scale} (w0: (N,) nonneg, (2N,) = (u0, v0) signed). NaN outside the domain
    (L > 2)."""
    u0, v0 = _split(np.asarray(w0, dtype=np.float64), signed)
    coords = _Coordinates(u0, v0, int(depth), float(log_scale))
    z = np.asarray(z, dtype=np.float64)
    coords.move(z)
    if depth > 2:
        inside = coords.a > 0
        if coords.b is not None:
            inside &= coords.b > 0
    x, _ = coords.values()
    return x if depth == 2 else np.where(inside, x, np.nan)


def _split(w0: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not signed:
        return w0, None
    N = w0.shape[-1] // 2
    return w0[:N], w0[N:]


# --- the solver: one function per strategy, and the dispatcher -----------------------------------


@dataclass(frozen=True, eq=False)
class _Problem:
    """What every strategy reads: A (M, N), b (M,), b_norm = ||b|| (at least the smallest normal
    float), w0 (N,) nonneg or (2N,) signed and its parts u0 (N,), v0 (N,) (None for nonneg), the
    depth L, the target log-scale, and ``natural``: the log-scale at which
    max_i (gamma w0_i)^L = ||A^+ b||_inf (``_start_log_scale``; -inf if A A^T is singular).
    ``unusable`` says why no strategy applies ("" when the inputs are usable; ``natural`` and
    ``b_norm`` are NaN otherwise)."""

    A: np.ndarray
    b: np.ndarray
    b_norm: float
    w0: np.ndarray
    u0: np.ndarray
    v0: np.ndarray | None
    depth: int
    signed: bool
    log_scale: float
    natural: float
    unusable: str

    @classmethod
    def from_inputs(cls, A, b, w0, depth, signed, log_scale) -> _Problem:
        """Checked inputs of ``predicted_limit``; ValueError for malformed shapes or depth."""
        A = np.asarray(A, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        w0 = np.asarray(w0, dtype=np.float64)
        M, N = A.shape
        n = 2 * N if signed else N
        if b.shape != (M,) or w0.shape != (n,):
            raise ValueError(f"need A (M, N), b (M,), w0 ({n},); got {A.shape}, {b.shape}, "
                             f"{w0.shape}")
        if int(depth) != depth or depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
        depth = int(depth)
        unusable = ""
        if not (np.all(np.isfinite(w0)) and np.all(w0 >= 0) and np.any(w0 > 0)
                and np.isfinite(log_scale)):
            unusable = "initial weights must be finite, >= 0 and not all 0; log_scale finite"
        elif not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):
            unusable = "non-finite A or b"
        natural = np.nan if unusable else _start_log_scale(A, b, w0, depth)
        b_norm = np.nan if unusable else max(float(np.linalg.norm(b)), np.finfo(float).tiny)
        u0, v0 = _split(w0, signed)
        return cls(A, b, b_norm, w0, u0, v0, depth, bool(signed), float(log_scale), natural,
                   unusable)

    def coordinates(self, log_scale: float) -> _Coordinates:
        """The coordinates' state at z = 0 for the initial weights times e^{log_scale}."""
        return _Coordinates(self.u0, self.v0, self.depth, log_scale)

    def failed(self, message: str, nu: np.ndarray | None = None, iterations: int = 0,
               status: str = "failed") -> tuple:
        """The outcome of a solve without a usable x (x and, by default, nu NaN)."""
        M, N = self.A.shape
        nu = np.full(M, np.nan) if nu is None else nu
        return status, np.full(N, np.nan), nu, iterations, np.nan, message


#: What a strategy ends with: (status, x (N,), nu (M,), Newton iterations, relative residual,
#: message); ``predicted_limit`` adds the wall time.
_Outcome = tuple
#: Where Newton at the target scale starts: (nu (M,), the coordinates at z = A^T nu, Newton
#: iterations already spent).
_Start = tuple
LP_INFEASIBLE = "no x of the allowed signs solves A x = b (LP feasibility check)"


def predicted_limit(
    A: np.ndarray,
    b: np.ndarray,
    w0: np.ndarray,
    depth: int,
    signed: bool,
    *,
    log_scale: float = 0.0,
    rtol: float = 1e-10,
    max_newton: int = 150,
) -> Prediction:
    """The gradient-flow limit from initial weights w0 * e^{log_scale} (see the module docstring).

    A: (M, N), b: (M,), w0: (N,) nonneg or (2N,) = (u0, v0) signed, entries >= 0 (the run's initial
    trainable weights); depth: L >= 2. log_scale: the weights are scaled by e^{log_scale} in
    log-space (WN-GD: -C_inf, see ``wn_log_scale``), so tiny effective scales do not underflow.
    rtol: stop when ||A x - b|| / ||b|| <= rtol. max_newton: Newton iterations in all, over all
    stages of the scale continuation.
    Returns a Prediction; a solve that fails is a status, never an exception (ValueError only for
    malformed shapes or depth).

    The strategies, tried in this order: unusable inputs are "failed"; for L > 2 far below the
    natural scale, the alpha -> 0 LP (``_alpha_zero_strategy``: there the finite-scale program
    is not representable in float64, so it comes before any Newton solve); otherwise damped
    Newton on the dual at the target scale (``_newton_strategy``), started by ``_warm_start``
    (L >= WARM_START_MIN_DEPTH below the natural scale), else by ``_continuation`` (L = 2 more
    than e^{-2 EXTRAPOLATE_START} below it), else from nu = 0.
    """
    start = time.perf_counter()
    problem = _Problem.from_inputs(A, b, w0, depth, signed, log_scale)
    depth, log_scale, natural = problem.depth, problem.log_scale, problem.natural
    if problem.unusable:
        outcome = problem.failed(problem.unusable)
    elif depth > 2 and log_scale - natural < LIMIT_LOG_SCALE:
        outcome = _alpha_zero_strategy(problem)
    elif depth >= WARM_START_MIN_DEPTH and natural > log_scale:
        outcome = _newton_strategy(problem, _warm_start(problem, max_newton), rtol, max_newton)
    elif depth == 2 and log_scale - natural < 2.0 * EXTRAPOLATE_START:
        outcome = _newton_strategy(problem, _continuation(problem, max_newton), rtol, max_newton)
    else:
        start_nu = (np.zeros(problem.A.shape[0]), problem.coordinates(log_scale), 0)
        outcome = _newton_strategy(problem, start_nu, rtol, max_newton)
    status, x, nu, iterations, residual, message = outcome
    return Prediction(x, nu, status, iterations, residual, time.perf_counter() - start, message)


def _alpha_zero_strategy(problem: _Problem) -> _Outcome:
    """For L > 2 more than e^{-LIMIT_LOG_SCALE} below the natural scale: the alpha -> 0 limit,
    the weighted-l1 LP of ``alpha_zero_limit`` (no Newton iterations; nu NaN). There the
    finite-scale program is not representable (u0^{2-L} overflows, x underflows) and its
    solution equals the LP's (module docstring, "Numerics")."""
    limit = alpha_zero_limit(problem.A, problem.b, problem.w0, problem.depth, problem.signed,
                             log_scale=problem.log_scale)
    return limit.status, limit.x, limit.nu, 0, limit.residual, limit.message


def _warm_start(problem: _Problem, max_newton: int) -> _Start:
    """For L >= WARM_START_MIN_DEPTH with the weights below the natural scale: a loose Newton
    solve (to WARM_START_RTOL) at the natural scale, whose state is then rescaled exactly to the
    target (``_Coordinates.rescale``). If the loose solve does not converge, the target starts
    from nu = 0; its iterations count either way."""
    nu = np.zeros(problem.A.shape[0])
    warm = problem.coordinates(problem.natural)
    nu_warm, _, _, iterations, status, _ = _newton(
        problem.A, problem.b, problem.b_norm, warm, nu, WARM_START_RTOL, max_newton)
    if status == "ok":
        return warm.rescale(problem.log_scale - problem.natural, nu_warm), warm, iterations
    return nu, problem.coordinates(problem.log_scale), iterations


def _continuation(problem: _Problem, max_newton: int) -> _Start:
    """For L = 2 more than e^{-2 EXTRAPOLATE_START} below the natural scale. nu is asymptotically
    affine in the log-scale lambda relative to the natural one (nu ~ -2 lambda nu_hat + nu_c,
    nu_hat an l1 dual certificate): solve at lambda = EXTRAPOLATE_START * 2^j (j = 0, 1, ...,
    each to EXTRAPOLATE_RTOL) while above the target, each stage from the linear extrapolation
    of the previous two, and start the target from the extrapolation of the last two. If a
    stage does not converge (or fewer than two did), the target starts from nu = 0; the stages'
    iterations count either way."""
    A, b, b_norm = problem.A, problem.b, problem.b_norm
    nu = np.zeros(A.shape[0])
    coords = problem.coordinates(problem.log_scale)
    target = problem.log_scale - problem.natural
    lams, nus, iterations = [], [], 0
    lam = EXTRAPOLATE_START
    while lam > target:
        start_nu = nu if len(nus) < 2 else _extrapolate(lams, nus, lam)
        stage = problem.coordinates(problem.natural + lam)
        if len(nus) >= 2:
            stage.move(A.T @ start_nu)
        nu_stage, _, _, its, status, _ = _newton(
            A, b, b_norm, stage, start_nu, EXTRAPOLATE_RTOL, max_newton - iterations)
        iterations += its
        if status != "ok":
            break
        lams.append(lam)
        nus.append(nu_stage)
        lam *= 2.0
    if lam <= target and len(nus) >= 2:
        nu = _extrapolate(lams, nus, target)
        coords.move(A.T @ nu)
    return nu, coords, iterations


def _newton_strategy(problem: _Problem, start: _Start, rtol: float, max_newton: int) -> _Outcome:
    """Damped Newton on the dual at the target scale from ``start``, to relative residual rtol
    within max_newton iterations in all, and the status of where it ends. A solve still
    unconverged after LP_CHECK_AFTER iterations runs one LP feasibility check (the Farkas test
    on Newton directions catches most infeasible problems earlier); one that stops short is
    "inaccurate" if its residual is <= INACCURATE_RTOL, else "infeasible" if the LP says so,
    else "failed"."""
    A, b, b_norm = problem.A, problem.b, problem.b_norm
    nu, coords, iterations = start
    budget = min(max_newton - iterations, max(LP_CHECK_AFTER - iterations, 0))
    nu, x, residual, its, status, message = _newton(A, b, b_norm, coords, nu, rtol, budget)
    iterations += its
    if status == "stalled" and iterations < max_newton and message == BUDGET_EXHAUSTED:
        if not (residual <= INACCURATE_RTOL) and _lp_infeasible(A, b, *coords.allowed_signs()):
            return problem.failed(LP_INFEASIBLE, nu, iterations, "infeasible")
        nu, x, residual, its, status, message = _newton(
            A, b, b_norm, coords, nu, rtol, max_newton - iterations)
        iterations += its
    if status == "ok":
        return "ok", x, nu, iterations, residual, ""
    if status == "infeasible":
        return problem.failed(message, nu, iterations, "infeasible")
    if np.isfinite(residual) and residual <= INACCURATE_RTOL:
        return "inaccurate", x, nu, iterations, residual, message
    if _lp_infeasible(A, b, *coords.allowed_signs()):
        return problem.failed(LP_INFEASIBLE, nu, iterations, "infeasible")
    return problem.failed(f"{message} (relative residual {residual:.3g})", nu, iterations)


def alpha_zero_limit(
    A: np.ndarray, b: np.ndarray, w0: np.ndarray, depth: int, signed: bool, *,
    log_scale: float = 0.0,
) -> Prediction:
    """The leading-order (alpha -> 0) form of the limit: the weighted-l1 linear program

        min sum_i c_i p_i + d_i q_i   s.t.  A (p - q) = b,  p, q >= 0   (q absent for nonneg),

    with the weights of the potential's linear term at the scale e^{log_scale} (module
    docstring): L = 2: c_i = -2 log(u0_i e^{log_scale}), d_i the same with v0; L > 2: c_i
    proportional to u0_i^{2-L}, d_i to v0_i^{2-L} (a common factor does not matter).
    Coordinates with a zero weight are fixed at 0. Solved with scipy's HiGHS.
    ``predicted_limit`` returns this for L > 2 when the scale is more than e^{-LIMIT_LOG_SCALE}
    below the natural one: there the finite-scale program is not representable in float64 and
    its solution equals this LP's to ~1e-10 (tests/test_theory.py). Shapes and statuses as
    ``predicted_limit``; nu is NaN (the LP's duals are not the flow's nu); iterations is 0.
    """
    from scipy.optimize import linprog

    start = time.perf_counter()
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    M, N = A.shape
    u0, v0 = _split(np.asarray(w0, dtype=np.float64), signed)
    parts = [u0] if v0 is None else [u0, v0]
    with np.errstate(divide="ignore"):
        logs = [np.log(w) for w in parts]
    top = max(float(np.max(lw)) for lw in logs)
    if depth == 2:
        weights = [-2.0 * (lw + log_scale) for lw in logs]
    else:
        weights = [np.exp((2.0 - depth) * (lw - top)) for lw in logs]
    present = [np.isfinite(lw) for lw in logs]
    cost = np.concatenate([np.where(m, c, 0.0) for c, m in zip(weights, present)])
    bounds = [(0.0, None if m else 0.0) for mask in present for m in mask]
    A_eq = A if v0 is None else np.hstack([A, -A])
    nu = np.full(M, np.nan)

    def result(status, x, residual, message):
        return Prediction(x, nu, status, 0, residual, time.perf_counter() - start, message)

    if not np.all(cost[np.concatenate(present)] > 0):
        return result("failed", np.full(N, np.nan), np.nan,
                      "alpha -> 0 limit needs every initial weight * e^{log_scale} < 1")
    try:
        res = linprog(cost, A_eq=A_eq, b_eq=b, bounds=bounds, method="highs")
    except (ValueError, RuntimeError) as exc:
        return result("failed", np.full(N, np.nan), np.nan, f"weighted-l1 LP: {exc}")
    if res.status == 2:
        return result("infeasible", np.full(N, np.nan), np.nan,
                      "no x of the allowed signs solves A x = b (weighted-l1 LP)")
    if res.status != 0:
        return result("failed", np.full(N, np.nan), np.nan, f"weighted-l1 LP: {res.message}")
    x = res.x[:N] if v0 is None else res.x[:N] - res.x[N:]
    residual = float(np.linalg.norm(A @ x - b)) / max(float(np.linalg.norm(b)),
                                                       np.finfo(float).tiny)
    return result("ok", x, residual, "alpha -> 0 limit: weighted-l1 LP (HiGHS)")


def _extrapolate(lams: list[float], nus: list[np.ndarray], lam: float) -> np.ndarray:
    """nu at log-scale lam by linear extrapolation from the last two (lams[i], nus[i])."""
    (lam_a, lam_b), (nu_a, nu_b) = lams[-2:], nus[-2:]
    return nu_b + (lam - lam_b) / (lam_b - lam_a) * (nu_b - nu_a)


def _start_log_scale(A: np.ndarray, b: np.ndarray, w0: np.ndarray, depth: int) -> float:
    """log of the scale gamma at which max_i (gamma w0_i)^L equals ||A^+ b||_inf: the reference
    scale of the strategies (``_warm_start`` solves there, ``_continuation``'s stages and the
    alpha -> 0 threshold are relative to it)."""
    try:
        x_l2 = A.T @ np.linalg.solve(A @ A.T, b)
    except np.linalg.LinAlgError:
        return -np.inf
    tau = float(np.max(np.abs(x_l2)))
    if not (np.isfinite(tau) and tau > 0):
        return -np.inf
    return float(np.log(tau) / depth - np.log(np.max(w0)))


def _newton(A, b, b_norm, coords, nu, rtol, budget):
    """Damped Newton on the dual from nu (coords holds the state at z = A^T nu, moved in place).
    Returns (nu, x, residual, iterations, status, message), status "ok" | "stalled" |
    "infeasible"."""
    shift = 0  # index into LEVENBERG_SHIFTS, raised when a step stalls, lowered after success
    iterations = 0
    lower, upper = coords.allowed_signs()
    signs_forced = not np.any(np.isinf(lower) & np.isinf(upper))  # no free coordinate
    x, log_h = coords.values()
    with np.errstate(over="ignore", invalid="ignore"):  # an x that overflows: "non-finite" below
        r = A @ x - b
    residual = _relative_norm(r, b_norm)
    while True:
        if not np.isfinite(residual):
            return nu, x, residual, iterations, "stalled", "non-finite x(z)"
        if residual <= rtol:
            return nu, x, residual, iterations, "ok", ""
        if iterations >= budget:
            return nu, x, residual, iterations, "stalled", BUDGET_EXHAUSTED
        iterations += 1
        p, t_newton = _newton_direction(A, r, log_h, LEVENBERG_SHIFTS[shift])
        while p is None and shift + 1 < len(LEVENBERG_SHIFTS):
            shift += 1
            p, t_newton = _newton_direction(A, r, log_h, LEVENBERG_SHIFTS[shift])
        if p is None:
            return nu, x, residual, iterations, "stalled", "Newton system not solvable"
        dz = A.T @ p
        if signs_forced and _farkas(b, p, dz, lower, upper):
            return (nu, x, residual, iterations, "infeasible",
                    "Farkas certificate (the Newton direction): no x of the allowed signs solves "
                    "A x = b")
        t = _line_search(coords, dz, float(r @ p), t_newton)
        if t is None:
            if shift + 1 < len(LEVENBERG_SHIFTS):
                shift += 1  # a more gradient-like direction
                continue
            return nu, x, residual, iterations, "stalled", "line search stalled"
        shift = max(shift - 1, 0)
        nu = nu + t * p
        coords.move(t * dz)
        x, log_h = coords.values()
        with np.errstate(over="ignore", invalid="ignore"):
            r = A @ x - b
        residual = _relative_norm(r, b_norm)


def _newton_direction(A: np.ndarray, r: np.ndarray, log_h: np.ndarray, shift: float):
    """A Newton direction p and the step t_newton along it that is the full (regularized) Newton
    step: p solves (A diag(h / h_max) A^T + shift diag) p = -r by Jacobi scaling and Cholesky, and
    t_newton = 1 / h_max (inf if that overflows), so that arbitrarily small x'(z) (all underflowing)
    still give a direction. log_h: (N,) log of the Hessian weights x'(z). (None, nan) on failure."""
    top = float(np.max(log_h))
    if not np.isfinite(top):
        return None, np.nan
    B = A * np.exp(0.5 * (log_h - top))  # weights <= 1: finite for a finite A
    diag = np.einsum("ij,ij->i", B, B)  # diag(H), H = B B^T
    if not diag.min() > 0:
        return None, np.nan
    scale = 1.0 / np.sqrt(diag)
    B *= scale[:, None]
    Hs = B @ B.T  # the Jacobi-scaled H (numpy uses a symmetric rank-k update for X @ X.T)
    Hs.flat[::Hs.shape[0] + 1] = 1.0 + shift
    _, y, info = lapack.dposv(Hs, -scale * r, lower=1)  # Cholesky and both triangular solves
    if info != 0:  # not positive definite (or a bad argument)
        return None, np.nan
    p = scale * y
    with np.errstate(over="ignore"):
        t_newton = math.exp(-top) if -top < 709.0 else np.inf
    return (p, t_newton) if np.all(np.isfinite(p)) else (None, np.nan)


def _relative_norm(r: np.ndarray, b_norm: float) -> float:
    """||r|| / b_norm without overflow in the sum of squares (inf only if an entry is)."""
    with np.errstate(over="ignore"):
        squares = float(r @ r)
    if 1e-280 < squares < 1e280:  # no overflow or underflow in the sum: the direct norm
        return math.sqrt(squares) / b_norm
    m = float(np.max(np.abs(r)))
    if not (np.isfinite(m) and m > 0):
        return m / b_norm if np.isfinite(m) else np.inf  # NaN -> inf as well
    return m * float(np.linalg.norm(r / m)) / b_norm


def _line_search(coords: _Coordinates, dz: np.ndarray, slope: float, t_newton: float):
    """Armijo backtracking on the dual D along z + t dz from t = min(t_newton, the domain's
    step limit), t_newton being the full Newton step; the accepted t, or None if it stalls."""
    if not slope < 0:
        return None
    t = min(t_newton, coords.step_limit(dz))
    if not (np.isfinite(t) and t > 0):
        return None
    for _ in range(MAX_HALVINGS):
        if coords.remainder(t * dz) <= (1.0 - ARMIJO) * t * -slope:
            return t
        t *= 0.5
    return None


def _farkas(b: np.ndarray, d: np.ndarray, Atd: np.ndarray, lower: np.ndarray,
            upper: np.ndarray) -> bool:
    """True if d (M,) with Atd = A^T d proves that no x with lower <= x <= upper solves A x = b:
    b^T d > 0 and (A^T d)_i <= 0 where x_i >= 0 is forced, >= 0 where x_i <= 0 is forced. Then
    b^T d = x^T A^T d <= 0 for every such x, a contradiction. Only used when no x_i is free (where
    the condition would be (A^T d)_i = 0 exactly, which rounding never certifies)."""
    # a margin far above rounding in A^T d, so that a sign flipped by rounding cannot certify
    if not float(b @ d) > 1e-10 * float(np.linalg.norm(b) * np.linalg.norm(d)):
        return False
    nonneg = upper == np.inf
    return bool(np.all(Atd[nonneg] <= 0) and np.all(Atd[~nonneg] >= 0))


def _lp_infeasible(A: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> bool:
    """True if the LP {A x = b, lower <= x <= upper} is infeasible (scipy's HiGHS); False when it
    is feasible or the check itself fails."""
    from scipy.optimize import linprog

    bounds = [(None if np.isinf(lo) else lo, None if np.isinf(up) else up)
              for lo, up in zip(lower, upper)]
    try:
        res = linprog(np.zeros(A.shape[1]), A_eq=A, b_eq=b, bounds=bounds, method="highs")
    except (ValueError, RuntimeError):
        return False
    return res.status == 2


# --- WN-GD and the per-run metrics ---------------------------------------------------------------


def wn_log_scale(r0: float, r_final: float, eta_ratio: float) -> float:
    """-C_inf of a WN-GD run (docs/MODEL.md: C_inf = log(r_0 / r_T) + (r_T^2 - r_0^2) / (2 eta~),
    from the run's own r_0 = ||w_0||, r_T and eta~): the log of the factor
    e^{-C_inf} = alpha_eff / alpha that turns the run's initial weights into those of the plain
    gradient flow with the same limit.
    Pass it as ``predicted_limit(A, b, w0, L, signed, log_scale=wn_log_scale(r0, r_T, eta~))``.
    NaN unless r_0 and r_T are positive finite numbers (then predicted_limit returns "failed")."""
    if not (np.isfinite(r_final) and r_final > 0 and np.isfinite(r0) and r0 > 0):
        return float("nan")
    return -metrics.c_inf(r0, r_final, eta_ratio)


def prediction_metrics(
    x_final: np.ndarray, x_pred: np.ndarray, x_l1: np.ndarray
) -> dict[str, float]:
    """pred_error = ||x~_T - x_pred||_2 / ||x_pred||_2 and
    pred_l1_gap = ||x_pred||_1 / ||x_l1||_1 - 1 (all arrays (N,)); NaN where an input is missing
    (NaN) or a norm is 0."""
    x_final, x_pred, x_l1 = (np.asarray(v, dtype=np.float64) for v in (x_final, x_pred, x_l1))
    norm_pred = float(np.linalg.norm(x_pred))
    l1_ref = float(np.abs(x_l1).sum())
    error = float(np.linalg.norm(x_final - x_pred)) / norm_pred if norm_pred > 0 else np.nan
    gap = float(np.abs(x_pred).sum()) / l1_ref - 1.0 if l1_ref > 0 else np.nan
    return {"pred_error": float(error), "pred_l1_gap": float(gap)}
