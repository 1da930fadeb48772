"""Cost per run-step of mini-batch SGD and label-noise GD in the stacked engine.

On K generated nonneg instances with B runs each (L = 2, alpha log-spaced in [1e-2, 1],
eta = 0.01, tol = 0 so every run does exactly ``--steps`` steps), one ``run_stack`` call per
variant, all runs of a call being of that variant:

- full batch: today's GD (the reference row; ``batch = M`` runs the same instructions);
- batch b: SGD, a permutation per epoch from each run's stream (``dynamics``, "Stochastic steps");
- label noise: fresh N(0, delta^2) labels every step, drawn ``DRAW_STEPS`` ahead;
- WN-GD rows with a mini-batch.

Columns, in us per run-step: ``engine`` (best of ``--repeats``), ``x full`` (its ratio to the
full-batch row of the same shape), ``naive`` (a per-run numpy loop of the same method, the slow
loop of tests/test_stochastic.py, timed on a few runs and extrapolated), ``speedup`` = naive /
engine, and ``%mm``: the two products' flops (4 M N per run-step) at the engine's rate as a
fraction of one-thread ``np.matmul`` on 1000 x 1000 matrices in the same process. A mini-batch
step still computes the full forward product (the loss and the stopping test are on all M rows)
and the full backward product with zeros outside the batch, so it costs what a full step costs
plus the draws. Nothing is asserted; the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.families.diagonal import dynamics, problems  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

#: (label, method, batch (None: all M; a float: that fraction of M), label noise)
VARIANTS = (
    ("full batch", "gd", None, 0.0),
    ("batch M", "gd", 1.0, 0.0),
    ("batch M/4", "gd", 0.25, 0.0),
    ("batch 1", "gd", 1, 0.0),
    ("label noise", "gd", None, 0.1),
    ("batch M/4 + label noise", "gd", 0.25, 0.1),
    ("WN-GD, batch M/4", "wn", 0.25, 0.0),
)


def _batch(spec, M: int) -> int | None:
    if spec is None:
        return None
    return max(1, int(round(spec * M))) if isinstance(spec, float) else int(spec)


def configs_for(variant, M: int, N: int, B: int, steps: int, seed0: int):
    _, method, batch, delta = variant
    alphas = np.logspace(-2, 0, B)
    configs = [dynamics.RunConfig(method, False, 2, 0.01, schedule="normalized",
                                  batch=_batch(batch, M), label_noise=delta, max_iters=steps,
                                  tol=0.0, seed=seed0 + j) for j in range(B)]
    return configs, [np.full(N, a) for a in alphas]


def slow_step_seconds(A, b, cfg, w0, steps: int) -> float:
    """Seconds per step of the plain per-run loop (GD/SGD/label noise; WN-GD as GD: the
    products dominate)."""
    M, _ = A.shape
    shuffle = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    labels = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
    batch = min(cfg.batch or M, M)
    epoch = M // batch
    w = w0.copy()
    t = time.perf_counter()
    for k in range(steps):
        e = A @ (w * w) - b
        _ = 0.5 * (e @ e)
        if batch < M and k % epoch == 0:
            order = shuffle.permutation(M)
        if cfg.label_noise > 0:
            e = e - cfg.label_noise * labels.standard_normal(M)
        if batch < M:
            weight = np.zeros(M)
            weight[order[(k % epoch) * batch:(k % epoch + 1) * batch]] = M / batch
            e = e * weight
        w = w * (1 - A.T @ (2 * cfg.eta * e))
    return (time.perf_counter() - t) / steps


def square_gflops(n: int = 1000) -> float:
    X = np.random.default_rng(2).random((n, n))
    best = min(_timed(lambda: X @ X) for _ in range(5))
    return 2.0 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["40x100", "100x400"])
    parser.add_argument("--instances", type=int, default=64, help="K (default 64)")
    parser.add_argument("--runs", type=int, default=6, help="B runs per instance (default 6)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-runs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="K = 8, 500 steps, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.steps, args.repeats = 8, 500, 1
    if threadpool_limits is not None:
        threadpool_limits(1)
    peak = square_gflops()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"K = {args.instances} instances x B = {args.runs} runs, {args.steps} steps, L = 2; "
          f"one-thread matmul {peak:.1f} GFLOP/s; load average {load:.2f}")
    header = f"{'(M, N)':>10} {'variant':>24} {'engine':>8} {'x full':>7} {'naive':>8} " \
             f"{'speedup':>8} {'%mm':>6}"
    print(header)
    print("-" * len(header))
    for shape in args.shapes:
        M, N = (int(x) for x in shape.split("x"))
        instances = [problems.generate_instance(M, N, 5, False, 1000 + k)
                     for k in range(args.instances)]
        full = None
        for v, variant in enumerate(VARIANTS):
            configs, w0 = configs_for(variant, M, N, args.runs, args.steps, 100 * v)
            every = [c for _ in instances for c in configs]
            starts = [w for _ in instances for w in w0]
            which = [k for k in range(len(instances)) for _ in configs]
            pairs = [(p.A, p.b) for p in instances]
            dynamics.run_stack(pairs[:1], [0] * len(configs), configs, w0)  # compile, warm up
            best = min(_timed(lambda: dynamics.run_stack(pairs, which, every, starts))
                       for _ in range(args.repeats))
            per = best / (len(every) * args.steps) * 1e6
            full = per if full is None else full
            slow = np.mean([slow_step_seconds(instances[0].A, instances[0].b, configs[j], w0[j],
                                              min(args.steps, 2000))
                            for j in range(args.naive_runs)]) * 1e6
            pct = 4.0 * M * N / (per * 1e-6) / 1e9 / peak * 100
            print(f"{f'({M}, {N})':>10} {variant[0]:>24} {per:8.3f} {per / full:7.2f} "
                  f"{slow:8.2f} {slow / per:8.1f} {pct:6.1f}")


if __name__ == "__main__":
    main()
