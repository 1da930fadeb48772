"""Sweep throughput: the same 10,000-run sweep through the serial executor and through Ray.

Each run is a GD or WN-GD run on a (M, N) = (40, 100) nonneg instance for 2,000 steps (tol = 0,
so no run stops early unless it diverges). Prints the wall time of each executor, runs/s and the
speedup of Ray over serial; with 2 CPUs the ideal is 2.0. Ray's start-up (a few seconds, paid once
per `wnsweep run`) is timed separately and left out of the speedup, which is about steady-state
throughput; so are the one-time costs of each process, its imports and cvxpy's first solve
(warmed up before timing, in the serial process as in each Ray worker).

Usage: python benchmarks/sweep.py [--runs 10000] [--steps 2000] [--cpus 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline import executors, plan, spec, sweep  # noqa: E402

SWEEP = """\
name: bench-sweep
seed: 0
trials: {trials}
problem: {{M: 40, N: 100, sparsity: [3, 5], sign: nonneg}}
model: {{depth: 2}}
init: {{scheme: [constant, random], alpha: {{logspace: [-1, 0, 25]}}}}
methods:
  gd: {{eta: 0.01}}
  wn: {{eta: 0.01, eta_ratio: [0.01, 0.1, 1, 10], schedule: normalized}}
train: {{max_iters: {steps}, tol: 0.0, checkpoints: 32}}
"""
RUNS_PER_TRIAL = 2 * 2 * 25 * 5  # sparsity x init x alpha x methods


def _warm_up() -> None:
    """What a process pays once per sweep: importing the task code (numpy, cvxpy, pyarrow) and
    cvxpy's first solve (its lazy imports and first canonicalization, about a second)."""
    import numpy as np

    from pipeline import reference

    reference.basis_pursuit(np.array([[1.0, 2.0, 3.0]]), np.array([1.0]), nonneg=True)


def _warm_up_workers(cpus: int) -> None:
    """Start one worker per CPU and warm each up (see _warm_up)."""
    import ray

    @ray.remote(num_cpus=1)
    def warm() -> int:
        _warm_up()
        time.sleep(0.5)  # hold the CPU so that the next call starts another worker
        return os.getpid()

    pids = ray.get([warm.remote() for _ in range(cpus)])
    assert len(set(pids)) == cpus, pids


def _best(repeats: int, run):
    """The fastest of ``repeats`` runs (each into a fresh folder): this machine's timing noise is
    about 10% from one sweep to the next."""
    return min((run(k) for k in range(repeats)), key=lambda outcome: outcome.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=2_000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="each executor's best wall time of this many full sweeps")
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    trials = max(1, round(args.runs / RUNS_PER_TRIAL))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(SWEEP.format(trials=trials, steps=args.steps))
        n_runs = len(plan.make_plan(spec.load_spec(path)).runs)
        print(f"sweep: {n_runs} runs, (M, N) = (40, 100), {args.steps} steps each, "
              f"{os.cpu_count()} CPUs on this machine, Ray with {args.cpus}")

        _warm_up()  # the serial run pays the same one-time costs as each Ray worker, untimed
        serial = _best(args.repeats, lambda k: sweep.run_sweep(
            str(path), out=f"{tmp}/serial-{k}", executor="serial", progress=False))
        t0 = time.perf_counter()
        executors.init_ray(None, num_cpus=args.cpus)
        _warm_up_workers(args.cpus)
        ray_start = time.perf_counter() - t0
        try:
            ray_run = _best(args.repeats, lambda k: sweep.run_sweep(
                str(path), out=f"{tmp}/ray-{k}", executor="ray", progress=False))
        finally:
            executors.shutdown_ray()
    assert serial.computed == ray_run.computed == n_runs, (serial, ray_run)
    print(f"\nbest of {args.repeats} sweeps each")
    print(f"{'executor':<10} {'tasks':>6} {'wall s':>8} {'runs/s':>9}")
    for name, outcome in (("serial", serial), ("ray", ray_run)):
        print(f"{name:<10} {outcome.tasks:>6} {outcome.seconds:>8.1f} "
              f"{n_runs / outcome.seconds:>9.0f}")
    print(f"\nRay start-up and worker warm-up (not in the wall times above): {ray_start:.1f} s")
    print(f"speedup ray / serial: {serial.seconds / ray_run.seconds:.2f} "
          f"(ideal {args.cpus:.1f}; target >= {0.9 * args.cpus:.1f})")
    with_start = serial.seconds / (ray_run.seconds + ray_start)
    print(f"speedup including Ray start-up: {with_start:.2f}")


if __name__ == "__main__":
    main()
