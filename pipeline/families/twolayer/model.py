"""Single-hidden-layer linear networks trained by batched GD (docs/MODEL.md, "The two-layer family").

The model (Min, Tarmoun, Vidal & Mallada 2021, as reconstructed from their abstract):

    A in R^{M x N} (M < N), Y = A X* in R^{M x K} (K = outputs), U in R^{N x h}, V in R^{K x h}
    product  P = U V^T  (N x K),   residual  R = A P - Y  (M x K),
    loss     f(U, V) = 1/2 ||R||_F^2,
    gradient grad_U f = A^T R V  (N x h),   grad_V f = R^T A U  (K x h),
    GD       U_{k+1} = U_k - eta A^T R_k V_k,   V_{k+1} = V_k - eta R_k^T A U_k   (simultaneous).

Reference: the minimum-norm solution P* = A^+ Y; error_min_norm = ||P - P*||_F / ||P*||_F. Stopping,
statuses and loss curves follow the diagonal family (docs/MODEL.md, "Stopping and status").

Initialization (``initial_weights``). G_U in R^{N x h}, G_V in R^{K x h} with i.i.d. N(0, 1) entries
drawn from the run's seed; Pi = the orthogonal projector onto the row space of A;

    random:  U0 = e^{+lambda/2} (alpha / sqrt(h)) G_U,       V0 = e^{-lambda/2} (alpha / sqrt(h)) G_V
    range:   U0 = e^{+lambda/2} (alpha / sqrt(h)) Pi G_U,    V0 = e^{-lambda/2} (alpha / sqrt(h)) G_V

``imbalance`` lambda (real, 0 = the two layers' entries have the same scale alpha^2 / h) moves the
initialization along the network's rescaling symmetry (U, V) -> (c U, V / c), c = e^{lambda/2}: the
initial product U0 V0^T, hence the initial loss, is the same for every lambda (same seed and alpha),
and only the imbalance matrix changes:

    D = U0^T U0 - V0^T V0 = e^{lambda} U1^T U1 - e^{-lambda} V1^T V1     (h x h),

with (U1, V1) the lambda = 0 weights. For the random scheme E[D] = (alpha^2 / h) (N e^{lambda} -
K e^{-lambda}) I_h: D is not zero at lambda = 0 (the first layer has N rows, the second K). D has at
most N positive and at most K negative eigenvalues (rank of U^T U <= N, of V^T V <= K). lambda > 0
grows the positive eigenvalues like e^{lambda}, lambda < 0 the negative ones like e^{-lambda}.

Conservation. Along gradient flow, d/dt U = -A^T R V and d/dt V = -R^T A U, so

    d/dt U^T U = -(V^T R^T A U + U^T A^T R V) = d/dt V^T V,    hence  d/dt D = 0.

For GD the first-order terms cancel the same way and one step changes D by exactly

    D_{k+1} - D_k = eta^2 (G_U^T G_U - G_V^T G_V),   G = the gradients at step k,

so D drifts by O(eta^2 * sum_k ||grad_k||^2) = O(eta * flow time * typical ||grad||^2).

Rate. Along the flow dL/dt = -||A^T R V||_F^2 - ||U^T A^T R||_F^2, and with s = sigma_min(A)^2,
||A^T R V||^2 >= s lambda_min(V V^T) ||R||^2 and ||U^T A^T R||^2 >= s lambda_min(U U^T) ||R||^2.
Let d_1 <= ... <= d_h be the eigenvalues of D (conserved). From V^T V = U^T U - D >= -D, Weyl's
monotonicity gives lambda_min(V V^T) (the K-th largest eigenvalue of V^T V) >= -d_K; from
U^T U = V^T V + D >= D, lambda_min(U U^T) >= d_{h-N+1} (only when h >= N). Hence, for all t,

    L(t) <= L(0) exp(-c t),   c = 2 sigma_min(A)^2 * margin,
    margin = max(0, -d_K) + max(0, d_{h-N+1})        (a term is 0 when h < K, resp. h < N).

``measured_imbalance`` returns (lambda_min(D), lambda_max(D), margin) and ``flow_rate_bound`` the
constant c. For GD with step eta the bound reads eta * c per step (flow time t = k eta) as long as GD
is flow-like, eta (mu_min + mu_max) <= 2 below (measured: 0.277 < 0.378 per step at alpha = 1,
lambda = -4, eta = 0.005, where eta mu_max ~ 2 and the loss decays through overshoots). For
K = 1, margin >= -lambda_min(D): a second layer larger than the first (lambda < 0) guarantees the rate
on its own. The bound is a floor, not the rate: ``local_rate`` gives the actual asymptotic rate of
GD at given weights, -2 log max_i |1 - eta mu_i| with mu_i the eigenvalues of the linearized
residual map R -> A A^T R V V^T + A U U^T A^T R (the O(R^2) term eta^2 A G_U G_V^T dropped).

Minimum norm. R depends on U only through Pi U (A U = A Pi U), and grad_U = A^T R V lies in the row
space of A, so (Pi U, V) evolve on their own and the null-space part (I - Pi) U = (I - Pi) U0 never
changes. With the range scheme it is 0: P stays in the row space and a run that drives the loss to 0
ends at P = A^+ Y exactly. With the random scheme the loss curve is the range scheme's (same seed)
and P_T = P_T(range) + (I - Pi) U0 V_T^T. For Gaussian U0, (I - Pi) U0 is independent of (Pi U0, V0),
hence of V_T, and E ||(I - Pi) U0 V_T^T||_F^2 = (e^lambda alpha^2 / h) (N - M) ||V_T||_F^2. At
convergence (lambda = 0) error_min_norm ~ alpha sqrt((N - M) / h) ||V_T||_F / ||A^+ Y||_F: like h^{-1/2}
and proportional to alpha (||V_T|| is about ||A^+ Y||^{1/2} for small alpha).

Fitted rate (``fit_rate``): the loss curve's points with RATE_LOSS_FLOOR L_0 < L <= RATE_LOSS_START
L_0 (past the initial transient, above rounding) and in the later half of those points' iterations;
rate = minus the least-squares slope of log L against the iteration (loss multiplied by e^{-rate}
per step). NaN with fewer than RATE_MIN_POINTS points and for diverged runs.

The engine (``run_batch``) stacks runs of one width as (B, N, h) and (B, K, h) arrays (B up to about
CHUNK_BYTES of weights, so that the state stays in cache); the two products with A per step are
single GEMMs over all rows ((B K, N) @ (N, M) and (B K, M) @ (M, N)), the others np.matmul over the
stack. Rows may differ in eta, max_iters, tol and checkpoints and leave the batch when they stop.
Every operation is row-independent, so a run's numbers do not depend on its batch (up to last-bit
BLAS blocking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

SCHEMES = ("random", "range")
#: Random-stream keys under an instance's seed: (0,) draws A, these the targets and the weights.
_TARGETS_STREAM = (0, 1)
_WEIGHTS_STREAM = (2,)


# --- instances and references --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TwoLayerInstance:
    """A: (M, N) with i.i.d. N(0, 1/M) entries, X_star: (N, K), Y = A X_star: (M, K)."""

    A: np.ndarray
    Y: np.ndarray
    X_star: np.ndarray


def generate_instance(
    M: int, N: int, outputs: int, seed: int, sparsity: int | None = None
) -> TwoLayerInstance:
    """A seeded instance. A is bitwise the A of ``problems.generate_instance(M, N, ., ., seed)``;
    X* is dense N(0, 1), or with ``sparsity`` s nonzeros N(0, 1) per column on a uniformly random
    support. Same arguments -> bitwise the same arrays."""
    if not (1 <= M < N) or outputs < 1:
        raise ValueError(f"need 1 <= M < N and outputs >= 1, got M={M}, N={N}, outputs={outputs}")
    if sparsity is not None and not 1 <= sparsity <= N:
        raise ValueError(f"sparsity must be in [1, N={N}], got {sparsity}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    A = rng.standard_normal((M, N)) / np.sqrt(M)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=_TARGETS_STREAM))
    if sparsity is None:
        X_star = rng.standard_normal((N, outputs))
    else:
        X_star = np.zeros((N, outputs))
        for j in range(outputs):
            support = rng.choice(N, size=sparsity, replace=False)
            X_star[support, j] = rng.standard_normal(sparsity)
    return TwoLayerInstance(A=A, Y=A @ X_star, X_star=X_star)


def min_norm_solution(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """P* = A^+ Y, the minimum-Frobenius-norm solution of A P = Y. A: (M, N), Y: (M, K) -> (N, K)."""
    return np.linalg.lstsq(A, Y, rcond=None)[0]


def error_min_norm(P: np.ndarray, P_ref: np.ndarray) -> float:
    """||P - P_ref||_F / ||P_ref||_F (dimensionless). P, P_ref: (N, K)."""
    return float(np.linalg.norm(P - P_ref) / np.linalg.norm(P_ref))


def row_space_basis(A: np.ndarray) -> np.ndarray:
    """An orthonormal basis Q (N, r) of the row space of A (M, N), r = rank(A), from an SVD with
    numpy's default rank tolerance; Q Q^T is the projector Pi."""
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    rank = int(np.count_nonzero(s > s.max(initial=0.0) * max(A.shape) * np.finfo(float).eps))
    return Vt[:rank].T.copy()


# --- initialization and imbalance --------------------------------------------------------------


def initial_weights(
    N: int, K: int, width: int, alpha: float, scheme: str, imbalance: float, seed: int,
    A: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(U0 (N, width), V0 (K, width)) of the scheme (see the module docstring). Deterministic in
    (N, K, width, seed): every alpha, imbalance and scheme of a seed rescales (and for ``range``
    projects) the same Gaussian draw. ``range`` needs A (M, N)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; allowed: {SCHEMES}")
    if not (N >= 1 and K >= 1 and width >= 1 and alpha > 0 and np.isfinite(imbalance)):
        raise ValueError(f"invalid N={N}, K={K}, width={width}, alpha={alpha} or "
                         f"imbalance={imbalance}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=_WEIGHTS_STREAM))
    U = rng.standard_normal((N, width))
    V = rng.standard_normal((K, width))
    if scheme == "range":
        if A is None or A.ndim != 2 or A.shape[1] != N:
            raise ValueError(f"init scheme 'range' needs A with N={N} columns")
        Q = row_space_basis(np.asarray(A, dtype=np.float64))
        U = Q @ (Q.T @ U)
    with np.errstate(over="ignore", under="ignore"):
        scale_U = alpha / np.sqrt(width) * np.exp(0.5 * imbalance)
        scale_V = alpha / np.sqrt(width) * np.exp(-0.5 * imbalance)
    if not (np.isfinite(scale_U) and np.isfinite(scale_V) and scale_U > 0 and scale_V > 0):
        raise ValueError(f"alpha={alpha}, imbalance={imbalance}: a layer scale over/underflows")
    U *= scale_U
    V *= scale_V
    return U, V


def imbalance_eigenvalues(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Eigenvalues of D = U^T U - V^T V in ascending order, shape (h,). U: (N, h), V: (K, h).
    O(h (N + K)^2) when h > N + K: D = Z J Z^T with Z = [U^T V^T] = Q T, J = diag(I_N, -I_K), so its
    nonzero eigenvalues are those of T J T^T and the other h - N - K are 0 (a dense eigvalsh of D,
    O(h^3), otherwise)."""
    (N, h), K = U.shape, V.shape[0]
    if h <= N + K:
        return np.linalg.eigvalsh(U.T @ U - V.T @ V)
    T = np.linalg.qr(np.concatenate([U, V]).T, mode="r")  # (N + K, N + K)
    signs = np.concatenate([np.ones(N), -np.ones(K)])
    small = np.linalg.eigvalsh((T * signs) @ T.T)
    return np.sort(np.concatenate([small, np.zeros(h - N - K)]))


class Imbalance(NamedTuple):
    """The imbalance D = U^T U - V^T V of an initialization (units: weight^2, like alpha^2)."""

    lambda_min: float  # smallest eigenvalue of D
    lambda_max: float  # largest eigenvalue of D
    margin: float  # max(0, -d_K) + max(0, d_{h-N+1}): lower bound on lambda_min(VV^T) + lambda_min(UU^T)


def measured_imbalance(U: np.ndarray, V: np.ndarray) -> Imbalance:
    """(lambda_min(D), lambda_max(D), margin) for U (N, h), V (K, h); see the module docstring."""
    (N, h), K = U.shape, V.shape[0]
    d = imbalance_eigenvalues(U, V)
    negative = max(0.0, -float(d[K - 1])) if h >= K else 0.0
    positive = max(0.0, float(d[h - N])) if h >= N else 0.0
    return Imbalance(float(d[0]), float(d[-1]), negative + positive)


def flow_rate_bound(A: np.ndarray, imbalance: Imbalance) -> float:
    """c = 2 sigma_min(A)^2 margin: gradient flow has L(t) <= L(0) e^{-c t} (per unit flow time;
    eta * c per GD step while GD stays flow-like, see the module docstring)."""
    s_min = np.linalg.svd(A, compute_uv=False).min()
    return 2.0 * float(s_min) ** 2 * imbalance.margin


def local_rate(A: np.ndarray, U: np.ndarray, V: np.ndarray, eta: float) -> float:
    """The asymptotic loss rate per GD step at (U, V): -2 log max_i |1 - eta mu_i|, mu_i the
    eigenvalues of R -> A A^T R V V^T + A U U^T A^T R on R^{M x K}, as the (M K, M K) matrix
    kron(V V^T, A A^T) + kron(I_K, A U U^T A^T). Compare with the fitted rate of a converged run."""
    K = V.shape[0]
    AU = A @ U
    op = np.kron(V @ V.T, A @ A.T) + np.kron(np.eye(K), AU @ AU.T)
    mu = np.linalg.eigvalsh(op)
    return float(-2.0 * np.log(np.max(np.abs(1.0 - eta * mu))))


# --- model and update rules ----------------------------------------------------------------------


def product(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """P = U V^T. U: (..., N, h), V: (..., K, h) -> (..., N, K)."""
    return np.matmul(U, np.swapaxes(V, -1, -2))


def forward(
    A_T: np.ndarray, Y_T: np.ndarray, U: np.ndarray, V: np.ndarray,
    out_PT: np.ndarray | None = None, out_RT: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Transposed residuals R^T = V U^T A^T - Y^T (B, K, M) and losses 1/2 ||R||_F^2 (B,) of a stack.
    A_T: (N, M) = A^T, Y_T: (K, M) = Y^T, U: (B, N, h), V: (B, K, h). The product with A is one
    (B K, N) @ (N, M) GEMM. ``out_PT`` (B, K, N) and ``out_RT`` (B, K, M), C-contiguous, are scratch."""
    B, K, N = V.shape[0], V.shape[1], U.shape[1]
    M = A_T.shape[1]
    PT = np.matmul(V, np.swapaxes(U, 1, 2), out=out_PT)  # P^T = V U^T
    RT = np.empty((B, K, M)) if out_RT is None else out_RT
    np.matmul(PT.reshape(B * K, N), A_T, out=RT.reshape(B * K, M))
    RT -= Y_T
    flat = RT.reshape(B, K * M)
    return RT, 0.5 * np.vecdot(flat, flat)


def backward(
    A: np.ndarray, ST: np.ndarray, U: np.ndarray, V: np.ndarray,
    out_CT: np.ndarray | None = None, out_GU: np.ndarray | None = None,
    out_GV: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(C V, C^T U) with C = A^T S: the gradients (A^T R V, R^T A U) when S = R, the GD steps when
    S = eta R. A: (M, N), ST = S^T: (B, K, M) C-contiguous, U: (B, N, h), V: (B, K, h) -> (B, N, h),
    (B, K, h). Scratch ``out_CT`` (B, K, N) C-contiguous; C^T = S^T A is one (B K, M) @ (M, N) GEMM."""
    B, K, M = ST.shape
    N = A.shape[1]
    CT = np.empty((B, K, N)) if out_CT is None else out_CT
    np.matmul(ST.reshape(B * K, M), A, out=CT.reshape(B * K, N))
    if K == 1:  # an outer product per row: broadcasting beats matmul's inner dimension 1 by ~4x
        GU = np.multiply(np.swapaxes(CT, 1, 2), V, out=out_GU)
    else:
        GU = np.matmul(np.swapaxes(CT, 1, 2), V, out=out_GU)
    GV = np.matmul(CT, U, out=out_GV)
    return GU, GV


def loss_and_gradients(
    A: np.ndarray, Y: np.ndarray, U: np.ndarray, V: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """(f, grad_U f, grad_V f) of one network: A (M, N), Y (M, K), U (N, h), V (K, h), through the
    engine's own ``forward`` and ``backward``."""
    A = np.asarray(A, dtype=np.float64)
    RT, loss = forward(np.ascontiguousarray(A.T), np.ascontiguousarray(Y.T), U[None], V[None])
    GU, GV = backward(A, RT, U[None], V[None])
    return float(loss[0]), GU[0], GV[0]


def gd_step(
    U: np.ndarray, V: np.ndarray, GU: np.ndarray, GV: np.ndarray,
    out_U: np.ndarray | None = None, out_V: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(U - GU, V - GV), with GU, GV the steps eta * gradient (computed from the same U, V: the update
    is simultaneous). Any shapes that broadcast; ``out_U`` / ``out_V`` may be U / V."""
    return np.subtract(U, GU, out=out_U), np.subtract(V, GV, out=out_V)
