"""Throughput of the batched two-layer engine (``pipeline.engine.run_batch``) against a naive loop.

For each shape (M, N, K, h) and batch size B, on one generated instance (dense X*), random init with
alpha = 0.5 and imbalance cycling -1, 0, 1, eta = 0.005 and tol = 0 so every run does exactly
``--steps`` steps:

- engine us/run-step: wall time of ``run_batch`` on the whole batch / (B * steps), best of
  ``--repeats``;
- naive us/run-step: the same runs one at a time by the plain loop below (A @ U @ V.T, the two
  gradients, the loss every step, the checkpoint recording); timed on min(B, ``--naive-runs``) runs of
  the batch, its cost per run does not depend on B;
- speedup = naive / engine; GF/s of the engine counting the useful products per run-step,
  2 (3 N h K + 2 M N K) flops (P^T = V U^T, R^T = P^T A^T, C^T = R^T A, C V, C^T U).

The naive loop also checks the engine's numbers: final products must agree to 1e-8 relative, else
the script aborts. Nothing about speed is asserted. From the repository root:

    .venv/bin/python benchmarks/twolayer.py --quick
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/twolayer.py --steps 400
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import pipeline  # noqa: F401
except ImportError:  # run as `python benchmarks/twolayer.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.families.training import checkpoint_iterations  # noqa: E402
from pipeline.families.twolayer import engine, model  # noqa: E402

SHAPES = ((10, 30, 1, 5), (10, 30, 1, 50), (10, 30, 1, 500), (40, 100, 1, 100), (40, 100, 4, 100))
BATCH_SIZES = (1, 16, 128)
ETA, ALPHA, IMBALANCES = 0.005, 0.5, (-1.0, 0.0, 1.0)
REL_TOL = 1e-8


def make_batch(M, N, K, h, B, steps, seed=0):
    inst = model.generate_instance(M, N, K, seed=seed)
    configs = [engine.TwoLayerConfig(width=h, eta=ETA, max_iters=steps, tol=0.0)] * B
    weights = [model.initial_weights(N, K, h, ALPHA, "random", IMBALANCES[j % 3], seed=j)
               for j in range(B)]
    return inst.A, inst.Y, configs, [w[0] for w in weights], [w[1] for w in weights]


def naive_run(A, Y, cfg, U0, V0):
    """One run, the plain equations, with the engine's per-step loss, stopping tests and curve."""
    U, V = U0.copy(), V0.copy()
    marks = set(checkpoint_iterations(cfg.max_iters, cfg.checkpoints).tolist())
    R = A @ U @ V.T - Y
    loss0 = 0.5 * np.sum(R * R)
    curve = [loss0]
    for k in range(1, cfg.max_iters + 1):
        U, V = U - cfg.eta * (A.T @ (R @ V)), V - cfg.eta * ((R.T @ A) @ U)
        R = A @ U @ V.T - Y
        loss = 0.5 * np.sum(R * R)
        if k in marks:
            curve.append(loss)
        if not np.isfinite(loss) or loss > 1e6 * loss0 or loss <= cfg.tol:
            break
    return U @ V.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-runs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="steps 100, B 1 and 16, 1 repeat")
    args = parser.parse_args()
    steps, batch_sizes, repeats = args.steps, BATCH_SIZES, args.repeats
    if args.quick:
        steps, batch_sizes, repeats = 100, (1, 16), 1
    print(f"numpy {np.__version__}, steps {steps}, eta {ETA}, alpha {ALPHA}")
    header = (f"{'M':>4} {'N':>5} {'K':>3} {'h':>5} {'B':>5} | {'engine us/rs':>12} "
              f"{'naive us/rs':>12} {'speedup':>8} {'engine GF/s':>11}")
    print(header)
    print("-" * len(header))
    for M, N, K, h in SHAPES:
        flops = 2 * (3 * N * h * K + 2 * M * N * K)
        naive_us = None
        for B in batch_sizes:
            A, Y, configs, U0s, V0s = make_batch(M, N, K, h, B, steps)
            best = np.inf
            for _ in range(repeats):
                start = time.perf_counter()
                results = engine.run_batch(A, Y, configs, U0s, V0s)
                best = min(best, time.perf_counter() - start)
            engine_us = best / (B * steps) * 1e6
            if naive_us is None:  # per-run cost independent of B: time it once per shape
                n = min(max(batch_sizes), args.naive_runs)
                A_n, Y_n, cfg_n, U_n, V_n = make_batch(M, N, K, h, n, steps)
                start = time.perf_counter()
                products = [naive_run(A_n, Y_n, c, U, V) for c, U, V in zip(cfg_n, U_n, V_n)]
                naive_us = (time.perf_counter() - start) / (n * steps) * 1e6
                reference = engine.run_batch(A_n, Y_n, cfg_n, U_n, V_n)
                for P, res in zip(products, reference):
                    err = np.linalg.norm(P - res.product) / np.linalg.norm(P)
                    if not err <= REL_TOL:
                        sys.exit(f"engine and naive loop disagree at {(M, N, K, h)}: {err:.2e}")
            assert all(r.iterations == steps for r in results)
            print(f"{M:>4} {N:>5} {K:>3} {h:>5} {B:>5} | {engine_us:>12.2f} {naive_us:>12.2f} "
                  f"{naive_us / engine_us:>8.1f} {flops / engine_us * 1e-3:>11.2f}")
    print("naive loop and engine agree on every checked run (final products, 1e-8 relative)")


if __name__ == "__main__":
    main()
