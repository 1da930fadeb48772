"""Batched GD and WN-GD on diagonal linear networks (docs/MODEL.md, "Methods" and "Stopping and status").

The update rules are small pure functions of arrays (``gd_step``, ``wn_tangential_rate``, ``wn_step``);
``run_batch`` is the loop around them. It advances many runs on one problem instance at once: the
runs' weights are the rows of one (B, n) array, so the two products with A per step are
matrix-matrix products, and everything else is row-wise. Rows may differ in method, depth, sign,
alpha, eta, eta~, schedule, max_iters and tol; rows leave the batch when they stop. Every operation
is row-independent, so a run's numbers do not depend on what else is in its batch (up to the
last-bit rounding of BLAS kernels, which may block differently for different batch sizes).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline import models

METHODS = ("gd", "wn")
SCHEDULES = ("constant", "normalized")
#: A run whose loss exceeds this multiple of its initial loss has diverged.
DIVERGENCE_FACTOR = 1e6
#: Every FLUSH_EVERY steps, entries below FLUSH_POWER**(1/L) in magnitude are set to 0: entries of
#: w for GD, of the unit direction d for WN. Entries that the dynamics drive to zero decay
#: geometrically; left alone they reach subnormal floats, where arithmetic is 10-100x slower. At
#: the flush their contribution to x~ is below 1e-200 (times r^L for WN), far below any loss
#: tolerance, so the results are unchanged for every practical purpose (tested against a plain
#: loop that never flushes).
FLUSH_EVERY = 8
FLUSH_POWER = 1e-200


@dataclass(frozen=True)
class RunConfig:
    """The dynamics parameters of one run (the initial weights are passed separately)."""

    method: str  # "gd" | "wn"
    signed: bool  # False: x~ = w^L ; True: x~ = u^L - v^L
    depth: int  # L >= 2
    eta: float  # GD step; WN base step
    eta_ratio: float = 1.0  # WN only: eta~ = eta_r / eta_u
    schedule: str = "constant"  # WN only: "constant" | "normalized"
    max_iters: int = 10_000
    tol: float = 1e-12
    checkpoints: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if int(self.depth) != self.depth or self.depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {self.depth!r}")
        if not (self.eta > 0 and self.eta_ratio > 0 and self.max_iters >= 1 and self.tol >= 0):
            raise ValueError(f"invalid step, ratio, max_iters or tol in {self}")


@dataclass
class RunResult:
    """What one run ends with. Shapes: x_final (N,), w_final (n,), curves (K,)."""

    status: str
    iterations: int
    loss_final: float
    x_final: np.ndarray
    w_final: np.ndarray
    r0: float | None  # WN only: ||w_0||
    r_final: float | None  # WN only: r_T
    curve_iter: np.ndarray  # int64, increasing, starts at 0, ends at `iterations`
    curve_loss: np.ndarray  # float64, loss at curve_iter
    seconds: float  # this run's share (by iterations) of the wall time of its batch's sign group


# --- update rules -------------------------------------------------------------------------------


def gd_step(w: np.ndarray, p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """w_{k+1} = w_k - p, with p = eta grad f(w_k) the step. w, p: (..., n); ``out`` may be w."""
    return np.subtract(w, p, out=out)


def wn_tangential_rate(
    eta: np.ndarray, r0: np.ndarray, r: np.ndarray, normalized: np.ndarray
) -> np.ndarray:
    """eta_u per run: eta / r_ref^2 with r_ref = r_0 (schedule constant) or r_k (normalized).
    eta_r = eta~ eta_u. All arguments have shape (B,)."""
    r_ref = np.where(normalized, r, r0)
    return eta / (r_ref * r_ref)


def wn_step(
    r: np.ndarray, d: np.ndarray, p: np.ndarray, eta_ratio: np.ndarray,
    out_d: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One WN-GD step in polar coordinates w = r d, given p = eta_u r_k g, g = grad f(r_k d_k):

        r_{k+1} = r_k - eta_r <d_k, g>                          = r_k - eta~ <d_k, p> / r_k
        d_{k+1} = normalize(d_k - eta_u r_k (g - <d_k, g> d_k)) = normalize((1 + <d_k, p>) d_k - p)

    (the right-hand forms use eta_r = eta~ eta_u). r, eta_ratio: (B,); d, p: (B, n), rows of d of
    unit norm. ``out_d`` (may be ``d``) receives d_{k+1}.
    """
    radial = np.vecdot(d, p)
    r_next = r - eta_ratio * radial / r
    d_next = np.multiply(d, (1.0 + radial)[:, None], out=out_d)
    d_next -= p
    d_next /= np.sqrt(np.vecdot(d_next, d_next))[:, None]
    return r_next, d_next


# --- the loop -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def checkpoint_iterations(max_iters: int, checkpoints: int) -> np.ndarray:
    """About ``checkpoints`` log-spaced iterations in [0, max_iters], always with 0 and max_iters.
    Cached: a read-only array."""
    grid = np.logspace(0.0, np.log10(max_iters), max(checkpoints - 1, 1))
    its = np.unique(np.rint(grid).astype(np.int64))
    out = np.unique(np.concatenate(([0, max_iters], its)))
    out.flags.writeable = False
    return out


def run_batch(
    A: np.ndarray, b: np.ndarray, configs: Sequence[RunConfig], w0: Sequence[np.ndarray]
) -> list[RunResult]:
    """Run every config from its initial weights on the instance (A, b); results in input order.

    A: (M, N), b: (M,), w0[i]: (n_i,) with n_i = N (nonneg) or 2N (signed), all entries > 0 is not
    required but WN needs ||w0[i]|| > 0.
    """
    if len(configs) != len(w0):
        raise ValueError(f"{len(configs)} configs but {len(w0)} initial weights")
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    results: list[RunResult | None] = [None] * len(configs)
    for signed in (False, True):
        rows = [i for i, c in enumerate(configs) if c.signed == signed]
        if rows:
            group = _Group(A, b, [configs[i] for i in rows], [w0[i] for i in rows], signed)
            for i, result in zip(rows, group.run()):
                results[i] = result
    return results  # type: ignore[return-value]


class _Group:
    """Runs of one sign on one instance. Rows are sorted by (method, depth) so that each such block
    is a contiguous slice of the state arrays; rows are dropped (compacted) as runs stop."""

    # per-row arrays that are compacted together when runs stop
    _ROW_STATE = ("idx", "code", "is_wn", "W", "D", "r", "r0", "eta", "eta_ratio", "normalized",
                  "max_iters", "tol", "loss_limit", "R")

    def __init__(self, A, b, configs, w0, signed):
        self.A, self.AT, self.b, self.signed = A, np.ascontiguousarray(A.T), b, signed
        self.configs = configs
        n = models.n_trainable(A.shape[1], signed)
        self.block_keys = sorted({(c.method, c.depth) for c in configs})
        code = np.array([self.block_keys.index((c.method, c.depth)) for c in configs])
        order = np.argsort(code, kind="stable")
        cfg = [configs[i] for i in order]
        self.idx = order  # original position of each current row
        self.code = code[order]
        self.is_wn = np.array([c.method == "wn" for c in cfg], dtype=bool)
        self.W = np.empty((len(cfg), n))
        for row, i in enumerate(order):
            w = np.asarray(w0[i], dtype=np.float64)
            if w.shape != (n,):
                raise ValueError(f"run {i}: initial weights must have shape ({n},), got {w.shape}")
            self.W[row] = w
        self.r = np.sqrt(np.vecdot(self.W, self.W))
        self.r0 = self.r.copy()
        if np.any(self.is_wn & ~(self.r > 0)):
            raise ValueError("WN-GD needs initial weights with a positive norm")
        self.D = self.W / np.where(self.is_wn, self.r, 1.0)[:, None]
        self.eta = np.array([c.eta for c in cfg], dtype=np.float64)
        self.eta_ratio = np.array([c.eta_ratio for c in cfg], dtype=np.float64)
        self.normalized = np.array([c.schedule == "normalized" for c in cfg], dtype=bool)
        self.max_iters = np.array([c.max_iters for c in cfg], dtype=np.int64)
        self.tol = np.array([c.tol for c in cfg], dtype=np.float64)
        # loss curves: one column per iteration in the union of all runs' checkpoint sets
        own = [checkpoint_iterations(c.max_iters, c.checkpoints) for c in configs]
        self.curve_its = np.unique(np.concatenate(own))
        self.curve_col = {int(k): j for j, k in enumerate(self.curve_its)}
        self.curve_own = np.zeros((len(configs), len(self.curve_its)), dtype=bool)
        for i, its in enumerate(own):
            self.curve_own[i, np.searchsorted(self.curve_its, its)] = True
        self.curve = np.full((len(configs), len(self.curve_its)), np.nan)
        self.results: list[RunResult | None] = [None] * len(configs)
        self.work = np.zeros(len(configs))  # iterations per run, to split the wall time
        self._allocate()

    def _allocate(self) -> None:
        """Scratch buffers and block slices for the current rows."""
        cuts = np.flatnonzero(np.diff(self.code)) + 1
        bounds = [0, *cuts.tolist(), len(self.code)] if len(self.code) else [0]
        self.blocks = [
            (*self.block_keys[self.code[start]], slice(start, stop))
            for start, stop in zip(bounds[:-1], bounds[1:])
        ]  # (method, depth, rows) with rows a slice
        self.min_max_iters = int(self.max_iters.min()) if len(self.code) else 0
        # "gd" sorts before "wn": the WN runs are the last rows
        self.wn_rows = slice(int(np.count_nonzero(~self.is_wn)), len(self.code))
        B, (M, N) = self.W.shape[0], self.A.shape
        self.X = np.empty((B, N))  # (re)computed by _forward before any use
        self.C = np.empty((B, N))
        self.G = np.empty_like(self.W)
        if not hasattr(self, "R") or self.R.shape[0] != B:
            self.R = np.empty((B, M))

    def _forward(self) -> np.ndarray:
        """Residuals R = A x~ - b into self.R (rows), returns the losses 1/2 ||R||^2."""
        for _, depth, rows in self.blocks:
            models.product(self.W[rows], depth, self.signed, out=self.X[rows])
        np.matmul(self.X, self.AT, out=self.R)
        self.R -= self.b
        return 0.5 * np.vecdot(self.R, self.R)

    def _update(self) -> None:
        """One step of every run, from the residuals in self.R.

        The per-run step size is folded into the residual rows before the backward product, so
        that G holds the step itself: eta grad f (GD) or eta_u r_k grad f (WN)."""
        wn = self.wn_rows
        scale = self.eta.copy()
        scale[wn] = wn_tangential_rate(self.eta[wn], self.r0[wn], self.r[wn],
                                       self.normalized[wn]) * self.r[wn]
        self.R *= scale[:, None]
        np.matmul(self.R, self.A, out=self.C)
        for method, depth, rows in self.blocks:
            W, G = self.W[rows], self.G[rows]
            models.gradient(W, self.C[rows], depth, self.signed, out=G)
            if method == "gd":
                gd_step(W, G, out=W)
                continue
            r_next, d_next = wn_step(self.r[rows], self.D[rows], G, self.eta_ratio[rows],
                                     out_d=self.D[rows])
            self.r[rows] = r_next
            np.multiply(d_next, r_next[:, None], out=W)

    def _flush_tiny(self) -> None:
        """Zero the entries that would otherwise become subnormal (see FLUSH_POWER)."""
        for method, depth, rows in self.blocks:
            state = self.D[rows] if method == "wn" else self.W[rows]
            np.putmask(state, np.abs(state) < FLUSH_POWER ** (1.0 / depth), 0.0)

    def run(self) -> list[RunResult]:
        t_start = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            k = 0
            loss = self._forward()
            self.loss_limit = DIVERGENCE_FACTOR * loss
            self._record(k, loss)
            self._finish(k, loss)
            while self.idx.size:
                self._update()
                k += 1
                if k % FLUSH_EVERY == 0:
                    self._flush_tiny()
                loss = self._forward()
                if k in self.curve_col:
                    self._record(k, loss)
                self._finish(k, loss)
        elapsed = time.perf_counter() - t_start
        total = max(self.work.sum(), 1.0)
        for i, result in enumerate(self.results):
            result.seconds = elapsed * self.work[i] / total
        return self.results  # type: ignore[return-value]

    def _record(self, k: int, loss: np.ndarray) -> None:
        self.curve[self.idx, self.curve_col[k]] = loss

    def _finish(self, k: int, loss: np.ndarray) -> None:
        """Close the runs that stop at iteration k and drop their rows."""
        # NaN compares False, so `ok` is also False for non-finite losses. GD rows keep r = r0 > 0;
        # a WN row whose r leaves (0, inf) has broken its polar coordinates: diverged too.
        ok = (loss <= self.loss_limit) & (self.r > 0)
        done = ~ok | (loss <= self.tol)
        if k >= self.min_max_iters:
            done |= self.max_iters <= k
        if not done.any():
            return
        diverged = ~ok
        converged = ok & (loss <= self.tol)
        for row in np.flatnonzero(done):
            i = int(self.idx[row])
            status = "diverged" if diverged[row] else "converged" if converged[row] else "max_iters"
            own = self.curve_own[i] & (self.curve_its < k)
            wn = bool(self.is_wn[row])
            self.results[i] = RunResult(
                status=status,
                iterations=k,
                loss_final=float(loss[row]),
                x_final=self.X[row].copy(),
                w_final=self.W[row].copy(),
                r0=float(self.r0[row]) if wn else None,
                r_final=float(self.r[row]) if wn else None,
                curve_iter=np.append(self.curve_its[own], k).astype(np.int64),
                curve_loss=np.append(self.curve[i, own], loss[row]),
                seconds=0.0,
            )
            self.work[i] = k
        keep = ~done
        for name in self._ROW_STATE:
            setattr(self, name, getattr(self, name)[keep])
        self._allocate()
