"""Throughput of the stacked GD / WN-GD engine (``pipeline.families.diagonal.dynamics.run_stack``).

The main table is shaped like the sweeps wnsweep runs: many instances (K), a handful of runs on
each (B). For (M, N) in {(40, 100), (100, 400)}, L in {2, 3}, K in {16, 64, 256} and B in {6, 24},
on K generated nonneg instances with the same B runs each (pairs of GD and WN-GD with the
normalized schedule at B/2 values of alpha log-spaced in [1e-2, 1], eta~ cycling 0.01, 0.1, 1;
constant init; tol = 0, so every run does exactly ``--steps`` steps), it reports in us per
run-step (one step of one run):

- engine: the wall time of one ``run_stack`` call on all K*B runs (best of ``--repeats``);
- per-inst: ``run_batch`` called once per instance: one instance per engine call (timed on a
  few instances; its cost per instance does not depend on K);
- naive: a plain per-run numpy loop written below from docs/MODEL.md (matrix-vector products, the
  same per-step loss evaluation, stopping tests, checkpoints and tiny-entry flush as the engine),
  timed on a sample of the runs (half GD, half WN) and extrapolated: its cost per run-step does
  not depend on K or B;
- speedup = naive / engine;
- GF/s: the engine's useful rate, 4*M*N flops per run-step (A x~ and A^T r), and %peak: its
  fraction of one-thread ``np.matmul`` on 1000 x 1000 matrices measured in the same process
  (%mm: of bare stacked ``np.matmul`` on the same products, B rows per instance: what the two
  products alone cost with BLAS; the engine computes them with its own kernel, so it can exceed
  100%).

The naive loop also checks the engine's numbers (status, iterations and final loss to 1e-8,
else the script aborts). ``--one-instance`` adds the older table: one instance, B runs per call.
Nothing is asserted about speed; the numbers are machine- and load-dependent (the header prints
the load average). ``--cpu-time`` times with the process's CPU clock instead of the wall clock,
which is steadier on a machine shared with other processes.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the checkout this script belongs to, before any installed copy
    sys.path.insert(0, str(ROOT))

from pipeline.families.diagonal import problems  # noqa: E402
from pipeline.families import training
from pipeline.families.diagonal import dynamics, initialization

#: (M, N, s, eta at L = 2; halved at L = 3). WN-GD uses the `normalized` schedule: its step in
#: w-space stays eta while the norm r grows. (With the default `constant` schedule that step grows
#: like (r_k / r_0)^2, so the small-alpha WN runs go unstable (chaotic, loss bounded) unless
#: eta ~ 1e-4 at (40, 100); the agreement check below catches that.) eta is well inside GD's
#: stability limit 2 / (4 max|x*| ||A||^2): ||A||^2 ~ 6.4 at (40, 100), ~ 9 at (100, 400) and
#: ~ 17 at (100, 1000).
STACK_SHAPES = ((40, 100, 5, 0.01), (100, 400, 10, 0.005))
INSTANCE_SHAPES = ((40, 100, 5, 0.01), (100, 1000, 12, 0.005))
SCHEDULE = "normalized"
ETA_RATIOS = (0.01, 0.1, 1.0)
#: Final losses of the naive loop and the engine must agree to REL_TOL relative to
#: max(loss, LOSS_FLOOR * ||b||^2). Converged runs end at the float64 rounding floor (residual
#: ~1e-14 ||b||, loss ~1e-27) where the two summation orders differ by O(1) relatively; a residual
#: of 1e-5 ||b|| is where the ~3e-15 ||b|| rounding differences observed reach ~1e-9 of the loss.
REL_TOL = 1e-8
LOSS_FLOOR = 0.5 * 1e-5**2
CLOCK = time.perf_counter  # or time.process_time with --cpu-time


# --- the runs ------------------------------------------------------------------------------------


def instance_runs(N: int, eta: float, depth: int, B: int, steps: int):
    """B runs of one instance: pairs (GD, WN) at the same alpha, alpha log-spaced in [1e-2, 1]."""
    configs, w0 = [], []
    for j, alpha in enumerate(np.logspace(-2.0, 0.0, B // 2)):
        w = initialization.initial_weights(N, alpha, None)
        for method in ("gd", "wn"):
            configs.append(dynamics.RunConfig(
                method, signed=False, depth=depth, eta=eta,
                eta_ratio=ETA_RATIOS[j % len(ETA_RATIOS)] if method == "wn" else 1.0,
                schedule=SCHEDULE, max_iters=steps, tol=0.0))
            w0.append(w)
    return configs, w0


def naive_run(A: np.ndarray, b: np.ndarray, cfg: dynamics.RunConfig, w0: np.ndarray):
    """One nonneg run, the plain docs/MODEL.md equations with matrix-vector products.
    Returns (status, iterations, final loss, checkpoint losses)."""
    if cfg.signed:
        raise NotImplementedError("the naive loop covers the nonneg model only")
    L, eta, wn = cfg.depth, cfg.eta, cfg.method == "wn"
    normalized = cfg.schedule == "normalized"
    checkpoints = set(training.checkpoint_iterations(cfg.max_iters, cfg.checkpoints).tolist())
    flush_below = dynamics.FLUSH_POWER ** (1.0 / L)
    w = np.array(w0, dtype=np.float64)
    r0 = r = float(np.sqrt(w @ w))
    d = w / r if wn else None
    res = A @ w**L - b
    loss = 0.5 * (res @ res)
    limit = dynamics.DIVERGENCE_FACTOR * loss
    curve = [loss]
    k = 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while True:
            if not (loss <= limit and r > 0):
                status = "diverged"
                break
            if loss <= cfg.tol:
                status = "converged"
                break
            if k >= cfg.max_iters:
                status = "max_iters"
                break
            g = L * w ** (L - 1) * (res @ A)  # grad f = L w^(L-1) * A^T (A x~ - b)
            if wn:
                eta_u = eta / (r * r if normalized else r0 * r0)
                radial = d @ g
                d = d - eta_u * r * (g - radial * d)
                d /= np.sqrt(d @ d)
                r = r - cfg.eta_ratio * eta_u * radial
                w = r * d
            else:
                w = w - eta * g
            k += 1
            if k % dynamics.FLUSH_EVERY == 0:  # the engine's subnormal guard, same semantics
                state = d if wn else w
                state[np.abs(state) < flush_below] = 0.0
            res = A @ w**L - b
            loss = 0.5 * (res @ res)
            if k in checkpoints:
                curve.append(loss)
    return status, k, float(loss), curve


# --- timing helpers ------------------------------------------------------------------------------


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = CLOCK()
        fn()
        best = min(best, CLOCK() - t)
    return best


def matmul_gflops(A: np.ndarray, B: int, repeats: int = 5, target_s: float = 0.05) -> float:
    """Bare np.matmul on the engine's shapes: (B,N)@(N,M) then (B,M)@(M,N); 4*M*N*B flops/pair."""
    M, N = A.shape
    AT = np.ascontiguousarray(A.T)
    X = np.random.default_rng(1).random((B, N))
    R, C = np.empty((B, M)), np.empty((B, N))

    def pairs(n):
        for _ in range(n):
            np.matmul(X, AT, out=R)
            np.matmul(R, A, out=C)

    inner = max(1, int(target_s / max(best_time(lambda: pairs(1), 3), 1e-7)))
    return 4.0 * M * N * B * inner / best_time(lambda: pairs(inner), repeats) / 1e9


def square_gflops(n: int = 1000, repeats: int = 5) -> float:
    X = np.random.default_rng(2).random((n, n))
    out = np.empty_like(X)
    return 2.0 * n**3 / best_time(lambda: np.matmul(X, X, out=out), repeats) / 1e9


# --- machine facts -------------------------------------------------------------------------------


def _openblas_threads() -> int | None:
    """OpenBLAS's thread count via threadpoolctl, else via the library numpy bundles (ctypes)."""
    try:
        import threadpoolctl

        counts = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        return counts[0] if counts else None
    except ImportError:
        pass
    libs = glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "*openblas*"))
    for lib in libs:
        try:
            cdll = ctypes.CDLL(lib)
        except OSError:
            continue
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                     "openblas_get_num_threads"):
            if hasattr(cdll, name):
                return int(getattr(cdll, name)())
    return None


def machine_facts() -> dict:
    facts = {"python": platform.python_version(), "numpy": np.__version__,
             "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0))
             if hasattr(os, "sched_getaffinity") else None}
    try:
        import threadpoolctl

        facts["blas"] = "; ".join(f"{p['internal_api']} {p.get('version')} ({p.get('architecture')}), "
                                  f"{p['num_threads']} threads"
                                  for p in threadpoolctl.threadpool_info())
    except ImportError:
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            facts["blas"] = f"{blas.get('name')} {blas.get('version')} " \
                            f"[{blas.get('openblas configuration', '').strip()}] (threadpoolctl absent)"
        except Exception as exc:  # pragma: no cover - depends on the numpy build
            facts["blas"] = f"unknown ({exc})"
    facts["blas_threads"] = _openblas_threads()
    if hasattr(os, "getloadavg"):  # other processes competing for the cores skew every number
        facts["loadavg_1min"] = round(os.getloadavg()[0], 2)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            facts[var] = os.environ[var]
    return facts


def stacked_matmul_gflops(A: np.ndarray, B: int, repeats: int = 5, target_s: float = 0.05) -> float:
    """Bare np.matmul on the engine's stacked shapes and layout: A (K, M, N), rows (B, K, .)."""
    K, M, N = A.shape
    X = np.random.default_rng(1).random((B, K, N))
    R, C = np.empty((B, K, M)), np.empty((B, K, N))

    def pairs(n):
        for _ in range(n):
            np.matmul(X.transpose(1, 0, 2), A.swapaxes(1, 2), out=R.transpose(1, 0, 2))
            np.matmul(R.transpose(1, 0, 2), A, out=C.transpose(1, 0, 2))

    inner = max(1, int(target_s / max(best_time(lambda: pairs(1), 3), 1e-7)))
    return 4.0 * M * N * B * K * inner / best_time(lambda: pairs(inner), repeats) / 1e9


def _check(label, configs, w0, A, b, out, subset) -> tuple[float, float]:
    """Time the naive loop on ``subset`` (indices into configs) and compare it with the engine's
    results ``out``; returns (seconds, worst relative loss difference)."""
    naive = {}

    def naive_pass() -> None:
        for i in subset:
            naive[i] = naive_run(A[i], b[i], configs[i], w0[i])

    t = CLOCK()
    naive_pass()
    seconds = CLOCK() - t
    worst = 0.0
    for i in subset:
        status, its, loss, _ = naive[i]
        ref = out[i].loss_final
        rel = abs(loss - ref) / max(abs(loss), abs(ref), LOSS_FLOOR * float(b[i] @ b[i]))
        worst = max(worst, rel)
        if status != out[i].status or its != out[i].iterations or not rel <= REL_TOL:
            raise SystemExit(f"{label} run {i} ({configs[i]}): naive {status}/{its}/{loss!r} vs "
                             f"engine {out[i].status}/{out[i].iterations}/{ref!r} (rel {rel:.1e})")
    return seconds, worst


def bench_stack(M, N, s, eta, depth, K, B, steps, repeats, naive_runs, per_instance) -> dict:
    """One row of the main table (see the module docstring)."""
    insts = [problems.generate_instance(M, N, s, signed=False, seed=k) for k in range(K)]
    eta = eta if depth == 2 else eta / 2
    runs, w = instance_runs(N, eta, depth, B, steps)
    configs, w0 = runs * K, w * K
    of_run = [k for k in range(K) for _ in range(B)]
    pairs = [(inst.A, inst.b) for inst in insts]
    results = []
    t_engine = best_time(lambda: results.append(dynamics.run_stack(pairs, of_run, configs, w0)),
                         repeats)
    out = results[-1]
    label = f"({M},{N}) L={depth} K={K} B={B}"
    bad = [i for i, r in enumerate(out) if r.status != "max_iters" or r.iterations != steps]
    if bad:
        raise SystemExit(f"{label}: {len(bad)} runs did not do exactly {steps} steps (e.g. run "
                         f"{bad[0]}: {out[bad[0]].status}); eta={eta} is not stable here")
    # naive: pairs (GD, WN) spread over alpha, on the first instances
    k = max(1, min(B // 2, naive_runs // 2))
    subset = [inst * B + 2 * j + m for inst, j in enumerate(np.linspace(0, B // 2 - 1, k)
                                                            .round().astype(int)) for m in (0, 1)]
    t_naive, worst = _check(label, configs, w0, [insts[of_run[i]].A for i in range(len(of_run))],
                            [insts[of_run[i]].b for i in range(len(of_run))], out, subset)
    # per instance: run_batch once per instance on a few instances
    sample = min(K, per_instance)
    t_inst = best_time(lambda: [dynamics.run_batch(insts[i].A, insts[i].b, runs, w)
                                for i in range(sample)], 1)
    run_steps = K * B * steps
    engine_us = 1e6 * t_engine / run_steps
    naive_us = 1e6 * t_naive / (len(subset) * steps)
    gflops = 4.0 * M * N * run_steps / t_engine / 1e9
    A = np.stack([inst.A for inst in insts])
    return {"M": M, "N": N, "L": depth, "K": K, "B": B, "steps": steps, "eta": eta,
            "engine_us": engine_us, "per_instance_us": 1e6 * t_inst / (sample * B * steps),
            "naive_us": naive_us, "naive_runs_timed": len(subset), "speedup": naive_us / engine_us,
            "engine_gflops": gflops,
            "stacked_matmul_gflops": stacked_matmul_gflops(A, dynamics.padded_rows(B)),
            "max_rel_loss_diff": worst}


def bench_one(M, N, s, eta, B, steps, repeats, naive_runs) -> dict:
    """One row of the one-instance table: B runs of one instance in one call."""
    inst = problems.generate_instance(M, N, s, signed=False, seed=0)
    configs, w0 = instance_runs(N, eta, 2, B, steps)
    results = []
    t_engine = best_time(lambda: results.append(dynamics.run_batch(inst.A, inst.b, configs, w0)),
                         repeats)
    out = results[-1]
    k = max(2, min(B, naive_runs)) // 2
    subset = [i for j in np.linspace(0, B // 2 - 1, k).round().astype(int) for i in (2 * j, 2 * j + 1)]
    t_naive, worst = _check(f"({M},{N}) B={B}", configs, w0, [inst.A] * B, [inst.b] * B, out,
                            subset)
    engine_us = 1e6 * t_engine / (B * steps)
    naive_us = 1e6 * t_naive / (len(subset) * steps)
    gflops = 4.0 * M * N * B * steps / t_engine / 1e9
    return {"M": M, "N": N, "B": B, "steps": steps, "engine_us": engine_us, "naive_us": naive_us,
            "speedup": naive_us / engine_us, "engine_gflops": gflops,
            "matmul_gflops": matmul_gflops(inst.A, B), "max_rel_loss_diff": worst}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in seconds: 100 steps, (40, 100), K in {16, 64}, B = 6")
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument("--instances", type=int, nargs="+", default=[16, 64, 256], help="K values")
    parser.add_argument("--runs", type=int, nargs="+", default=[6, 24],
                        help="B values (runs per instance, even)")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--repeats", type=int, default=3, help="engine timing: best of this many")
    parser.add_argument("--naive-runs", type=int, default=8, help="runs timed in the naive loop")
    parser.add_argument("--per-instance", type=int, default=4,
                        help="instances timed with one run_batch call each")
    parser.add_argument("--one-instance", action="store_true",
                        help="also the one-instance table (B in --batch-sizes runs per call)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process CPU clock (steadier on a shared machine)")
    parser.add_argument("--json", metavar="PATH", help="also save the numbers as JSON")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (default 1: how wnsweep's tasks run, one per CPU)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.instances, args.runs, args.repeats = 100, [16, 64], [6], 1
        args.naive_runs, args.per_instance, args.batch_sizes = 4, 2, [64]
    if any(B < 2 or B % 2 for B in args.runs + args.batch_sizes):
        parser.error("runs per instance and batch sizes must be even and >= 2")
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    shapes = STACK_SHAPES[:1] if args.quick else STACK_SHAPES
    facts = machine_facts()
    peak = facts["square_matmul_1000_gflops"] = square_gflops()
    facts["clock"] = "process CPU time" if args.cpu_time else "wall"
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()
                                  if k != "square_matmul_1000_gflops"))
    print(f"peak: np.matmul 1000x1000 @ 1000x1000, {args.blas_threads} BLAS thread(s): "
          f"{peak:.1f} GFLOP/s")
    print(f"runs: nonneg, constant init, per instance B/2 pairs (GD, WN-GD {SCHEDULE}, eta~ cycling "
          f"{ETA_RATIOS}) at alpha log-spaced in [1e-2, 1], tol=0, {args.steps} steps; eta at L=2: "
          + ", ".join(f"({M},{N}) {eta}" for M, N, _, eta in shapes) + ", halved at L=3")
    print("us per run-step (one step of one run); GF/s count 4*M*N flops per run-step; %peak of the "
          "line above; %mm of bare stacked np.matmul on the same shapes\n")
    header = (f"{'M':>4} {'N':>4} {'L':>2} {'K':>4} {'B':>3} | {'engine':>7} {'per-inst':>8} "
              f"{'naive':>7} {'speedup':>8} | {'GF/s':>6} {'%peak':>6} {'%mm':>5}")
    print(header)
    print("-" * len(header))
    rows = []
    for M, N, s, eta in shapes:
        for depth in args.depths:
            for K in args.instances:
                for B in args.runs:
                    row = bench_stack(M, N, s, eta, depth, K, B, args.steps, args.repeats,
                                      args.naive_runs, args.per_instance)
                    row["fraction_of_peak"] = row["engine_gflops"] / peak
                    rows.append(row)
                    print(f"{M:>4} {N:>4} {depth:>2} {K:>4} {B:>3} | {row['engine_us']:>7.3f} "
                          f"{row['per_instance_us']:>8.3f} {row['naive_us']:>7.3f} "
                          f"{row['speedup']:>7.1f}x | {row['engine_gflops']:>6.1f} "
                          f"{100 * row['fraction_of_peak']:>5.0f}% "
                          f"{100 * row['engine_gflops'] / row['stacked_matmul_gflops']:>4.0f}%",
                          flush=True)
    target = [r for r in rows if (r["M"], r["N"], r["K"], r["B"]) == (40, 100, 64, 6)]
    for r in target:
        print(f"target (40,100) K=64 B=6 L={r['L']}: {100 * r['fraction_of_peak']:.0f}% of one-thread "
              f"matmul (target >= 40%)")
    one = []
    if args.one_instance:
        print(f"\none instance, B runs per call, L=2 (older table)\n"
              f"{'M':>4} {'N':>5} {'B':>5} | {'engine':>7} {'naive':>7} {'speedup':>8} | "
              f"{'GF/s':>6} {'mm GF/s':>7}")
        for M, N, s, eta in INSTANCE_SHAPES[:1] if args.quick else INSTANCE_SHAPES:
            for B in args.batch_sizes:
                row = bench_one(M, N, s, eta, B, args.steps, args.repeats, args.naive_runs)
                one.append(row)
                print(f"{M:>4} {N:>5} {B:>5} | {row['engine_us']:>7.3f} {row['naive_us']:>7.3f} "
                      f"{row['speedup']:>7.1f}x | {row['engine_gflops']:>6.1f} "
                      f"{row['matmul_gflops']:>7.1f}", flush=True)
    worst = max(r["max_rel_loss_diff"] for r in rows + one)
    print(f"\ncheck: naive loop and engine agree on status, iterations and final loss for every timed "
          f"run (max |difference| / max(loss, {LOSS_FLOOR:.0e} ||b||^2) = {worst:.1e} <= {REL_TOL:.0e})")
    if hasattr(os, "getloadavg"):
        facts["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
        print(f"load average (1 min) at start {facts['loadavg_1min']}, at end "
              f"{facts['loadavg_1min_at_end']} (on {facts['cpu_count']} cpus)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": facts, "args": vars(args), "rows": rows,
                                               "one_instance": one}, indent=2))
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
