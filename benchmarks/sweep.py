"""Sweep-level speed: a whole `wnsweep run` process against a naive loop, and serial vs Ray.

Default: the whole-process measurement. A serial sweep shaped like the paper's (64 instances x 6
runs: M = 40, N = 100, nonneg, L = 2, alpha in {0.01, 0.1, 1} x {GD, WN-GD normalized,
eta~ = 0.1}, 20,000 steps, tol = 0) is run as a subprocess, `python -m pipeline run <sweep>
--executor serial --out <tmp>`, and its wall time (imports, planning, basis pursuit, the engine,
writing Parquet: everything a user waits for) is compared with a naive per-run numpy loop
(benchmarks/engine.py's) on the same runs, timed on a sample of them and extrapolated to all. The
target is >= 10x. ``--quick`` runs 16 instances x 2,000 steps.

``--executors``: the same 10,000-run sweep (2,000 steps, (40, 100)) through the serial executor
and through Ray: wall time of each, runs/s and the speedup of Ray over serial (ideal: the number
of CPUs). Ray's start-up (a few seconds, paid once per `wnsweep run`) is timed separately and left
out of the speedup, as are the one-time costs of each process (imports and cvxpy's first solve,
warmed up before timing, in the serial process as in each Ray worker).

Usage: python benchmarks/sweep.py [--quick] [--trials 64] [--steps 20000] [--naive-runs 6]
       python benchmarks/sweep.py --executors [--runs 10000] [--steps 2000] [--cpus 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
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

#: The whole-process sweep: 6 runs per instance (3 alphas x GD, WN-GD).
PAPER_SWEEP = """\
name: whole-process
seed: 0
trials: {trials}
problem: {{M: 40, N: 100, sparsity: [5], sign: [nonneg]}}
model: {{depth: [2]}}
init: {{scheme: [constant], alpha: [0.01, 0.1, 1.0]}}
methods:
  gd: {{eta: [0.01]}}
  wn: {{eta: [0.01], eta_ratio: [0.1], schedule: [normalized]}}
train: {{max_iters: [{steps}], tol: [0.0], checkpoints: 32}}
"""


def _warm_up() -> None:
    """What a process pays once per sweep: importing the task code (numpy, cvxpy, pyarrow) and
    cvxpy's first solve (its lazy imports and first canonicalization, about a second)."""
    import numpy as np

    from pipeline.families.diagonal import reference

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


def whole_process(args: argparse.Namespace) -> None:
    """The whole `wnsweep run` process against the naive loop on the same runs."""
    from threadpoolctl import threadpool_limits

    from benchmarks.engine import naive_run
    from pipeline.families.diagonal import initialization, problems
    from pipeline.families.diagonal import run as diagonal_run

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(PAPER_SWEEP.format(trials=args.trials, steps=args.steps))
        the_plan = plan.make_plan(spec.load_spec(path))
        runs, insts = the_plan.runs, {i.instance_id: i for i in the_plan.instances}
        print(f"sweep: {len(the_plan.instances)} instances x {len(runs) // len(insts)} runs, "
              f"(M, N) = (40, 100), nonneg, L = 2, {args.steps} steps each, tol 0; "
              f"{os.cpu_count()} CPUs on this machine, load average "
              f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        # the naive loop on a sample of the same runs: GD and WN at every alpha, first instances
        sample = [r for r in runs if r.instance_id == runs[0].instance_id]
        sample = (sample * args.naive_runs)[:args.naive_runs]

        def naive_sample() -> float:
            with threadpool_limits(limits=1, user_api="blas"):
                start = time.perf_counter()
                for run in sample:
                    inst = insts[run.instance_id]
                    signed = inst.sign == "signed"
                    problem = problems.generate_instance(inst.M, inst.N, inst.s, signed, inst.seed)
                    naive_run(problem.A, problem.b, diagonal_run.engine_config(inst, run),
                              initialization.initial_weights(inst.N, run.alpha, None))
                return (time.perf_counter() - start) / len(sample)

        # interleaved, best of each: this machine's speed drifts by tens of percent over minutes,
        # and a ratio of timings taken minutes apart would carry that drift
        walls, naives = [], []
        for k in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "pipeline", "run", str(path), "--executor", "serial",
                 "--out", f"{tmp}/out-{k}", "--no-progress"],
                env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"the sweep failed ({proc.returncode}):\n{proc.stderr}")
            naives.append(naive_sample())
        wall, naive_each = min(walls), min(naives)
    naive = naive_each * len(runs)
    run_steps = len(runs) * args.steps
    print(f"\nwhole process, serial (best of {args.repeats}): {wall:8.1f} s  "
          f"({1e6 * wall / run_steps:.3f} us per run-step, everything included)")
    print(f"naive per-run loop, {len(sample)} runs timed (best of {args.repeats}), extrapolated "
          f"to {len(runs)}: "
          f"{naive:8.1f} s  ({1e6 * naive_each / args.steps:.3f} us per run-step)")
    print(f"speedup: {naive / wall:.1f}x (target >= 10x)")


def executors_benchmark(args: argparse.Namespace) -> None:
    """Serial vs Ray on the same 10,000-run sweep (see the module docstring)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's workers import this checkout's pipeline too, not an installed copy
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")]))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", action="store_true",
                        help="serial vs Ray throughput instead of the whole-process measurement")
    parser.add_argument("--quick", action="store_true",
                        help="whole process: 16 instances x 2,000 steps, one repeat; executors: "
                             "1,000 runs x 500 steps, one repeat")
    parser.add_argument("--trials", type=int, default=64, help="whole process: instances")
    parser.add_argument("--naive-runs", type=int, default=6,
                        help="whole process: runs timed in the naive loop")
    parser.add_argument("--runs", type=int, default=10_000, help="executors: runs in the sweep")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per run (default 20,000; executors: 2,000)")
    parser.add_argument("--cpus", type=int, default=2, help="executors: Ray CPUs")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many sweeps")
    args = parser.parse_args()
    if args.executors:
        args.steps = args.steps or 2_000
        if args.quick:
            args.runs, args.steps, args.repeats = 1_000, 500, 1
        executors_benchmark(args)
    else:
        args.steps = args.steps or 20_000
        if args.quick:
            args.trials, args.steps, args.repeats, args.naive_runs = 16, 2_000, 1, 4
        whole_process(args)


if __name__ == "__main__":
    main()
