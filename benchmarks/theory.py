"""Cost of one predicted-limit solve (``pipeline.families.diagonal.theory.predicted_limit``) against one basis-pursuit
solve (``pipeline.families.diagonal.reference.basis_pursuit``, cvxpy + HiGHS) on the same instance.

What is measured, for each shape (M, N), sign (nonneg, signed) and depth L in (2, 3), on one
generated instance (s = M / 8 nonzeros) and initial weights of scale alpha (constant and random
init, alpha in --alphas, and log-scales 0 and -300 (WN-GD's alpha_eff = alpha e^{-C_inf} for
C_inf = 300)): the wall time of the damped-Newton solve (best of --repeats) and its
Newton iterations, and the wall time of the basis-pursuit solve of the same instance (best of
--repeats, after one warm-up solve in the process so that cvxpy's first-call setup is not counted).
The ratio says how much the theory overlay adds per distinct (instance, L, initial weights)
relative to the reference solve that every instance already pays. Every prediction must end with
status "ok" (else the script aborts). No timing is asserted: numbers depend on the machine, its load
and BLAS threads (set OPENBLAS_NUM_THREADS to compare).

    python benchmarks/theory.py                        # the table (about a minute)
    python benchmarks/theory.py --quick                # smoke run
    python benchmarks/theory.py --shapes 400x2000 --json /tmp/theory.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    import pipeline  # noqa: F401
except ImportError:  # run as `python benchmarks/theory.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import theory  # noqa: E402
from pipeline.families.diagonal import initialization, problems, reference

SHAPES = ((40, 100), (100, 400), (200, 1000))
DEPTHS = (2, 3)
ALPHAS = (1e-1, 1e-3)
#: Log-scales of the initial weights (w0 * e^{log_scale}): -300 is a WN-GD run with a small eta~
#: whose norm grew (C_inf = 300, alpha_eff = alpha e^{-300}): the L = 2 continuation and the L = 3
#: LP limit.
LOG_SCALES = (0.0, -300.0)
SCHEMES = ("constant", "random")


def best_of(repeats: int, fn):
    """(best wall time in seconds, last result) of ``repeats`` calls of fn()."""
    best, out = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def measure(shapes, alphas, repeats: int, log_scales=LOG_SCALES, seed: int = 0) -> list[dict]:
    rows = []
    warm = problems.generate_instance(10, 20, 2, False, seed)
    reference.basis_pursuit(warm.A, warm.b, nonneg=True)  # cvxpy's first-solve setup
    for M, N in shapes:
        for signed in (False, True):
            inst = problems.generate_instance(M, N, max(1, M // 8), signed, seed)
            t_bp, bp = best_of(repeats, lambda: reference.basis_pursuit(
                inst.A, inst.b, nonneg=not signed))
            n = 2 * N if signed else N
            for depth in DEPTHS:
                for alpha, log_scale, scheme in itertools.product(alphas, log_scales, SCHEMES):
                    direction = initialization.init_direction(n, scheme, seed)
                    w0 = initialization.initial_weights(n, alpha, direction)
                    t_pred, pred = best_of(repeats, lambda: theory.predicted_limit(
                        inst.A, inst.b, w0, depth, signed, log_scale=log_scale))
                    if pred.status != "ok":
                        where = (M, N, signed, depth, alpha, log_scale, scheme)
                        raise SystemExit(f"prediction not ok at {where}: {pred.status} "
                                         f"{pred.message}")
                    rows.append({
                        "M": M, "N": N, "sign": "signed" if signed else "nonneg",
                        "L": depth, "alpha": alpha, "log_scale": log_scale, "init": scheme,
                        "newton_iterations": pred.iterations, "residual": pred.residual,
                        "predict_s": t_pred, "basis_pursuit_s": t_bp,
                        "basis_pursuit_status": bp.status, "ratio": t_pred / t_bp,
                        "pred_l1_gap": theory.prediction_metrics(pred.x, pred.x, bp.x)[
                            "pred_l1_gap"],
                    })
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"numpy {np.__version__}, python {platform.python_version()}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"cpus {os.cpu_count()}")
    head = (f"{'M':>4} {'N':>5} {'sign':>6} {'L':>2} {'alpha':>6} {'log s':>5} {'init':>8} "
            f"{'newton':>6} "
            f"{'predict ms':>10} {'BP ms':>8} {'pred/BP':>7} {'l1 gap':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['M']:>4} {r['N']:>5} {r['sign']:>6} {r['L']:>2} {r['alpha']:>6.0e} "
              f"{r['log_scale']:>5.0f} "
              f"{r['init']:>8} {r['newton_iterations']:>6} {1e3 * r['predict_s']:>10.1f} "
              f"{1e3 * r['basis_pursuit_s']:>8.1f} {r['ratio']:>7.2f} {r['pred_l1_gap']:>9.2e}")
    ratios = np.array([r["ratio"] for r in rows])
    print(f"pred/BP: median {np.median(ratios):.2f}, max {ratios.max():.2f} "
          f"over {len(rows)} solves")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only (40, 100), one repeat")
    parser.add_argument("--shapes", nargs="*", help="MxN shapes, e.g. 40x100 400x2000")
    parser.add_argument("--alphas", nargs="*", type=float, default=list(ALPHAS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    shapes = ([tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
              if args.shapes else list(SHAPES))
    repeats = args.repeats
    if args.quick:
        shapes, repeats = [(40, 100)], 1
    rows = measure(shapes, args.alphas, repeats)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
