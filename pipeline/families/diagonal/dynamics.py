"""Batched GD and WN-GD on diagonal linear networks (docs/MODEL.md, "Methods" and "Stopping and status").

The update rules are small pure functions of arrays (``gd_step``, ``wn_tangential_rate``,
``wn_step``, ``wn_scaled_step``); ``run_stack`` is the loop that applies them to the runs of many
problem instances at once:

- Layout. Instances that share (M, N) and the runs' sign form a *stack*: A as a (K, M, N) array
  (and its transpose), the runs' state as a (K, B, n) grid (instance, row slot, entries),
  instance k's runs in the slots ``state[k]``, padded with idle rows up to B. A step is one
  compiled call over the whole stack, ``kernels.step``, which takes the instances one after the
  other (both products with A, residuals, stopping tests, the update); no Python runs per
  instance or per run inside a step.
- Mixed rows. Rows may differ in method, depth, alpha, eta, eta~, schedule, max_iters, tol and
  init. GD and WN-GD rows take the same vector operations: a WN row keeps its direction
  unnormalized (``wn_scaled_step``), so its direction update is GD's update ``v - p`` and
  everything specific to WN-GD is a per-row scalar.
- Stopping. A run is closed (result recorded) at the iteration it stops and its row turns idle,
  so it is never advanced. When dropping the idle rows would shrink the grid by a tenth or more
  (``REPACK_FRACTION``), the stack is re-packed: instances without live runs leave, each keeps
  as many slots as the one with the most live runs needs.
- Batch independence. Every row goes through the same instructions whatever shares its stack
  (``kernels``, "Batch independence"), so a run's numbers are the same to the last bit in a
  stack of 1 or 100 instances (tests/test_engine.py checks it).
- Stochastic steps. A run with a mini-batch (``RunConfig.batch``: SGD) or label noise
  (``label_noise``) draws them from its own stream, ``np.random.SeedSequence(seed)`` with
  ``seed`` from its identity: spawn key (0,) gives a permutation of A's M rows per epoch
  (``kernels.step`` takes its batches in order), (1,) the label noise; both are drawn about
  DRAW_STEPS steps ahead. Nothing else enters them, so a run's sequence is the same alone or in
  any stack, serial or on Ray.
- Size. A stack's matrices are kept well inside the shared cache (``STACK_BYTES``,
  ``stack_bytes``): ``run_stack`` cuts a larger group into several stacks run one after the
  other. The task runner bounds the memory of one call instead (``CALL_BYTES``, with
  ``split_stacks``), generating one call's instances at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from pipeline.families.diagonal import kernels, models
from pipeline.families.training import DIVERGENCE_FACTOR, checkpoint_iterations

METHODS = ("gd", "wn")
SCHEDULES = ("constant", "normalized")
#: Every FLUSH_EVERY steps, entries below FLUSH_POWER**(1/L) in magnitude are set to 0: entries of
#: w for GD, of the unit direction d for WN. Entries that the dynamics drive to zero decay
#: geometrically; left alone they reach subnormal floats, where arithmetic is 10-100x slower. At
#: the flush their contribution to x~ is below 1e-200 (times r^L for WN), far below any loss
#: tolerance, so the results are unchanged for every practical purpose (tested against a plain
#: loop that never flushes).
FLUSH_EVERY = 8
FLUSH_POWER = 1e-200
#: Each instance's rows are padded to a multiple of this many (``kernels.ROW_BLOCK``).
ROW_ALIGN = kernels.ROW_BLOCK
#: Re-pack a stack when dropping its idle rows shrinks the (K, B) grid to at most this fraction.
#: A re-pack costs one copy of the state; idle rows cost their share of every step until then.
#: Measured on a robustness.yaml instance (100 runs of up to 100,000 steps stopping at scattered
#: iterations, one core, numpy engine): 0.5 took 19.2 s, 0.75 16.4 s, 0.9 15.9 s, 1.0 15.7 s.
REPACK_FRACTION = 0.9
#: Size of one stack in bytes (``stack_bytes``). A step reads every instance's A and A^T once
#: from the shared cache (each instance's products run while its rows are in the core's own
#: caches); measured on one core (AMD EPYC, 512 KiB L2, 32 MiB shared L3), at (M, N) =
#: (100, 400) a stack of 23 instances (15 MiB) took 14.1 us per run-step, 12 instances (8 MiB)
#: 7.7 us. A stack of this size holds ~60 instances at (40, 100), enough to make the fixed cost
#: of a step (one call, ~10 us) small per run.
STACK_BYTES = 8 * 2**20
#: Memory bound of the instances of one engine call in the task runner (``split_stacks``).
CALL_BYTES = 256 * 2**20
#: float64 scalars per row of a stack (r, nu, eta, ...), besides its vector v.
_ROW_SCALARS = 16
#: A stochastic run's draws are made for about this many steps at a time (at most DRAW_BYTES for a
#: stack's runs): label noise as a block of normals, mini-batches as the permutations of several
#: epochs (``Generator.permuted`` along rows, about 7x cheaper per epoch than ``permutation``).
#: Both fill from the run's stream in order, so the block sizes do not change a single value:
#: row i of ``permuted`` is the i-th successive ``permutation``, a block of normals the next
#: normals of the stream (tests/test_stochastic.py checks runs alone against stacks).
DRAW_STEPS = 256
DRAW_BYTES = 4 * 2**20


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
    batch: int | None = None  # rows of A per step (SGD); None: all M (full batch)
    label_noise: float = 0.0  # delta: labels b + delta xi_t at every step
    seed: int | None = None  # the run's stream (mini-batches, label noise): from its identity

    @property
    def stochastic(self) -> bool:
        return self.batch is not None or self.label_noise > 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if int(self.depth) != self.depth or self.depth < 2:
            raise ValueError(f"depth must be an integer >= 2, got {self.depth!r}")
        if not (self.eta > 0 and self.eta_ratio > 0 and self.max_iters >= 1 and self.tol >= 0):
            raise ValueError(f"invalid step, ratio, max_iters or tol in {self}")
        if self.batch is not None and not self.batch >= 1:
            raise ValueError(f"batch must be an integer >= 1 or None, got {self.batch!r}")
        if not self.label_noise >= 0:
            raise ValueError(f"label_noise must be >= 0, got {self.label_noise!r}")
        if self.stochastic and self.seed is None:
            raise ValueError("a run with a mini-batch or label noise needs its stream's seed")


@dataclass
class RunResult:
    """What one run ends with. Shapes: x_final (N,), w_final (n,), curves (C,)."""

    status: str
    iterations: int
    loss_final: float
    x_final: np.ndarray
    w_final: np.ndarray
    r0: float | None  # WN only: ||w_0||
    r_final: float | None  # WN only: r_T
    curve_iter: np.ndarray  # int64, increasing, starts at 0, ends at `iterations`
    curve_loss: np.ndarray  # float64, loss at curve_iter
    seconds: float  # this run's share (by iterations) of the wall time of its stack
    curve_error_truth: np.ndarray | None = None  # ||x~ - x*|| at curve_iter (x* known)
    residual_sum: np.ndarray | None = None  # (M,) GD: the sum of the scaled residuals
    #                                          its steps used (``effective.log_shrink``)


# --- update rules -------------------------------------------------------------------------------


def gd_step(w: np.ndarray, p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """w_{k+1} = w_k - p, with p = eta grad f(w_k) the step. w, p: (..., n); ``out`` may be w."""
    return np.subtract(w, p, out=out)


def wn_tangential_rate(
    eta: np.ndarray, r0: np.ndarray, r: np.ndarray, normalized: np.ndarray
) -> np.ndarray:
    """eta_u per run: eta / r_ref^2 with r_ref = r_0 (schedule constant) or r_k (normalized).
    eta_r = eta~ eta_u. All arguments have the same shape (one entry per run)."""
    r_ref = np.where(normalized, r, r0)
    return eta / (r_ref * r_ref)


def wn_step(
    r: np.ndarray, d: np.ndarray, p: np.ndarray, eta_ratio: np.ndarray,
    out_d: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One WN-GD step in polar coordinates w = r d, given p = eta_u r_k g, g = grad f(r_k d_k):

        r_{k+1} = r_k - eta_r <d_k, g>                          = r_k - eta~ <d_k, p> / r_k
        d_{k+1} = normalize(d_k - eta_u r_k (g - <d_k, g> d_k)) = normalize((1 + <d_k, p>) d_k - p)

    (the right-hand forms use eta_r = eta~ eta_u). r, eta_ratio: (...,); d, p: (..., n), rows of d
    of unit norm. ``out_d`` (may be ``d``) receives d_{k+1}. The engine takes the same step in the
    form of ``wn_scaled_step``.
    """
    radial = np.vecdot(d, p)
    r_next = r - eta_ratio * radial / r
    d_next = np.multiply(d, (1.0 + radial)[..., None], out=out_d)
    d_next -= p
    d_next /= np.sqrt(np.vecdot(d_next, d_next))[..., None]
    return r_next, d_next


def wn_scaled_step(
    r: np.ndarray, nu: np.ndarray, v: np.ndarray, p_scaled: np.ndarray, radial: np.ndarray,
    eta_ratio: np.ndarray, out_v: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``wn_step`` with the direction kept unnormalized: d_k = v_k / nu_k (nu_k may be negative).

    Given radial = <d_k, p> and the scaled step p_scaled = nu_k p / (1 + radial):

        r_{k+1}  = r_k - eta~ radial / r_k
        v_{k+1}  = v_k - p_scaled
        nu_{k+1} = sign(nu_k (1 + radial)) ||v_{k+1}||

    Then v_{k+1} / nu_{k+1} = normalize((1 + radial) d_k - p) = wn_step's d_{k+1} (multiply the
    latter's argument by nu_k / (1 + radial)). So the direction's update is GD's update of v, and
    the normalization is one norm per step instead of two row scalings. r, nu, radial, eta_ratio:
    (...,); v, p_scaled: (..., n); ``out_v`` may be v.
    """
    r_next = r - eta_ratio * radial / r
    v_next = gd_step(v, p_scaled, out=out_v)
    nu_next = np.copysign(np.sqrt(np.vecdot(v_next, v_next)), nu * (1.0 + radial))
    return r_next, nu_next, v_next


# --- the loop -----------------------------------------------------------------------------------


def stack_bytes(n_instances: int, n_rows: int, M: int, N: int, signed: bool) -> int:
    """Memory of one stack in bytes: the stacked A (K, M, N) and its transpose, plus the row
    arrays of ``n_rows`` rows (padding included: v, the residual sum, scalars), float64. A
    stochastic run's draws come on top, at most DRAW_BYTES for each kind."""
    n = models.n_trainable(N, signed)
    return 8 * (2 * n_instances * M * N + n_rows * (n + M + _ROW_SCALARS))


def padded_rows(n_runs: int) -> int:
    """Rows of an instance's block in a stack holding ``n_runs`` of its runs (>= ROW_ALIGN)."""
    return max(ROW_ALIGN, -(-n_runs // ROW_ALIGN) * ROW_ALIGN)


def split_stacks(runs_per_instance: Sequence[int], M: int, N: int, signed: bool,
                 budget: int = STACK_BYTES) -> list[slice]:
    """Cut consecutive instances (of one shape and sign) into groups of at most ``budget`` bytes
    (``stack_bytes``, every instance's rows padded to the most any of them has); a single
    instance over the budget is a group of its own. Returns slices into ``runs_per_instance``."""
    out: list[slice] = []
    start, widest = 0, 0
    for i, n_runs in enumerate(runs_per_instance):
        wider = max(widest, padded_rows(n_runs))
        if i > start and stack_bytes(i + 1 - start, (i + 1 - start) * wider, M, N, signed) > budget:
            out.append(slice(start, i))
            start, wider = i, padded_rows(n_runs)
        widest = wider
    if len(runs_per_instance) > start:
        out.append(slice(start, len(runs_per_instance)))
    return out


def run_batch(
    A: np.ndarray, b: np.ndarray, configs: Sequence[RunConfig], w0: Sequence[np.ndarray],
    x_star: np.ndarray | None = None,
) -> list[RunResult]:
    """Run every config from its initial weights on the instance (A, b); results in input order.

    A: (M, N), b: (M,), w0[i]: (n_i,) with n_i = N (nonneg) or 2N (signed); WN needs
    ||w0[i]|| > 0; x_star: (N,) or None. Same as ``run_stack`` with one instance.
    """
    return run_stack([(A, b)], [0] * len(configs), configs, w0, truths=[x_star])


def run_stack(
    problems: Sequence[tuple[np.ndarray, np.ndarray]], instance_of_run: Sequence[int],
    configs: Sequence[RunConfig], w0: Sequence[np.ndarray], budget: int = STACK_BYTES,
    truths: Sequence[np.ndarray | None] | None = None,
) -> list[RunResult]:
    """Run every config from its initial weights on its instance; results in input order.

    problems[k] = (A_k, b_k) with A_k: (M_k, N_k), b_k: (M_k,); truths[k]: instance k's x*
    (N_k,), or None (then no ``curve_error_truth``; ``truths`` None: none known). Run i uses instance
    ``instance_of_run[i]``, ``configs[i]`` and w0[i]: (n_i,) with n_i = N (nonneg) or 2N (signed).
    Instances of one shape whose runs share a sign are stacked, at most ``budget`` bytes per
    stack (``split_stacks``; a run's numbers do not depend on how its instances are stacked); an
    instance may have runs of both signs.
    """
    if not len(configs) == len(w0) == len(instance_of_run):
        raise ValueError(f"{len(configs)} configs, {len(w0)} initial weights and "
                         f"{len(instance_of_run)} instance indices: they must match")
    truths = [None] * len(problems) if truths is None else list(truths)
    if len(truths) != len(problems):
        raise ValueError(f"{len(problems)} instances but {len(truths)} ground truths")
    arrays = []
    for A, b in problems:
        A = np.ascontiguousarray(A, dtype=np.float64)
        b = np.ascontiguousarray(b, dtype=np.float64)
        if A.ndim != 2 or b.shape != (A.shape[0],):
            raise ValueError(f"an instance needs A (M, N) and b (M,), got {A.shape} and {b.shape}")
        arrays.append((A, b))
    groups: dict[tuple[int, int, bool], dict[int, list[int]]] = {}
    for i, (k, cfg) in enumerate(zip(instance_of_run, configs)):
        if not 0 <= k < len(arrays):
            raise ValueError(f"run {i}: instance index {k} out of range for {len(arrays)} instances")
        M, N = arrays[k][0].shape
        if cfg.batch is not None and cfg.batch > M:
            raise ValueError(f"run {i}: batch {cfg.batch} exceeds the instance's M = {M}")
        groups.setdefault((M, N, cfg.signed), {}).setdefault(int(k), []).append(i)
    results: list[RunResult | None] = [None] * len(configs)
    for (M, N, signed), by_instance in groups.items():
        instances = list(by_instance)
        for part in split_stacks([len(by_instance[k]) for k in instances], M, N, signed, budget):
            chosen = instances[part]
            stack = _Stack([arrays[k] for k in chosen], [by_instance[k] for k in chosen],
                           configs, w0, signed, [truths[k] for k in chosen])
            for i, result in stack.run().items():
                results[i] = result
    return results  # type: ignore[return-value]


@dataclass
class _Rows:
    """The per-run state of a stack: every field an array whose first two axes are the (K, B)
    grid (instance, row slot). A GD row holds its weights in v (nu = r = 1); a WN row holds
    w = r d with d = v / nu (``wn_scaled_step``). Padding and stopped runs are idle rows: ``live``
    False and v = 0; ``kernels.step`` skips them."""

    run: np.ndarray  # int64: the run's position in the caller's lists; -1 for padding
    live: np.ndarray  # bool: the run has not stopped
    v: np.ndarray  # (K, B, n): GD: w_k; WN: the unnormalized direction
    nu: np.ndarray  # WN: d_k = v / nu; others 1
    r: np.ndarray  # WN: r_k; others 1
    r0: np.ndarray  # WN: r_0; others 1
    polar: np.ndarray  # bool: a WN row
    depth: np.ndarray  # int64: L (idle rows: 2)
    eta: np.ndarray  # the step eta (GD) or base step (WN)
    eta_ratio: np.ndarray  # WN: eta~; others 1
    normalized: np.ndarray  # bool: WN with the normalized schedule
    max_iters: np.ndarray  # int64
    tol: np.ndarray
    loss_limit: np.ndarray  # DIVERGENCE_FACTOR * initial loss (inf until evaluated)
    flush_below: np.ndarray  # FLUSH_POWER ** (1 / L)
    batch: np.ndarray  # int64: rows of A per step (M: full batch)
    order: np.ndarray  # (K, B, P M) int64: P epochs' permutations of A's rows ((K, B, 0): none)
    xi_row: np.ndarray  # int64: the run's row of the label-noise block, -1: no label noise
    accumulate: np.ndarray  # bool: sum the scaled residuals (GD rows)
    rsum: np.ndarray  # (K, B, M): that sum ((K, B, 0) when no row accumulates)

    def take(self, index) -> "_Rows":
        """The rows at ``index`` (a numpy index of the (K, B) grid) as a new state."""
        return _Rows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class _Stack:
    """The runs of K instances of one shape (M, N) and one sign, advanced together, one
    ``kernels.step`` call per step."""

    def __init__(self, arrays, runs_by_instance, configs, w0, signed, truths):
        self.signed = signed
        self.A = np.stack([A for A, _ in arrays])  # (K, M, N)
        self.AT = np.ascontiguousarray(self.A.transpose(0, 2, 1))  # (K, N, M)
        self.b = np.stack([b for _, b in arrays])  # (K, M)
        K, M, N = self.A.shape
        n = models.n_trainable(N, signed)
        B = padded_rows(max(len(runs) for runs in runs_by_instance))
        run = np.full((K, B), -1, dtype=np.int64)
        for k, runs in enumerate(runs_by_instance):
            run[k, :len(runs)] = runs
        real = run >= 0
        cfg = {int(i): configs[i] for i in run[real]}

        def per_row(value, fill, dtype):
            out = np.full((K, B), fill, dtype=dtype)
            out[real] = [value(cfg[int(i)]) for i in run[real]]
            return out

        v = np.zeros((K, B, n))
        for k, j in zip(*np.nonzero(real)):
            w = np.asarray(w0[run[k, j]], dtype=np.float64)
            if w.shape != (n,):
                raise ValueError(f"run {run[k, j]}: initial weights must have shape ({n},), "
                                 f"got {w.shape}")
            v[k, j] = w
        polar = per_row(lambda c: c.method == "wn", False, bool)
        r0 = np.where(polar, np.sqrt(np.vecdot(v, v)), 1.0)
        if np.any(polar & ~(r0 > 0)):
            raise ValueError("WN-GD needs initial weights with a positive norm")
        depth = per_row(lambda c: c.depth, 2, np.int64)
        self.rows = _Rows(
            run=run, live=real.copy(), v=v, nu=r0.copy(), r=r0.copy(), r0=r0, polar=polar,
            depth=depth,
            eta=per_row(lambda c: c.eta, 0.0, np.float64),
            eta_ratio=per_row(lambda c: c.eta_ratio, 1.0, np.float64),
            normalized=per_row(lambda c: c.schedule == "normalized", False, bool),
            max_iters=per_row(lambda c: c.max_iters, 1, np.int64),
            tol=per_row(lambda c: c.tol, 0.0, np.float64),
            loss_limit=np.full((K, B), np.inf),
            flush_below=FLUSH_POWER ** (1.0 / depth),
            batch=per_row(lambda c: min(c.batch or M, M), M, np.int64),
            order=np.zeros((K, B, 0), dtype=np.int64),
            xi_row=np.full((K, B), -1, dtype=np.int64),
            accumulate=~polar & real,
            rsum=np.zeros((K, B, M if (~polar & real).any() else 0)),
        )
        self._streams(cfg)
        known = [x is not None for x in truths]
        self.x_star = (None if not any(known) else
                       np.stack([np.full(N, np.nan) if x is None else np.asarray(x, float)
                                 for x in truths]))  # (K, N), NaN rows: unknown
        # loss curves: one column per iteration in the union of all runs' checkpoint sets
        self.runs = sorted(cfg)
        local = {i: j for j, i in enumerate(self.runs)}
        own = [checkpoint_iterations(cfg[i].max_iters, cfg[i].checkpoints) for i in self.runs]
        self.curve_its = np.unique(np.concatenate(own))
        self.curve_col = {int(k): j for j, k in enumerate(self.curve_its)}
        self.curve_own = np.zeros((len(self.runs), len(self.curve_its)), dtype=bool)
        for j, its in enumerate(own):
            self.curve_own[j, np.searchsorted(self.curve_its, its)] = True
        self.curve = np.full((len(self.runs), len(self.curve_its)), np.nan)
        self.curve_truth = np.full((len(self.runs), len(self.curve_its)), np.nan)
        self.local = np.full((K, B), -1, dtype=np.int64)  # row -> index into self.runs
        self.local[real] = [local[int(i)] for i in run[real]]
        self.results: dict[int, RunResult] = {}
        self._scratch()

    def _streams(self, cfg: dict[int, RunConfig]) -> None:
        """The stochastic runs' generators (module docstring, "Stochastic steps"): ``shuffle``
        for the runs with a mini-batch, ``labels`` (generator, delta) for those with label noise,
        whose rows of the block ``xi`` (runs, steps, M) they are given in ``xi_row``."""
        rows = self.rows
        K, B = rows.live.shape
        M = self.A.shape[1]

        def stream(seed, key):
            return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))

        self.shuffle = {i: stream(c.seed, 0) for i, c in cfg.items()
                        if c.batch is not None and c.batch < M}
        self.labels = {i: (stream(c.seed, 1), c.label_noise) for i, c in cfg.items()
                       if c.label_noise > 0}
        #: the epoch lengths (steps) of the mini-batch runs, and how many epochs a draw covers
        self.epochs = sorted({M // cfg[i].batch for i in self.shuffle})
        self.epochs_ahead = 1
        if self.shuffle:
            self.epochs_ahead = max(1, min(-(-DRAW_STEPS // self.epochs[0]),
                                           DRAW_BYTES // (8 * M * K * B)))
            rows.order = np.zeros((K, B, self.epochs_ahead * M), dtype=np.int64)
        self.xi_runs = sorted(self.labels)
        self.xi_steps = max(1, min(DRAW_STEPS, DRAW_BYTES // (8 * M * max(len(self.xi_runs), 1))))
        self.xi = np.zeros((len(self.xi_runs), self.xi_steps, M))
        position = {i: q for q, i in enumerate(self.xi_runs)}
        for kk, j in zip(*np.nonzero(rows.run >= 0)):
            rows.xi_row[kk, j] = position.get(int(rows.run[kk, j]), -1)

    def _draw(self, k: int) -> None:
        """Before step k: the next epochs' permutations for every mini-batch run whose block of
        epochs starts at k, and the next block of label noise when k starts one."""
        rows = self.rows
        ahead = self.epochs_ahead
        if self.shuffle and any(k % (epoch * ahead) == 0 for epoch in self.epochs):
            M = self.A.shape[1]
            due = rows.live & (rows.batch < M)
            due &= k % (np.maximum(M // rows.batch, 1) * ahead) == 0
            rows_of_a = np.tile(np.arange(M), (ahead, 1))
            for kk, j in zip(*np.nonzero(due)):
                generator = self.shuffle[int(rows.run[kk, j])]
                rows.order[kk, j] = generator.permuted(rows_of_a, axis=1).ravel()
        if self.labels and k % self.xi_steps == 0:
            for q, i in enumerate(self.xi_runs):
                if i not in self.results:
                    generator, delta = self.labels[i]
                    self.xi[q] = delta * generator.standard_normal(self.xi[q].shape)

    def _scratch(self) -> None:
        """``kernels.step``'s per-row outputs for the current grid."""
        K, B = self.rows.live.shape
        self.loss = np.zeros((K, B))
        self.stop = np.zeros((K, B), dtype=np.int64)

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[int, RunResult]:
        """Advance every run to its stop; results keyed by the run's position in the caller's
        lists."""
        t_start = time.perf_counter()
        k = 0
        while True:
            rows = self.rows
            if self.shuffle or self.labels:
                self._draw(k)
            if self.x_star is not None and k in self.curve_col:
                self._record_truth(k)
            stopping = kernels.step(
                self.A, self.AT, self.b, rows.v, rows.live, rows.polar, rows.normalized,
                rows.depth, rows.eta, rows.eta_ratio, rows.r, rows.r0, rows.nu, rows.loss_limit,
                rows.tol, rows.max_iters, rows.flush_below, self.signed, k,
                (k + 1) % FLUSH_EVERY == 0, self.loss, self.stop, rows.batch, rows.order,
                self.xi, rows.xi_row, k % self.xi_steps, rows.accumulate, rows.rsum)
            if k == 0:
                rows.loss_limit = np.where(rows.live, DIVERGENCE_FACTOR * self.loss, np.inf)
            if k in self.curve_col:
                self._record(k)
            if stopping:
                self._finish(k)
                if not self.rows.live.any():
                    break
            k += 1
        elapsed = time.perf_counter() - t_start
        total = max(sum(result.iterations for result in self.results.values()), 1)
        for result in self.results.values():
            result.seconds = elapsed * result.iterations / total
        return self.results

    def _record(self, k: int) -> None:
        live = self.rows.live
        self.curve[self.local[live], self.curve_col[k]] = self.loss[live]

    def _row_weights(self, kk: np.ndarray, jj: np.ndarray) -> np.ndarray:
        """The network weights w of rows (kk, jj), (rows, n): v for GD, r d = v r / nu for WN."""
        rows = self.rows
        scale = np.where(rows.polar[kk, jj], rows.r[kk, jj] / rows.nu[kk, jj], 1.0)
        return rows.v[kk, jj] * scale[:, None]

    def _record_truth(self, k: int) -> None:
        """||x~ - x*|| of every live row at iterate k (before step k moves it)."""
        rows = self.rows
        kk, jj = np.nonzero(rows.live)
        w = self._row_weights(kk, jj)
        depth = rows.depth[kk, jj]
        error = np.empty(kk.size)
        for L in np.unique(depth):
            at = depth == L
            x = models.product(w[at], int(L), self.signed)
            error[at] = np.linalg.norm(x - self.x_star[kk[at]], axis=1)
        self.curve_truth[self.local[kk, jj], self.curve_col[k]] = error

    def _finish(self, k: int) -> None:
        """Close the runs that stopped at iteration k (``kernels.step`` left them at it), turn
        their rows idle, and re-pack the stack if that pays (see REPACK_FRACTION)."""
        rows = self.rows
        done = rows.live & (self.stop != kernels.RUNNING)
        stopped = np.nonzero(done)
        for kk, j, w in zip(*stopped, self._row_weights(*stopped)):
            i, local = int(rows.run[kk, j]), int(self.local[kk, j])
            own = self.curve_own[local] & (self.curve_its < k)
            wn = bool(rows.polar[kk, j])
            loss = self.loss[kk, j]
            x_final = models.product(w, int(rows.depth[kk, j]), self.signed)
            x_star = None if self.x_star is None else self.x_star[kk]  # NaN: unknown
            truth = None if x_star is None or np.isnan(x_star).any() else np.append(
                self.curve_truth[local, own], np.linalg.norm(x_final - x_star))
            self.results[i] = RunResult(
                status=kernels.STATUS[int(self.stop[kk, j])],
                iterations=k,
                loss_final=float(loss),
                x_final=x_final,
                w_final=w,
                r0=float(rows.r0[kk, j]) if wn else None,
                r_final=float(rows.r[kk, j]) if wn else None,
                curve_iter=np.append(self.curve_its[own], k).astype(np.int64),
                curve_loss=np.append(self.curve[local, own], loss),
                seconds=0.0,
                curve_error_truth=truth,
                residual_sum=rows.rsum[kk, j].copy() if rows.accumulate[kk, j] else None,
            )
        rows.live[done] = False
        rows.v[done] = 0.0
        self._repack()

    def _repack(self) -> None:
        """Drop idle rows when that shrinks the grid to REPACK_FRACTION or less: instances with
        no live run leave the stack, and each keeps as many row slots as the one with the most
        live runs needs (live rows first, in their order)."""
        rows = self.rows
        K, B = rows.live.shape
        keep = np.flatnonzero(rows.live.any(axis=1))
        if keep.size == 0:
            return
        live = rows.live[keep]
        width = padded_rows(int(live.sum(axis=1).max()))
        if keep.size * width > REPACK_FRACTION * K * B:
            return
        order = np.argsort(~live, axis=1, kind="stable")[:, :width]
        index = (keep[:, None], order)
        self.rows = rows.take(index)
        self.local = self.local[index]
        self.A = self.A[keep]
        self.AT = self.AT[keep]
        self.b = self.b[keep]
        if self.x_star is not None:
            self.x_star = self.x_star[keep]
        self._scratch()
