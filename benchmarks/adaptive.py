"""An adaptive phase diagram against the full grid it stands for (docs/SWEEP_FILES.md, "Adaptive
sweeps").

One diagram, GD and WN-GD, alpha x s, nonneg, run twice on a local Ray instance:

* adaptively: the base grid at ``trials.start``, then rounds (``pipeline.rounds``);
* as the full grid at the adaptive run's finest resolution (every value ``refine`` bisections
  can reach) with ``trials.max`` trials per cell.

Printed: runs spent and wall time both ways, the CPU utilization of each adaptive round (the
tasks' wall time over CPUs x the round's elapsed time; the barrier between rounds is where CPUs
idle), and per column (method, s) both crossings of the success contour with their intervals
(``analysis.contours``), and whether the grid's crossing lies inside the adaptive interval.
Targets (issue 18): adaptive <= 20% of the grid's runs; the grid's crossing inside the adaptive
interval for >= 90% of the columns.

    python benchmarks/adaptive.py                 # 20 x 50 instances, ~10 minutes on 2 CPUs
    python benchmarks/adaptive.py --quick         # a smaller diagram, ~2 minutes
    python benchmarks/adaptive.py --refine 3      # the flagship's resolution, ~4 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SWEEP = """\
name: {name}
seed: 12
{trials}problem: {{M: {M}, N: {N}, sparsity: {s}, sign: nonneg}}
model: {{depth: 2}}
init: {{scheme: constant, alpha: {alpha}}}
methods:
  gd: {{eta: 0.05}}
  wn: {{eta: 0.05, eta_ratio: 0.1, schedule: normalized}}
train: {{max_iters: {iters}, tol: 1.0e-12, checkpoints: 16}}
{adaptive}"""

ADAPTIVE = """\
adaptive:
  success: {{column: rel_error_l1, at_most: 1.0e-2}}
  level: 0.5
  along: alpha
  across: s
  trials: {{start: {start}, max: {most}}}
  confidence: 0.95
  refine: {refine}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller diagram")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--keep", help="keep both results folders in this folder")
    parser.add_argument("--refine", type=int, help="bisection levels (default 2; "
                        "sweeps/robustness-adaptive.yaml uses 3)")
    args = parser.parse_args()
    import analysis
    from pipeline import executors, rounds, sweep
    from pipeline.spec import parse_spec

    if args.quick:
        size = dict(M=15, N=40, s="[1, 3, 5]", iters=10000)
        design = dict(alpha="{logspace: [-3, 0, 4]}", start=8, most=32, refine=2)
    else:
        size = dict(M=20, N=50, s="[1, 3, 5, 7]", iters=20000)
        design = dict(alpha="{logspace: [-3, 0, 4]}", start=8, most=64, refine=2)
    if args.refine is not None:
        design["refine"] = args.refine
    adaptive_text = SWEEP.format(name="bench-adaptive", trials="", alpha=design["alpha"],
                                 adaptive=ADAPTIVE.format(**design), **size)
    spec = parse_spec(adaptive_text)
    finest = rounds.finest_spec(spec)
    alphas = "[" + ", ".join(repr(a) for a in finest.axes["alpha"]) + "]"
    grid_size = {**size, "s": "[" + ", ".join(str(s) for s in finest.axes["s"]) + "]"}
    grid_text = SWEEP.format(name="bench-grid", trials=f"trials: {design['most']}\n",
                             alpha=alphas, adaptive="", **grid_size)

    executors.init_ray(None, num_cpus=args.num_cpus)
    out = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        for name, text in (("adaptive", adaptive_text), ("grid", grid_text)):
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text)
            start = time.perf_counter()
            outcome = sweep.run_sweep(str(path), out=str(Path(tmp) / name), progress=False,
                                      num_cpus=args.num_cpus)
            out[name] = {"runs": outcome.computed, "seconds": time.perf_counter() - start,
                         "folder": Path(tmp) / name}
            assert not outcome.failed, outcome.failed
        manifest = json.loads((out["adaptive"]["folder"] / "manifest.json").read_text())
        adaptive_runs = analysis.load(str(out["adaptive"]["folder"]))
        grid_runs = analysis.load(str(out["grid"]["folder"]))
        kw = dict(along="alpha", across="s", level=0.5, confidence=0.95,
                  success={"column": "rel_error_l1", "at_most": 1e-2})
        fits = {model: (analysis.contours(adaptive_runs, model=model, **kw)
                        .set_index(["method", "s"]),
                        analysis.contours(grid_runs, model=model, **kw).set_index(["method", "s"]))
                for model in ("logistic", "plateau")}
    executors.shutdown_ray()

    print(f"diagram: GD and WN-GD (eta~ 0.1), alpha x s, nonneg, M = {size['M']}, "
          f"N = {size['N']}; base alpha {design['alpha']}, s {size['s']}, trials "
          f"{design['start']} -> {design['most']}, refine {design['refine']}; "
          f"{args.num_cpus} CPUs (Ray)")
    ratio = out["adaptive"]["runs"] / out["grid"]["runs"]
    print(f"\n{'':10} {'runs':>8} {'wall s':>8}")
    for name in ("adaptive", "grid"):
        print(f"{name:10} {out[name]['runs']:>8} {out[name]['seconds']:>8.1f}")
    print(f"adaptive / grid: {ratio:.1%} of the runs (target <= 20%), "
          f"{out['adaptive']['seconds'] / out['grid']['seconds']:.1%} of the wall time")
    print(f"\n{'round':>5} {'runs':>6} {'tasks':>6} {'seconds':>8} {'CPU use':>8}")
    for entry in manifest["invocations"]:
        elapsed = _seconds(entry)
        print(f"{entry['round']:>5} {entry['computed']:>6} {entry['tasks']:>6} {elapsed:>8.1f} "
              f"{entry['cpu_utilization']:>8.0%}")
    for model, (a, g) in fits.items():
        print(f"\ncontour model: {model} (analysis.contours(..., model={model!r}))")
        print(f"{'method':>6} {'s':>3} | {'adaptive crossing [interval]':>34} | "
              f"{'grid crossing [interval]':>34} | inside")
        inside = []
        for key in g.index:
            ga, aa = g.loc[key], a.loc[key] if key in a.index else None
            if aa is None or not np.isfinite(ga["crossing"]):
                flag = "n/a"
            else:
                ok = bool(aa["crossing_low"] <= ga["crossing"] <= aa["crossing_high"])
                inside.append(ok)
                flag = "yes" if ok else "NO"
            print(f"{key[0]:>6} {key[1]:>3} | {_fmt(aa)} | {_fmt(ga)} | {flag}")
        if inside:
            print(f"grid crossing inside the adaptive interval: {sum(inside)} of {len(inside)} "
                  f"columns ({np.mean(inside):.0%}; target >= 90%)")


def _fmt(row) -> str:
    if row is None or not np.isfinite(row["crossing"]):
        return f"{'-- ' + (row['reason'] if row is not None else 'absent'):>34}"[:34]
    return f"{row['crossing']:10.4g} [{row['crossing_low']:9.4g}, {row['crossing_high']:9.4g}]"


def _seconds(entry: dict) -> float:
    from datetime import datetime

    begin, end = (datetime.fromisoformat(entry[k]) for k in ("started", "finished"))
    return (end - begin).total_seconds()


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
