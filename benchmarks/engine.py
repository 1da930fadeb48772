"""Throughput of the batched GD / WN-GD engine (``pipeline.dynamics.run_batch``).

What is measured, for each shape (M, N) and batch size B, on one generated nonneg instance, L = 2,
constant init, a mixed batch (half GD, half WN-GD with the normalized schedule and eta~ cycling
0.01, 0.1, 1; alpha log-spaced in [1e-2, 1]; tol = 0 so every run does exactly ``--steps`` steps):

- engine runs/s: B / (wall time of ``run_batch`` on the whole batch), best of ``--repeats``;
- naive runs/s: the same runs done one at a time by a plain per-run numpy loop written below from
  docs/MODEL.md (matrix-vector products, the same per-step loss evaluation, stopping tests, checkpoint
  recording and tiny-entry flush as the engine). It is timed on a subset of the batch (half GD, half
  WN, spread over alpha and eta~); its cost per run does not depend on B, so runs/s = subset / time;
- their ratio (the point of batching: two matrix-matrix products per step instead of 2B
  matrix-vector products, and B times fewer Python-level numpy calls);
- GFLOP/s of the useful work, 4*M*N flops per run-step (A x~ and A^T r), and the same rate for bare
  ``np.matmul`` on the engine's shapes ((B,N)@(N,M) then (B,M)@(M,N)) measured in the same process:
  the fraction says how close the engine gets to what BLAS can do on these products.

Why: sweeps are many cheap runs; the engine is worth its complexity only if it is much faster than
the obvious loop and spends most of its time in BLAS. The naive loop also checks the engine's
numbers (final losses must agree to 1e-8 relative, else the script aborts). No timing is asserted.
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

try:
    import pipeline  # noqa: F401
except ImportError:  # run as `python benchmarks/engine.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import dynamics, initialization, problems  # noqa: E402

#: (M, N, s, eta). WN-GD uses the `normalized` schedule: its step in w-space stays eta while the
#: norm r grows. (With the default `constant` schedule that step grows like (r_k / r_0)^2, so the
#: small-alpha WN runs go unstable (chaotic, loss bounded) unless eta ~ 1e-4 at (40, 100); the
#: agreement check below catches that.) eta is ~1/4 of GD's stability limit 2 / (4 max|x*| ||A||^2):
#: ||A||^2 ~ 6.4 at (40, 100) and ~ 17 at (100, 1000).
SHAPES = ((40, 100, 5, 0.01), (100, 1000, 12, 0.005))
SCHEDULE = "normalized"
DEPTH = 2
ETA_RATIOS = (0.01, 0.1, 1.0)
#: Final losses of the naive loop and the engine must agree to REL_TOL relative to
#: max(loss, LOSS_FLOOR * ||b||^2). Converged runs end at the float64 rounding floor (residual
#: ~1e-14 ||b||, loss ~1e-27) where the two summation orders differ by O(1) relatively; a residual
#: of 1e-5 ||b|| is where the ~3e-15 ||b|| rounding differences observed reach ~1e-9 of the loss.
REL_TOL = 1e-8
LOSS_FLOOR = 0.5 * 1e-5**2


# --- the runs ------------------------------------------------------------------------------------


def make_batch(M: int, N: int, s: int, eta: float, B: int, steps: int, seed: int = 0):
    """The instance and a mixed batch: pairs (GD, WN) at the same alpha, alpha log-spaced."""
    inst = problems.generate_instance(M, N, s, signed=False, seed=seed)
    configs, w0 = [], []
    for j, alpha in enumerate(np.logspace(-2.0, 0.0, B // 2)):
        w = initialization.initial_weights(N, alpha, None)
        for method in ("gd", "wn"):
            configs.append(dynamics.RunConfig(
                method, signed=False, depth=DEPTH, eta=eta,
                eta_ratio=ETA_RATIOS[j % len(ETA_RATIOS)] if method == "wn" else 1.0,
                schedule=SCHEDULE, max_iters=steps, tol=0.0))
            w0.append(w)
    return inst.A, inst.b, configs, w0


def naive_run(A: np.ndarray, b: np.ndarray, cfg: dynamics.RunConfig, w0: np.ndarray):
    """One nonneg run, the plain docs/MODEL.md equations with matrix-vector products.
    Returns (status, iterations, final loss, checkpoint losses)."""
    if cfg.signed:
        raise NotImplementedError("the naive loop covers the nonneg model only")
    L, eta, wn = cfg.depth, cfg.eta, cfg.method == "wn"
    normalized = cfg.schedule == "normalized"
    checkpoints = set(dynamics.checkpoint_iterations(cfg.max_iters, cfg.checkpoints).tolist())
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
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
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


# --- the benchmark -------------------------------------------------------------------------------


def bench_one(M, N, s, eta, B, steps, repeats, naive_runs) -> dict:
    A, b, configs, w0 = make_batch(M, N, s, eta, B, steps)
    results = []
    t_engine = best_time(lambda: results.append(dynamics.run_batch(A, b, configs, w0)), repeats)
    out = results[-1]
    bad = [i for i, r in enumerate(out) if r.status != "max_iters" or r.iterations != steps]
    if bad:
        raise SystemExit(f"({M},{N}) B={B}: {len(bad)} runs did not do exactly {steps} steps "
                         f"(e.g. run {bad[0]}: {out[bad[0]].status}); eta={eta} is not stable here")

    k = max(2, min(B, naive_runs)) // 2  # pairs (GD, WN) spread over the batch
    subset = [i for j in np.linspace(0, B // 2 - 1, k).round().astype(int) for i in (2 * j, 2 * j + 1)]
    naive = {}

    def naive_pass() -> None:
        for i in subset:
            naive[i] = naive_run(A, b, configs[i], w0[i])

    t_naive = best_time(naive_pass, repeats)  # best of the same repeats as the engine
    worst, floor = 0.0, LOSS_FLOOR * float(b @ b)
    for i in subset:
        status, its, loss, _ = naive[i]
        ref = out[i].loss_final
        rel = abs(loss - ref) / max(abs(loss), abs(ref), floor)
        worst = max(worst, rel)
        if status != out[i].status or its != out[i].iterations or not rel <= REL_TOL:
            raise SystemExit(f"({M},{N}) B={B} run {i} ({configs[i]}): naive {status}/{its}/{loss!r} "
                             f"vs engine {out[i].status}/{out[i].iterations}/{ref!r} (rel {rel:.1e})")

    engine_rps, naive_rps = B / t_engine, len(subset) / t_naive
    engine_gf = 4.0 * M * N * B * steps / t_engine / 1e9
    mm_gf = matmul_gflops(A, B)
    return {"M": M, "N": N, "B": B, "eta": eta, "steps": steps, "engine_s": t_engine,
            "engine_runs_per_s": engine_rps, "naive_runs_timed": len(subset), "naive_s": t_naive,
            "naive_runs_per_s": naive_rps, "speedup": engine_rps / naive_rps,
            "engine_gflops": engine_gf, "matmul_gflops": mm_gf,
            "fraction_of_matmul": engine_gf / mm_gf, "max_rel_loss_diff": worst}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (default 1000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="engine timing: best of this many")
    parser.add_argument("--naive-runs", type=int, default=16, help="runs timed in the naive loop")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 steps, B=64, 1 repeat")
    parser.add_argument("--json", metavar="PATH", help="also save the numbers as JSON")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (default 1: how wnsweep's tasks run, one per CPU)")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        _run(args, parser)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.quick:
        args.steps, args.batch_sizes, args.repeats, args.naive_runs = 50, [64], 1, 4
    if any(B < 2 or B % 2 for B in args.batch_sizes):
        parser.error("batch sizes must be even and >= 2")

    facts = machine_facts()
    facts["square_matmul_1000_gflops"] = square_gflops()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()
                                  if k != "square_matmul_1000_gflops"))
    print(f"reference: np.matmul 1000x1000 @ 1000x1000: {facts['square_matmul_1000_gflops']:.1f} GFLOP/s")
    print(f"batch: nonneg, L={DEPTH}, constant init, half GD / half WN-GD ({SCHEDULE} schedule, "
          f"eta~ cycling {ETA_RATIOS}), alpha log-spaced in [1e-2, 1], tol=0, {args.steps} steps per run; "
          "eta per shape: " + ", ".join(f"({M},{N}): {eta}" for M, N, _, eta in SHAPES))
    print(f"engine: best of {args.repeats}; naive: best of as many passes over a subset of each batch "
          "(runs/s = subset size / its time; a naive run's cost does not depend on B)")
    print("GFLOP/s count 4*M*N flops per run-step; 'matmul' = bare np.matmul (B,N)@(N,M) + "
          "(B,M)@(M,N) in this process\n")

    header = (f"{'M':>4} {'N':>5} {'B':>5} | {'engine runs/s':>13} {'naive runs/s':>12} "
              f"{'(timed)':>7} {'speedup':>8} | {'engine GF/s':>11} {'matmul GF/s':>11} {'%matmul':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for M, N, s, eta in SHAPES:
        for B in args.batch_sizes:
            row = bench_one(M, N, s, eta, B, args.steps, args.repeats, args.naive_runs)
            rows.append(row)
            print(f"{M:>4} {N:>5} {B:>5} | {row['engine_runs_per_s']:>13.1f} "
                  f"{row['naive_runs_per_s']:>12.1f} {row['naive_runs_timed']:>7} "
                  f"{row['speedup']:>7.1f}x | {row['engine_gflops']:>11.2f} "
                  f"{row['matmul_gflops']:>11.2f} {100 * row['fraction_of_matmul']:>6.1f}%", flush=True)
    worst = max(r["max_rel_loss_diff"] for r in rows)
    print(f"\ncheck: naive loop and engine agree on status, iterations and final loss for every timed "
          f"run (max |difference| / max(loss, {LOSS_FLOOR:.0e} ||b||^2) = {worst:.1e} <= {REL_TOL:.0e})")
    if hasattr(os, "getloadavg"):
        facts["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
        print(f"load average (1 min) at start {facts['loadavg_1min']}, at end "
              f"{facts['loadavg_1min_at_end']} (on {facts['cpu_count']} cpus)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": facts, "args": vars(args), "rows": rows},
                                              indent=2))
        print(f"saved {args.json}")


if __name__ == "__main__":
    main()
