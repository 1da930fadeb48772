"""Scale: what the driver pays for planning, tracking and collecting a sweep, as the sweep grows.

Three tables (issue "Scale: plan, run and track sweeps of ten million runs"):

1. ``wnsweep plan`` (``sweep.plan_text``: validate, count, plan, group into tasks, summarize) of a
   one-setting sweep whose ``trials`` grow to 1e5, 1e6 and 1e7 runs, each in a fresh process
   capped at ``--memory-cap`` GB of address space and ``--plan-timeout`` seconds: wall time and
   peak resident memory (``ru_maxrss``). Targets: 1e7 runs within 30 s and 1 GB.
2. ``wnsweep status`` and resume's inventory on a folder of ``--stored`` runs (default 1e6: 100
   runs shards and 100 instances shards of 10,000 rows, the real schemas, 16-point curves, written
   by ``store.ResultsStore``): the metadata-only scan, ``status_text`` as the CLI prints it, and,
   for comparison, the scan that decodes every page (what status did before, and what
   ``analysis.load`` still does). Target: status of 1e6 stored runs within 5 s.
3. The driver's throughput in task results per second: ``on_result`` (the sweep's handler) for
   completions whose shards the workers wrote (the driver updates counters and the bar) and for
   completions it must write itself (one quickstart task's tables, to a local disk); and the
   whole Ray loop (``executors.run_ray``: submit, wait, get, ``on_result``) on empty tasks, in
   wall time and in the driver's CPU time, also with the 2,000-task window of a 1,000-CPU
   cluster. The cluster size at which the driver saturates is its rate x the seconds of one
   quickstart task (measured here, one task of the quickstart's default grouping on 2 CPUs):
   past that many CPUs, results arrive faster than the driver handles them.

Numbers are machine- and load-dependent; nothing is asserted. Usage:

    python benchmarks/scale.py            # all three tables (several minutes)
    python benchmarks/scale.py --quick    # plan at 1e5 and 1e6 only, 2e5 stored runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import pyarrow as pa

from pipeline import executors, plan, spec, sweep
from pipeline.results import schema, store

#: One setting, one run per instance: the run count is ``trials`` (the issue's new-user sweep).
ONE_SETTING = """\
name: scale
seed: 0
trials: {trials}
problem: {{M: 20, N: 50, sparsity: 3, sign: nonneg}}
model: {{depth: 2}}
init: {{alpha: 0.1}}
methods:
  gd: {{eta: 0.05}}
train: {{max_iters: 1000, tol: 1.0e-10, checkpoints: 16}}
"""

SHARD_ROWS = 10_000
CURVE_POINTS = 16


# -- 1. plan --------------------------------------------------------------------------------------

def _plan_child(path: str) -> None:
    """In a fresh process: time ``plan_text`` and report peak RSS (JSON on stdout)."""
    start = time.perf_counter()
    text = sweep.plan_text(path, out=os.path.join(os.path.dirname(path), "none"))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "tasks": text.split(" in ")[-1]}))


def bench_plan(sizes: list[int], cap_gb: float, timeout: float, folder: Path) -> list[dict]:
    rows = []
    for runs in sizes:
        path = folder / f"plan-{runs}.yaml"
        path.write_text(ONE_SETTING.format(trials=runs))
        baseline = _child(["--baseline"], cap_gb, timeout)
        row = {"runs": runs}
        try:
            result = _child(["--plan-child", str(path)], cap_gb, timeout)
            row.update(result, base=baseline["peak"])
        except subprocess.TimeoutExpired:
            row["failed"] = f"> {timeout:.0f} s (stopped)"
        except RuntimeError as exc:
            row["failed"] = str(exc)
        rows.append(row)
        print(_plan_line(row), flush=True)
    return rows


def _child(args: list[str], cap_gb: float, timeout: float) -> dict:
    def limit() -> None:
        cap = int(cap_gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, check=False,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"failed: {last[:60]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plan_line(row: dict) -> str:
    if "failed" in row:
        return f"| {row['runs']:>12,} | {row['failed']:>36} |"
    return (f"| {row['runs']:>12,} | {row['seconds']:>9.1f} | {row['peak'] / 2**20:>10.0f} | "
            f"{(row['peak'] - row['base']) / 2**20:>11.0f} |")


# -- 2. status and resume -------------------------------------------------------------------------

def _ids(prefix: str, start: int, n: int, length: int) -> pa.Array:
    digests = [prefix + hashlib.sha256(str(i).encode()).hexdigest()[:length]
               for i in range(start, start + n)]
    return pa.array(digests, pa.string())


def _column(field: pa.Field, n: int, rng: np.random.Generator) -> pa.Array:
    t = field.type
    if pa.types.is_list(t):
        values = rng.random(n * CURVE_POINTS)
        if pa.types.is_integer(t.value_type):
            values = np.tile(np.arange(CURVE_POINTS) * 64, n)
        offsets = np.arange(n + 1, dtype=np.int32) * CURVE_POINTS
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, t.value_type))
    if pa.types.is_integer(t):
        return pa.array(np.arange(n), t)
    if pa.types.is_floating(t):
        return pa.array(rng.random(n), t)
    return pa.array(["x"] * n, t)


def write_folder(out: Path, stored: int) -> tuple[float, int]:
    """A results folder of ``stored`` runs of the one-setting sweep (one run per instance), in
    shards of SHARD_ROWS rows, with synthetic values and run_ids of the real width, marked with
    the sweep's spec hash. Returns (seconds, bytes on disk)."""
    start = time.perf_counter()
    path = out.parent / "stored.yaml"
    path.write_text(ONE_SETTING.format(trials=stored))
    loaded = spec.load_spec(path)
    results = store.ResultsStore(str(out))
    results.prepare(loaded, source=str(path))
    rng = np.random.default_rng(0)
    meta = {schema.META_SPEC_HASH: loaded.spec_hash.encode()}
    for first in range(0, stored, SHARD_ROWS):
        n = min(SHARD_ROWS, stored - first)
        instance_ids = _ids("i-", first, n, 16)
        runs = {f.name: _column(f, n, rng) for f in schema.RUNS_SCHEMA}
        runs.update(run_id=_ids("r-", first, n, 20), instance_id=instance_ids,
                    x_final=pa.nulls(n, pa.list_(pa.float64())))
        instances = {f.name: _column(f, n, rng) for f in schema.INSTANCES_SCHEMA}
        instances.update(instance_id=instance_ids)
        task_id = hashlib.sha256(str(first).encode()).hexdigest()[:16]
        results.write_task(
            task_id,
            pa.table(runs, schema=schema.with_metadata(schema.RUNS_SCHEMA, meta)),
            pa.table(instances, schema=schema.with_metadata(schema.INSTANCES_SCHEMA, meta)))
    size = sum(f.stat().st_size for f in out.rglob("*.parquet"))
    return time.perf_counter() - start, size


def _status_child(out: str, mode: str) -> None:
    """In a fresh process (cold Python, warm OS cache): time one way of reading the folder."""
    start = time.perf_counter()
    if mode == "status":
        text, _ = sweep.status_text(out)
        detail = text.splitlines()[-1]
    elif mode == "inventory":
        inventory = store.ResultsStore(out).inventory()
        detail = f"{len(inventory.run_ids):,} run_ids, {len(inventory.done)} done pairs"
    else:  # every page decoded, the run_id column kept: what status used to read
        inventory = store.ResultsStore(out).scan(columns=["run_id"])
        detail = f"{len(inventory.run_ids):,} run_ids"
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "detail": detail}))


def bench_status(stored: int, folder: Path, cap_gb: float, timeout: float) -> list[dict]:
    out = folder / "stored"
    seconds, size = write_folder(out, stored)
    print(f"folder: {stored:,} runs in {len(list((out / 'runs').iterdir()))} runs shards, "
          f"{size / 2**20:.0f} MB, written in {seconds:.1f} s", flush=True)
    rows = []
    for mode, label in (("inventory", "resume's inventory (footers + run_id)"),
                        ("status", "wnsweep status (the same + counts)"),
                        ("decode", "every page decoded (before; analysis.load)")):
        result = _child(["--status-child", str(out), mode], cap_gb, timeout)
        rows.append({"what": label, **result})
        print(f"| {label:<44} | {result['seconds']:>7.2f} | "
              f"{result['peak'] / 2**20:>8.0f} | {result['detail']}", flush=True)
    return rows


# -- 3. the driver's throughput -------------------------------------------------------------------

QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"


def quickstart_task() -> tuple[plan.Task, float, executors.Completed]:
    """One task of the quickstart as `wnsweep run` groups it on 2 CPUs, run here once: the task,
    its wall time, and its completion with tables (what a driver that writes receives)."""
    loaded = spec.load_spec(QUICKSTART)
    tasks = plan.make_plan(loaded).tasks(min_tasks=8 * 2)
    task = tasks[0]
    from pipeline.families.diagonal.reference import silence_highs_banner

    silence_highs_banner()
    executors.run_task(task)  # warm-up: imports, cvxpy's first solve
    start = time.perf_counter()
    result = executors.run_task(task)
    return task, time.perf_counter() - start, executors.Completed(
        task.task_id, result.runs.num_rows, result)


def _handler(results: store.ResultsStore):
    """The sweep's ``on_result`` (pipeline/sweep.py ``_execute``), with the bar it drives."""
    from tqdm import tqdm

    bar = tqdm(total=10 ** 9, disable=True)
    computed = 0

    def on_result(done: executors.Completed) -> None:
        nonlocal computed
        if done.result is not None:
            results.write_task(done.task_id, done.result.runs, done.result.instances)
        computed += done.runs
        bar.update(done.runs)

    return on_result


def bench_driver(folder: Path, results_n: int, ray_tasks: int, skip_ray: bool) -> dict:
    task, task_seconds, with_tables = quickstart_task()
    results = store.ResultsStore(str(folder / "driver"))
    results.prepare(spec.load_spec(QUICKSTART))
    on_result = _handler(results)
    light = [executors.Completed(f"{i:016x}", with_tables.runs) for i in range(results_n)]
    start = time.perf_counter()
    for done in light:
        on_result(done)
    worker_writes = results_n / (time.perf_counter() - start)
    heavy = 200
    start = time.perf_counter()
    for i in range(heavy):
        on_result(executors.Completed(f"{i:016x}", with_tables.runs, with_tables.result))
    driver_writes = heavy / (time.perf_counter() - start)
    out = {"task_seconds": task_seconds, "task_runs": len(task.runs),
           "on_result (workers wrote)": worker_writes,
           "on_result (driver writes, local disk)": driver_writes}
    if not skip_ray:
        wall, cpu, wide = _ray_loop_rate(ray_tasks, folder / "empty")
        out["Ray loop, empty tasks, wall (2 CPUs)"] = wall
        out["Ray loop, driver CPU per result"] = cpu
        out["the same, 2,000 tasks in flight"] = wide
    return out


def _ray_loop_rate(n: int, out: Path) -> tuple[float, float, float]:
    """Results per second through ``executors.run_ray`` on empty tasks (no instance: the task
    writes its two empty shards and returns), with the sweep's handler, on a local Ray of 2 CPUs:
    (per second of wall time, which the 2 shared CPUs bound, and per second of the driver's CPU
    time, its threads included: the rate at which the driver alone would saturate), and the
    latter again with the window of a 1,000-CPU cluster (2,000 tasks in flight: every wait
    scans the window)."""
    loaded = spec.load_spec(QUICKSTART)
    results = store.ResultsStore(str(out))
    results.prepare(loaded)
    empty = [plan.Task(f"{i:016x}", "scale", loaded.spec_hash, "HIGHS", False, (), ())
             for i in range(n)]
    executors.init_ray(None, num_cpus=2)
    try:
        executors.run_ray(empty[:50], lambda done: None, out=results.uri)  # workers started
        on_result = _handler(results)
        start, cpu = time.perf_counter(), time.process_time()
        report = executors.run_ray(empty, on_result, out=results.uri)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert report.completed == n and report.written_by_driver == 0
        again = [plan.Task(f"{i:016x}", "scale", loaded.spec_hash, "HIGHS", False, (), ())
                 for i in range(n, 3 * n)]
        wide = time.process_time()
        report = executors.run_ray(again, on_result, out=results.uri, max_in_flight=2000)
        wide = time.process_time() - wide
        assert report.completed == 2 * n
        return n / wall, n / cpu, 2 * n / wide
    finally:
        executors.shutdown_ray()


# -- main -----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="plan at 1e5 and 1e6 runs only, "
                        "2e5 stored runs, fewer results")
    parser.add_argument("--stored", type=int, help="stored runs for the status table "
                        "(default 1e6; --quick 2e5)")
    parser.add_argument("--memory-cap", type=float, default=3.0,
                        help="address-space cap of each plan process, GB (default 3)")
    parser.add_argument("--plan-timeout", type=float, default=180.0,
                        help="seconds before a plan process is stopped (default 180)")
    parser.add_argument("--skip-ray", action="store_true", help="no Ray loop measurement")
    parser.add_argument("--tables", default="plan,status,driver",
                        help="which tables, comma-separated (default plan,status,driver)")
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan-child", help=argparse.SUPPRESS)
    parser.add_argument("--status-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:  # the imports' share of a child's peak memory
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"peak": peak}))
        return
    if args.plan_child:
        _plan_child(args.plan_child)
        return
    if args.status_child:
        _status_child(*args.status_child)
        return

    sizes = [10 ** 5, 10 ** 6] if args.quick else [10 ** 5, 10 ** 6, 10 ** 7]
    stored = args.stored or (200_000 if args.quick else 1_000_000)
    print(f"wnsweep scale benchmark: {os.cpu_count()} CPUs seen, load average "
          f"{os.getloadavg()[0]:.1f} (numbers measured under that load)\n")
    tables = set(args.tables.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "plan" in tables:
            _plan_table(sizes, args, folder)
        if "status" in tables:
            _status_table(stored, args, folder)
        if "driver" in tables:
            _driver_table(args, folder)


def _plan_table(sizes: list[int], args: argparse.Namespace, folder: Path) -> None:
    print("## 1. wnsweep plan of a one-setting sweep (one run per instance)\n")
    print(f"| {'runs':>12} | {'seconds':>9} | {'peak MB':>10} | {'- imports':>11} |")
    print(f"|{'-' * 14}|{'-' * 11}|{'-' * 12}|{'-' * 13}|")
    bench_plan(sizes, args.memory_cap, args.plan_timeout, folder)
    print(f"\ntargets: 1e7 runs within 30 s and 1,024 MB (cap here {args.memory_cap} GB, "
          f"{args.plan_timeout:.0f} s)\n")


def _status_table(stored: int, args: argparse.Namespace, folder: Path) -> None:
    print(f"## 2. status and resume of {stored:,} stored runs (local disk)\n")
    print(f"| {'read':<44} | {'seconds':>7} | {'peak MB':>8} | result")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 10}|{'-' * 8}")
    bench_status(stored, folder, args.memory_cap, args.plan_timeout)
    print("\ntarget: status of 1e6 stored runs within 5 s\n")


def _driver_table(args: argparse.Namespace, folder: Path) -> None:
    print("## 3. the driver's throughput, and the cluster it saturates at\n")
    n = 20_000 if args.quick else 200_000
    driver = bench_driver(folder, n, 500 if args.quick else 2000, args.skip_ray)
    seconds = driver.pop("task_seconds")
    runs = driver.pop("task_runs")
    print(f"one quickstart task: {runs} runs, {seconds:.1f} s on one CPU\n")
    print(f"| {'driver step':<42} | {'results/s':>10} | {'saturates at CPUs':>17} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 19}|")
    loop = driver.get("the same, 2,000 tasks in flight")
    if loop:  # the driver's whole cost per result: the Ray loop plus its handler
        for mode in ("workers wrote", "driver writes, local disk"):
            driver[f"driver in all ({mode})"] = 1 / (1 / loop + 1 / driver[f"on_result ({mode})"])
    for label, rate in driver.items():
        print(f"| {label:<42} | {rate:>10,.0f} | {rate * seconds:>17,.0f} |")
    print("\nsaturation = results/s x seconds per task: with more CPUs than that, tasks of the "
          "quickstart's size finish faster than that step handles them.")


if __name__ == "__main__":
    main()
