"""The two-layer family's engine: batched GD on (U, V), runs of one width advancing together
(docs/MODEL.md, "The two-layer family"). The model's functions (forward, backward, the update) are
``pipeline.families.twolayer.model``'s; the stopping rules and checkpoints every family's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from pipeline.families.training import DIVERGENCE_FACTOR, checkpoint_iterations
from pipeline.families.twolayer.model import (
    Imbalance,
    backward,
    forward,
    gd_step,
    measured_imbalance,
)

#: The rate fit uses loss-curve points below this fraction of the initial loss (past the transient).
RATE_LOSS_START = 1e-3
#: ... and above this fraction of it (rounding dominates the loss below about 1e-30 L_0).
RATE_LOSS_FLOOR = 1e-24
#: Fewer usable curve points than this: the rate is NaN.
RATE_MIN_POINTS = 3
#: Runs of one width advance in chunks whose weights (U and V) take about this many bytes: past the
#: CPU caches every step streams the whole state from memory (measured 2-3x slower per run-step for
#: 128 runs of (N, h) = (30, 500) or (100, 100) than in chunks of 2 MiB).
CHUNK_BYTES = 2 << 20


def fit_rate(curve_iter: np.ndarray, curve_loss: np.ndarray) -> float:
    """The linear convergence rate of a loss curve, per step (loss ~ e^{-rate k}); see the module
    docstring. curve_iter: (n,) increasing iterations starting at 0, curve_loss: (n,) losses."""
    k = np.asarray(curve_iter, dtype=np.float64)
    loss = np.asarray(curve_loss, dtype=np.float64)
    loss0 = loss[0] if loss.size else np.nan
    if not (np.isfinite(loss0) and loss0 > 0):
        return float("nan")
    with np.errstate(invalid="ignore"):
        usable = (np.isfinite(loss) & (loss > RATE_LOSS_FLOOR * loss0)
                  & (loss <= RATE_LOSS_START * loss0))
    if np.count_nonzero(usable) < RATE_MIN_POINTS:
        return float("nan")
    usable &= k >= 0.5 * k[usable].max()
    if np.count_nonzero(usable) < RATE_MIN_POINTS:
        return float("nan")
    x, y = k[usable], np.log(loss[usable])
    x_c = x - x.mean()
    return float(-np.dot(x_c, y - y.mean()) / np.dot(x_c, x_c))


# --- the engine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoLayerConfig:
    """The dynamics parameters of one run (the initial weights are passed separately)."""

    width: int  # h >= 1, hidden units
    eta: float  # GD step
    max_iters: int = 10_000
    tol: float = 1e-12  # converged when loss <= tol
    checkpoints: int = 64  # about this many log-spaced loss-curve points

    def __post_init__(self) -> None:
        if int(self.width) != self.width or self.width < 1:
            raise ValueError(f"width must be an integer >= 1, got {self.width!r}")
        if not (self.eta > 0 and self.max_iters >= 1 and self.tol >= 0 and self.checkpoints >= 2):
            raise ValueError(f"invalid eta, max_iters, tol or checkpoints in {self}")


@dataclass
class TwoLayerResult:
    """What one run ends with. Shapes: product (N, K), U_final (N, h), V_final (K, h), curves (n,)."""

    status: str  # "converged" | "diverged" | "max_iters"
    iterations: int  # steps taken
    loss_final: float  # loss after the last step
    product: np.ndarray  # P = U V^T at the end
    curve_iter: np.ndarray  # int64, increasing, starts at 0, ends at `iterations`
    curve_loss: np.ndarray  # float64, loss at curve_iter
    rate: float  # fit_rate of the curve (per step), NaN for diverged runs or too few points
    imbalance: Imbalance  # measured at initialization
    seconds: float  # this run's share (by iterations) of the wall time of its chunk of runs
    U_final: np.ndarray | None = None  # only with run_batch(..., return_weights=True)
    V_final: np.ndarray | None = None


def run_batch(
    A: np.ndarray, Y: np.ndarray, configs: Sequence[TwoLayerConfig],
    U0s: Sequence[np.ndarray], V0s: Sequence[np.ndarray], return_weights: bool = False,
) -> list[TwoLayerResult]:
    """Run every config from its initial weights on the instance (A, Y); results in input order.

    A: (M, N), Y: (M, K), U0s[i]: (N, configs[i].width), V0s[i]: (K, configs[i].width). Runs of one
    width advance together, in chunks of about CHUNK_BYTES of weights; widths and chunks run one
    after the other. Never warns or raises on divergence (it is a status).
    """
    if not len(configs) == len(U0s) == len(V0s):
        raise ValueError(f"{len(configs)} configs, {len(U0s)} U0s and {len(V0s)} V0s")
    A = np.ascontiguousarray(A, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if A.ndim != 2 or Y.ndim != 2 or Y.shape[0] != A.shape[0]:
        raise ValueError(f"need A (M, N) and Y (M, K), got A {A.shape} and Y {Y.shape}")
    N, K = A.shape[1], Y.shape[1]
    results: list[TwoLayerResult | None] = [None] * len(configs)
    for width in sorted({c.width for c in configs}):
        rows = [i for i, c in enumerate(configs) if c.width == width]
        chunk = max(1, CHUNK_BYTES // (8 * (N + K) * width))
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            group = _WidthGroup(A, Y, [configs[i] for i in part], [U0s[i] for i in part],
                                [V0s[i] for i in part], return_weights)
            for i, result in zip(part, group.run()):
                results[i] = result
    return results  # type: ignore[return-value]


@dataclass
class _Rows:
    """Per-row state of a width group; row j is run idx[j] of the group. Compacted with take()."""

    idx: np.ndarray  # (B,) int, position in the group's config list
    U: np.ndarray  # (B, N, h)
    V: np.ndarray  # (B, K, h)
    eta: np.ndarray  # (B,)
    max_iters: np.ndarray  # (B,) int64
    tol: np.ndarray  # (B,)
    loss_limit: np.ndarray  # (B,) DIVERGENCE_FACTOR * initial loss

    def take(self, keep: np.ndarray) -> _Rows:
        return _Rows(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


class _WidthGroup:
    """Runs of one width on one instance."""

    def __init__(
        self, A: np.ndarray, Y: np.ndarray, configs: Sequence[TwoLayerConfig],
        U0s: Sequence[np.ndarray], V0s: Sequence[np.ndarray], return_weights: bool,
    ) -> None:
        self.A, self.A_T, self.Y_T = A, np.ascontiguousarray(A.T), np.ascontiguousarray(Y.T)
        N, K, h = A.shape[1], Y.shape[1], configs[0].width
        self.configs, self.return_weights = configs, return_weights
        B = len(configs)
        U = np.empty((B, N, h))
        V = np.empty((B, K, h))
        for j, (U0, V0) in enumerate(zip(U0s, V0s)):
            U0, V0 = np.asarray(U0, dtype=np.float64), np.asarray(V0, dtype=np.float64)
            if U0.shape != (N, h) or V0.shape != (K, h):
                raise ValueError(f"width {h}: need U0 ({N}, {h}) and V0 ({K}, {h}), "
                                 f"got {U0.shape} and {V0.shape}")
            U[j], V[j] = U0, V0
        self.imbalance = [measured_imbalance(U[j], V[j]) for j in range(B)]
        self.rows = _Rows(
            idx=np.arange(B), U=U, V=V,
            eta=np.array([c.eta for c in configs], dtype=np.float64),
            max_iters=np.array([c.max_iters for c in configs], dtype=np.int64),
            tol=np.array([c.tol for c in configs], dtype=np.float64),
            loss_limit=np.zeros(B),
        )
        own = [checkpoint_iterations(c.max_iters, c.checkpoints) for c in configs]
        self.curve_its = np.unique(np.concatenate(own))
        self.curve_col = {int(k): j for j, k in enumerate(self.curve_its)}
        self.curve_own = np.zeros((B, len(self.curve_its)), dtype=bool)
        for i, its in enumerate(own):
            self.curve_own[i, np.searchsorted(self.curve_its, its)] = True
        self.curve = np.full((B, len(self.curve_its)), np.nan)
        self.results: list[TwoLayerResult | None] = [None] * B
        self.work = np.zeros(B)
        self._allocate()

    def _allocate(self) -> None:
        """Scratch buffers for the current number of rows."""
        B, (M, N), K = len(self.rows.idx), self.A.shape, self.Y_T.shape[0]
        h = self.rows.U.shape[2]
        self.PT, self.RT, self.CT = np.empty((B, K, N)), np.empty((B, K, M)), np.empty((B, K, N))
        self.GU, self.GV = np.empty((B, N, h)), np.empty((B, K, h))
        self.min_max_iters = int(self.rows.max_iters.min()) if B else 0

    def _forward(self) -> np.ndarray:
        r = self.rows
        _, loss = forward(self.A_T, self.Y_T, r.U, r.V, out_PT=self.PT, out_RT=self.RT)
        return loss

    def _step(self) -> None:
        """One GD step of every row from the residuals in self.RT (overwritten by eta R^T)."""
        r = self.rows
        self.RT *= r.eta[:, None, None]
        backward(self.A, self.RT, r.U, r.V, out_CT=self.CT, out_GU=self.GU, out_GV=self.GV)
        gd_step(r.U, r.V, self.GU, self.GV, out_U=r.U, out_V=r.V)

    def run(self) -> list[TwoLayerResult]:
        t_start = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            k = 0
            loss = self._forward()
            self.rows.loss_limit = DIVERGENCE_FACTOR * loss
            self.curve[self.rows.idx, self.curve_col[0]] = loss
            self._finish(k, loss)
            while self.rows.idx.size:
                self._step()
                k += 1
                loss = self._forward()
                if k in self.curve_col:
                    self.curve[self.rows.idx, self.curve_col[k]] = loss
                self._finish(k, loss)
        elapsed = time.perf_counter() - t_start
        total = max(self.work.sum(), 1.0)
        for i, result in enumerate(self.results):
            result.seconds = elapsed * self.work[i] / total
        return self.results  # type: ignore[return-value]

    def _finish(self, k: int, loss: np.ndarray) -> None:
        """Close the runs that stop at iteration k and drop their rows."""
        r = self.rows
        ok = loss <= r.loss_limit  # False for NaN
        converged = ok & (loss <= r.tol)
        done = ~ok | converged
        if k >= self.min_max_iters:
            done |= r.max_iters <= k
        if not done.any():
            return
        for row in np.flatnonzero(done):
            i = int(r.idx[row])
            status = "diverged" if not ok[row] else "converged" if converged[row] else "max_iters"
            own = self.curve_own[i] & (self.curve_its < k)
            curve_iter = np.append(self.curve_its[own], k).astype(np.int64)
            curve_loss = np.append(self.curve[i, own], loss[row])
            U, V = r.U[row], r.V[row]
            self.results[i] = TwoLayerResult(
                status=status,
                iterations=k,
                loss_final=float(loss[row]),
                product=U @ V.T,
                curve_iter=curve_iter,
                curve_loss=curve_loss,
                rate=float("nan") if status == "diverged" else fit_rate(curve_iter, curve_loss),
                imbalance=self.imbalance[i],
                seconds=0.0,
                U_final=U.copy() if self.return_weights else None,
                V_final=V.copy() if self.return_weights else None,
            )
            self.work[i] = k
        keep = ~done
        RT = self.RT[keep]  # the residuals of the remaining rows, for their next step
        self.rows = r.take(keep)
        self._allocate()
        self.RT = RT
