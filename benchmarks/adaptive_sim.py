"""Adaptive phase diagrams in pure simulation: runs spent and contours, adaptive vs full grid.

No pipeline run is made. A synthetic world gives each cell (method, alpha, s) the success
probability ``p = F(k (log10 alpha - x0(method, s)))`` (``F`` logistic, ``k < 0``: success at
small alpha), so the true crossing of ``level = 0.5`` is ``alpha* = 10^x0``. Trial ``t`` of a
cell succeeds when a uniform ``U_t < p``; the uniforms come from a Generator seeded by the cell
(``--paired no``: independent trials) or by its column (``--paired yes``: trial t shares its
uniform across alpha, the strongest positive dependence, as trial t of a real sweep shares its
instance across alpha). The adaptive procedure (``pipeline.adaptive.next_round``) runs in memory
from the base grid; the full grid is every value reachable by ``refine`` bisections (the finest
resolution), ``max`` trials per cell, with the same outcomes for the same (cell, trial). Both
are fitted by ``analysis.contours``.

Printed, per repetition (seed) and in total: runs spent adaptively and by the full grid, and
per column the fraction whose true crossing lies in the interval (coverage) and whose full-grid
crossing lies in the adaptive interval (agreement).

    python benchmarks/adaptive_sim.py                  # 20 repetitions, the table
    python benchmarks/adaptive_sim.py --reps 5 --k -8 --paired yes
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

# this checkout's modules, ahead of any installed copy of wnsweep
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.contours import contours  # noqa: E402
from pipeline import adaptive  # noqa: E402
from pipeline.axes import logspace  # noqa: E402

SUCCESS = {"column": "rel_error_l1", "at_most": 1e-2}


class World:
    """Synthetic outcomes: ``p = F(k (log10 alpha - x0[method](s)))``; ``x0[method]`` maps s to
    the true log10 crossing. Uniforms per cell (or per column when ``paired``) from a Generator
    seeded by ``seed`` and the cell's 12-digit identity, so an outcome depends only on the cell
    and trial, never on the order of requests."""

    def __init__(self, seed: int, k: float, x0: dict, trials_max: int, paired: bool):
        self.seed, self.k, self.x0, self.max, self.paired = seed, k, x0, trials_max, paired
        self._u: dict[tuple, np.ndarray] = {}

    def crossing(self, method: str, s: int) -> float:
        return 10.0 ** self.x0[method](s)

    def p(self, method: str, alpha: float, s: int) -> float:
        return 1.0 / (1.0 + math.exp(-self.k * (math.log10(alpha) - self.x0[method](s))))

    def uniforms(self, method: str, alpha: float, s: int) -> np.ndarray:
        who = (method, s) if self.paired else (method, format(alpha, ".12g"), s)
        if who not in self._u:
            code = zlib.crc32(repr(who).encode())
            self._u[who] = np.random.default_rng([self.seed, code]).random(self.max)
        return self._u[who]

    def outcomes(self, method: str, alpha: float, s: int, n: int) -> np.ndarray:
        """Outcomes (bool, shape (n,)) of trials 0 .. n-1 of the cell."""
        return self.uniforms(method, alpha, s)[:n] < self.p(method, alpha, s)


def rows(world: World, cells: dict[tuple, int]) -> pd.DataFrame:
    """Run rows for ``cells`` (key (method, alpha, s) -> trials): success as rel_error_l1 0/1."""
    out = []
    for (method, alpha, s), n in cells.items():
        ok = world.outcomes(method, alpha, s, n)
        out += [(method, alpha, s, t, 0.0 if o else 1.0, "converged") for t, o in enumerate(ok)]
    return pd.DataFrame(out, columns=["method", "alpha", "s", "trial", "rel_error_l1", "status"])


def run_adaptive(world: World, spec: adaptive.AdaptiveSpec, methods: list[str],
                 base_alpha: list[float], base_s: list[int]) -> tuple[dict, int]:
    """The adaptive procedure in memory: returns (cell -> trials, rounds)."""
    plan = {(m, a, s): spec.trials_start for m in methods for a in base_alpha for s in base_s}
    counts: dict[tuple, tuple[int, int]] = {}
    rounds = 0
    while plan:
        rounds += 1
        for key, n in plan.items():
            counts[key] = (int(world.outcomes(*key, n).sum()), n)
        grid = [adaptive.axis("method", "category", methods),
                adaptive.axis("alpha", "log", base_alpha, {k[1] for k in counts}),
                adaptive.axis("s", "integer", base_s, {k[2] for k in counts})]
        nxt = adaptive.next_round(counts, spec, grid)
        plan = nxt.trials
    return {k: n for k, (_, n) in counts.items()}, rounds


def one_repetition(seed: int, k: float, paired: bool, spec: adaptive.AdaptiveSpec,
                   base_alpha: list[float], base_s: list[int], full: bool = True) -> dict:
    """One seed: the adaptive run, its contours, and (``full``) the full grid's."""
    x0 = {"gd": lambda s: -2.6 + 0.25 * s, "wn": lambda s: -1.9 + 0.2 * s}
    methods = sorted(x0)
    world = World(seed, k, x0, spec.trials_max, paired)
    cells, n_rounds = run_adaptive(world, spec, methods, base_alpha, base_s)
    ad = contours(rows(world, cells), success=SUCCESS, confidence=spec.confidence,
                  model="logistic")
    ad["truth"] = [world.crossing(m, s) for m, s in zip(ad["method"], ad["s"])]
    ad["covers"] = (ad["crossing_low"] <= ad["truth"]) & (ad["truth"] <= ad["crossing_high"])
    out = dict(seed=seed, rounds=n_rounds, runs=sum(cells.values()), columns=len(ad),
               covered=int(ad["covers"].sum()), no_interval=int(ad["crossing_low"].isna().sum()),
               separated=int(ad["reason"].str.startswith("separated").sum()), table=ad)
    fine_a = adaptive.finest_values(base_alpha, "log", spec.refine)
    fine_s = adaptive.finest_values(base_s, "integer", spec.refine)
    out["grid_runs"] = len(methods) * len(fine_a) * len(fine_s) * spec.trials_max
    if full:
        grid_cells = {(m, a, s): spec.trials_max for m in methods for a in fine_a for s in fine_s}
        gr = contours(rows(world, grid_cells), success=SUCCESS, confidence=spec.confidence,
                      model="logistic")
        both = ad.merge(gr[["method", "s", "crossing", "crossing_low", "crossing_high"]],
                        on=["method", "s"], suffixes=("", "_grid"))
        both["agrees"] = ((both["crossing_low"] <= both["crossing_grid"])
                          & (both["crossing_grid"] <= both["crossing_high"]))
        gr["truth"] = [world.crossing(m, s) for m, s in zip(gr["method"], gr["s"])]
        out.update(grid_columns=len(both), agrees=int(both["agrees"].sum()),
                   grid_defined=int(both["crossing_grid"].notna().sum()),
                   grid_covered=int(((gr["crossing_low"] <= gr["truth"])
                                     & (gr["truth"] <= gr["crossing_high"])).sum()),
                   grid_all=len(gr))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--k", type=float, default=-4.0, help="slope per decade of alpha")
    ap.add_argument("--paired", choices=["yes", "no"], default="no")
    ap.add_argument("--start", type=int, default=8)
    ap.add_argument("--max", type=int, default=64)
    ap.add_argument("--refine", type=int, default=3)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--no-grid", action="store_true", help="skip the full-grid comparison")
    args = ap.parse_args(argv)
    spec = adaptive.AdaptiveSpec("rel_error_l1", at_most=1e-2, along="alpha", across="s",
                                 trials_start=args.start, trials_max=args.max,
                                 confidence=args.confidence, refine=args.refine)
    base_alpha, base_s = logspace(-3, 0, 7), [2, 4, 6, 8]
    print(f"true p = F({args.k} (log10 alpha - x0(method, s))), base grid 7 alphas (1e-3..1) x "
          f"s in {base_s} x 2 methods, trials {args.start}->{args.max}, refine {args.refine}, "
          f"confidence {args.confidence}, paired trials: {args.paired}")
    head = (f"{'seed':>4} {'rounds':>6} {'adaptive':>8} {'grid':>7} {'share':>6} {'columns':>7} "
            f"{'covers':>6} {'no int':>6} {'separ':>5}" + ("" if args.no_grid else
                                                            f" {'grid in adapt':>13}"))
    print(head)
    tot = dict(runs=0, grid_runs=0, columns=0, covered=0, no_interval=0, separated=0,
               grid_columns=0, agrees=0, grid_covered=0, grid_all=0)
    t0 = time.perf_counter()
    for seed in range(args.reps):
        r = one_repetition(seed, args.k, args.paired == "yes", spec, base_alpha, base_s,
                           full=not args.no_grid)
        for key in tot:
            tot[key] += r.get(key, 0)
        line = (f"{seed:>4} {r['rounds']:>6} {r['runs']:>8} {r['grid_runs']:>7} "
                f"{r['runs'] / r['grid_runs']:>6.1%} {r['columns']:>7} {r['covered']:>6} "
                f"{r['no_interval']:>6} {r['separated']:>5}")
        if not args.no_grid:
            line += f" {r['agrees']:>6}/{r['grid_columns']:<6}"
        print(line)
    print(f"total: adaptive {tot['runs']} runs = {tot['runs'] / tot['grid_runs']:.1%} of the "
          f"full grid's {tot['grid_runs']}; true crossing inside the adaptive interval in "
          f"{tot['covered']}/{tot['columns']} columns = {tot['covered'] / tot['columns']:.1%} "
          f"(NaN interval counted as a miss: {tot['no_interval']})")
    if not args.no_grid:
        print(f"full-grid crossing inside the adaptive interval: {tot['agrees']}/"
              f"{tot['grid_columns']} = {tot['agrees'] / tot['grid_columns']:.1%}; full grid's "
              f"own coverage of the truth: {tot['grid_covered']}/{tot['grid_all']} = "
              f"{tot['grid_covered'] / tot['grid_all']:.1%}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
