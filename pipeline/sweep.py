"""A sweep end to end: spec -> plan -> (resume) -> execute -> shards. The CLI and tests call this.

Size: a sweep of more than ``max_runs`` runs (default ``MAX_RUNS``, ``--max-runs``) is refused
before it is planned, from the run count of the validated spec (``plan.count_runs``), with a
message naming its axes and their product: a typo's extra zeros in ``trials`` costs nothing.

Planning is lazy (``plan.lazy_tasks``): a task is a few integers, expanded into its runs where it
runs, so a fresh sweep costs the driver per task, not per run.

Resume: the store's inventory (shard footers and run_id columns only, ``pipeline.results.folder``) says
which run_ids already sit in valid shards; each task is then expanded on the driver as it is
submitted, and only its other runs are computed (``Pending``). Unusable shards (truncated,
corrupt, half-written) are moved to ``corrupt/`` first, so their runs are computed again and the
dataset never holds a damaged file.

Who writes the shards: the task that computed them, where it ran, when the output is an object
store or a local path that task's node sees (``executors``); otherwise the driver. Either way a
task's two shards keep the task's name, so a retried or repeated task rewrites them whole.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass

from tqdm import tqdm

from pipeline import adaptive, executors, rounds
from pipeline.plan import (TASK_SECONDS, LazyTask, Plan, count_runs, lazy_tasks,
                           run_count_factors, summarize_lazy)
from pipeline.results import lock, store
from pipeline.spec import SpecError, SweepSpec, load_spec, parse_spec

#: The most runs a sweep may have unless ``max_runs`` (``--max-runs``) says otherwise.
MAX_RUNS = 100_000_000


@dataclass
class SweepOutcome:
    out: str
    planned: int  # runs in the sweep
    already: int  # runs found stored before this invocation
    computed: int  # runs computed now
    tasks: int
    failed: list[tuple[str, str]]
    seconds: float
    written_by_driver: int = 0  # shards the driver wrote (the others: where their task ran)
    write_problem: str = ""  # why a task could not write its own shards, when one could not


def default_out(spec: SweepSpec) -> str:
    return os.path.join("results", spec.name)


class SweepTooLarge(SpecError):
    """A sweep with more runs than allowed (``max_runs``), refused before it is planned."""


def check_size(spec: SweepSpec, max_runs: int = MAX_RUNS) -> int:
    """The sweep's run count; SweepTooLarge naming its axes and their product when above
    ``max_runs``. Arithmetic on the validated spec: nothing is expanded. An adaptive sweep
    counts its upper bound, the full grid at its finest resolution with ``trials.max``."""
    if spec.adaptive is not None:
        spec = rounds.finest_spec(spec)
    runs = count_runs(spec)
    if runs <= max_runs:
        return runs
    families = run_count_factors(spec)
    sized = [factor for _, instance, shared, methods in families
             for factor in instance + shared + [a for _, axes in methods for a in axes]]
    largest = max(sized, key=lambda item: item[1])[0]

    def product(factors: list[tuple[str, int]]) -> str:
        return " x ".join(f"{field} {n:,}" for field, n in factors if n > 1) or "1"

    def size(factors: list[tuple[str, int]]) -> int:
        out = 1
        for _, n in factors:
            out *= n
        return out

    parts = []
    for family, instance, shared, methods in families:
        per_instance = size(shared) * sum(size(axes) for _, axes in methods)
        methods_text = " + ".join(f"{name} {size(axes):,}" + (
            f" ({product(axes)})" if size(axes) > 1 else "") for name, axes in methods)
        label = f"{family}: " if len(families) > 1 else ""
        parts.append(f"{label}{size(instance):,} instances ({product(instance)}) x "
                     f"{per_instance:,} runs per instance ({product(shared)} x methods "
                     f"[{methods_text}])")
    raise SweepTooLarge(
        spec.source, largest,
        f"{runs:,} runs, more than the maximum of {max_runs:,} (--max-runs): {runs:,} = "
        + " + ".join(parts) + "; reduce an axis or trials, or raise --max-runs")


#: Tasks per CPU on Ray: at least this many (when the sweep has the instances), so that the last
#: wave of tasks leaves little idle time.
TASKS_PER_CPU = 8


def min_tasks(executor: str, cpus: int) -> int:
    """The fewest tasks a sweep is cut into (``lazy_tasks``'s ``min_tasks``), the one rule
    `wnsweep plan` and `wnsweep run` share: 1 serially, ``TASKS_PER_CPU`` per CPU on Ray."""
    return TASKS_PER_CPU * cpus if executor == "ray" else 1


def plan_text(spec_path: str, out: str | None = None, max_runs: int = MAX_RUNS,
              executor: str = "ray", address: str | None = None, num_cpus: int | None = None,
              task_seconds: float | None = None) -> str:
    """What `wnsweep plan` prints, accounting for runs already stored in the output folder, with
    the tasks `wnsweep run` with the same options makes: serially, or on Ray for the CPUs of the
    cluster at ``address`` (connected to and read) or of a new local instance (``num_cpus``, else
    what Ray detects here; nothing started)."""
    task_seconds = TASK_SECONDS if task_seconds is None else task_seconds
    spec = load_spec(spec_path)
    check_size(spec, max_runs)
    _check_executor(executor)
    out = out or default_out(spec)
    cpus = executors.planned_cpus(address, num_cpus) if executor == "ray" else 1
    floor = min_tasks(executor, cpus)
    if spec.adaptive is not None:
        return _adaptive_plan(spec, out, executor, cpus, floor, task_seconds)
    done = _stored_run_ids(out)
    pending = Pending(lazy_tasks(spec, task_seconds=task_seconds, min_tasks=floor), done)
    tasks = list(pending)
    note = _tasks_note(executor, cpus, len(tasks), floor, task_seconds)
    text = summarize_lazy(spec, tasks) + f"\ntasks:     {len(tasks)} ({note})"
    if len(done):
        text += f"\nstored:    {pending.already} runs already in {out}"
    return text


def _adaptive_plan(spec: SweepSpec, out: str, executor: str, cpus: int, floor: int,
                   task_seconds: float) -> str:
    """``plan`` for an adaptive sweep: the round in progress (replayed from what ``out``
    holds), its tasks, and the bounds: the full grid at the finest resolution with max trials."""
    results = store.ResultsStore(out)
    outcomes = _outcomes(results, spec.adaptive) if results.exists() else {}
    state = rounds.replay(spec, outcomes)
    a = spec.adaptive
    lines = [f"sweep {spec.name} ({spec.source}), spec hash {spec.spec_hash[:12]}",
             f"adaptive:  the contour of P({a.success_column} "
             + (f"<= {a.at_most:g}" if a.at_most is not None else f">= {a.at_least:g}")
             + f") = {a.level:g} along {a.along}" + (f", per {a.across}" if a.across else "")
             + f"; trials {a.trials_start} to {a.trials_max}, refine {a.refine}",
             f"at most:   {rounds.full_grid_runs(spec)} runs: the full grid at the finest "
             f"resolution with {a.trials_max} trials per cell (what a grid sweep of that "
             "resolution costs; the rounds stop when every cell is decided, usually far below)"]
    if state.done:
        lines.append(f"done:      {sum(r.runs for r in state.rounds)} runs in "
                     f"{len(state.rounds)} rounds, all stored in {out}")
        return "\n".join(lines)
    runs = [r for _, rs in state.pending for r in rs]
    plan = Plan(spec=state.spec, instances=tuple(i for i, _ in state.pending), runs=tuple(runs))
    tasks = plan.tasks(task_seconds=task_seconds, min_tasks=floor, overhead_floor=False)
    note = _tasks_note(executor, cpus, len(tasks), floor, task_seconds)
    lines.append(f"round {state.round}:   {len(runs)} runs to compute"
                 + (f" ({state.rounds[-1].stored} of the round stored)" if outcomes else "")
                 + f", in {len(tasks)} tasks ({note})")
    return "\n".join(lines)


def _tasks_note(executor: str, cpus: int, tasks: int, floor: int, task_seconds: float) -> str:
    """Why `wnsweep plan` counts ``tasks`` tasks."""
    if executor != "ray":
        return f"serial: one after another, each at most ~{task_seconds:g} s of work"
    per_cpu = f"{TASKS_PER_CPU} per CPU for {cpus} CPU{'s' if cpus > 1 else ''}, Ray"
    if tasks == floor:
        return per_cpu
    if tasks > floor:
        return f"at least {per_cpu}; each at most ~{task_seconds:g} s of work (--task-seconds)"
    return (f"Ray, {cpus} CPU{'s' if cpus > 1 else ''}: {TASKS_PER_CPU} per CPU would be {floor}, "
            "but these runs split no further (a task holds whole instances and is worth its "
            "fixed cost)")


def _check_executor(executor: str) -> None:
    if executor not in ("serial", "ray"):
        raise ValueError(f"unknown executor {executor!r}; allowed: serial, ray")


class Pending:
    """The lazily planned tasks without the runs already ``stored``. With nothing stored, the
    tasks pass as they are (expanded where they run); otherwise each is expanded here, as it is
    taken, its run_ids hashed and the stored ones left out (a task with none left is skipped).
    Counts the runs left out (``already``) and the tasks given (``tasks``)."""

    def __init__(self, tasks: list[LazyTask], stored: store.RunIds):
        self.lazy, self.stored = tasks, stored
        self.already = 0
        self.tasks = 0

    def __iter__(self):
        for lazy in self.lazy:
            if not len(self.stored):
                self.tasks += 1
                yield lazy
                continue
            task = lazy.expand(skip=self.stored)
            self.already += lazy.runs_count - (len(task.runs) if task is not None else 0)
            if task is not None:
                self.tasks += 1
                yield task


def _stored_count(results: store.ResultsStore) -> int | None:
    """How many runs ``results`` holds (None when it cannot be read either)."""
    try:
        return len(results.inventory().run_ids)
    except Exception:  # noqa: BLE001  (the write failure is the error to report)
        return None


def _stored_run_ids(out: str) -> store.RunIds:
    results = store.ResultsStore(out)
    return results.inventory().run_ids if results.exists() else store.RunIds()


def run_sweep(spec_path: str, out: str | None = None, executor: str = "ray",
              address: str | None = None, force: bool = False, progress: bool | None = None,
              num_cpus: int | None = None, task_seconds: float | None = None,
              verbose: bool = False, max_runs: int = MAX_RUNS) -> SweepOutcome:
    """Run (or resume) a sweep into ``out`` (default results/<name>); ``verbose`` lets Ray's
    logs and the workers' output through (``executors.init_ray``). Raises SpecError on a bad
    sweep file (SweepTooLarge above ``max_runs`` runs), StoreError on an unusable output folder,
    lock.LockHeld when another live driver runs on it (``pipeline.results.lock``: one driver
    per folder) and ConnectionError when the Ray cluster cannot be reached, all before anything is written;
    StoreWriteError when a write into the folder fails (disk full, permission, an object store
    refusing it), with the runs stored so far counted and no temporary file left."""
    task_seconds = TASK_SECONDS if task_seconds is None else task_seconds
    spec = load_spec(spec_path)  # validation comes first: a bad file writes nothing
    planned = check_size(spec, max_runs)  # and the size, before anything is allocated
    out = out or default_out(spec)
    _check_executor(executor)
    results = store.ResultsStore(out)
    driver_lock = lock.DriverLock(results, verbose=verbose)
    write_failed = False
    driver_lock.check()  # a live driver there: refuse before starting Ray
    started_ray = executor == "ray" and executors.init_ray(
        address, num_cpus=num_cpus, verbose=verbose)
    try:
        try:
            driver_lock.acquire()  # one driver per folder, from the first write to the end
            source = os.path.abspath(spec_path) if "://" not in spec_path else spec_path
            manifest = results.prepare(spec, force=force, source=source)
            results.clean_temporaries()
            inventory = results.inventory()
            results.quarantine(inventory.corrupt)
            cpus = executors.cluster_cpus() if executor == "ray" else 1
            floor = min_tasks(executor, cpus)
            entry = {"started": store.now(), "executor": executor, "planned": planned,
                     "quarantined": [s.task_id for s in inventory.corrupt]}
            if spec.adaptive is not None:
                already, tasks, computed, report, planned = _run_rounds(
                    spec, results, manifest, entry, executor, cpus, floor, task_seconds,
                    progress)
            else:
                pending = Pending(lazy_tasks(spec, task_seconds=task_seconds, min_tasks=floor),
                                  inventory.run_ids)
                todo = planned - min(len(inventory.run_ids), planned)  # the bar's total
                computed, report = _execute(pending, todo, executor, results, manifest, entry,
                                            spec.name, progress)
                already, tasks = pending.already, pending.tasks
        except store.StoreWriteError as exc:  # say how much is stored: the rerun resumes it
            exc.planned, exc.stored = planned, _stored_count(results)
            write_failed = True
            raise
        finally:
            driver_lock.release()
    finally:
        if started_ray:
            executors.shutdown_ray()
        if write_failed:  # a worker stopped mid-write (cancelled) may have left a .tmp- file
            try:
                results.clean_temporaries()
            except Exception:  # noqa: BLE001  (the next run removes them)
                pass
    return SweepOutcome(out=out, planned=planned, already=already, computed=computed,
                        tasks=tasks, failed=report.failed, seconds=report.seconds,
                        written_by_driver=report.written_by_driver,
                        write_problem=report.write_problem)


def _run_rounds(spec: SweepSpec, results: store.ResultsStore, manifest: dict, entry: dict,
                executor: str, cpus: int, floor: int, task_seconds: float,
                progress: bool | None
                ) -> tuple[int, int, int, executors.ExecutionReport, int]:
    """An adaptive sweep (``pipeline.rounds``): replay the rounds from the stored outcomes, run
    the missing runs of the first incomplete round as ordinary tasks, and again, until the replay
    is done (or tasks failed: the rest waits for a rerun). A round's tasks are cut to
    ``floor`` (8 per CPU) even below the size their fixed cost would otherwise set: the next
    round waits for this one's last task. Each executed round is one invocation entry in the
    manifest, with its round, task ids and CPU utilization. Returns the runs stored before, the
    tasks run, the runs computed, the rounds' reports summed, and the runs the rounds asked for
    so far."""
    start = time.perf_counter()
    computed, total = 0, executors.ExecutionReport()
    state = rounds.replay(spec, _outcomes(results, spec.adaptive))
    already = sum(r.stored for r in state.rounds)
    while not state.done:
        plan = Plan(spec=state.spec, instances=tuple(i for i, _ in state.pending),
                    runs=tuple(r for _, runs in state.pending for r in runs))
        tasks = Pending(plan.tasks(task_seconds=task_seconds, min_tasks=floor,
                                   overhead_floor=False), store.RunIds())
        record = state.rounds[-1]
        round_entry = {**entry, "started": store.now(), "round": record.index,
                       "round_runs": record.runs}
        done, report = _execute(tasks, len(plan.runs), executor, results, manifest, round_entry,
                                f"{spec.name} round {record.index}", progress, cpus=cpus)
        computed += done
        total.absorb(report)
        if report.failed:
            break
        state = rounds.replay(spec, _outcomes(results, spec.adaptive))
    total.seconds = time.perf_counter() - start
    return (already, total.completed + len(total.failed), computed, total,
            sum(r.runs for r in state.rounds))


def _outcomes(results: store.ResultsStore, section: adaptive.AdaptiveSpec) -> dict[str, bool]:
    """run_id -> success of every run in the folder's valid shards, read from the three columns
    it needs (``adaptive.success``)."""
    columns = ["run_id", "status", section.success_column]
    tables = [s.runs_table for s in results.scan(columns=columns).done
              if s.runs_table is not None and s.runs_table.num_rows]
    out: dict[str, bool] = {}
    for table in tables:
        ok = adaptive.success_array(table.column(section.success_column).to_pylist(),
                                    table.column("status").to_pylist(),
                                    at_most=section.at_most, at_least=section.at_least)
        out.update(zip(table.column("run_id").to_pylist(), ok.tolist()))
    return out


def _execute(tasks: Pending, todo: int, executor: str, results: store.ResultsStore,
             manifest: dict, entry: dict, name: str, progress: bool | None, cpus: int = 1
             ) -> tuple[int, executors.ExecutionReport]:
    """Run the tasks, each writing its shards where it ran when it can (the driver writes those
    handed back), track completion, and record the invocation (``entry``) in the manifest, with
    the task ids and the CPU utilization (the tasks' wall time over ``cpus`` x the elapsed).
    Returns the runs computed and the executor's report (``seconds``: this call's elapsed)."""
    ids: list[str] = []
    # progress None: a bar on terminals only (tqdm's disable=None)
    bar = tqdm(total=todo, unit="run", desc=name,
               disable=None if progress is None else not progress, smoothing=0.1)
    computed = 0

    def on_result(done: executors.Completed) -> None:
        nonlocal computed
        if done.result is not None:  # handed back: the driver writes it
            results.write_task(done.task_id, done.result.runs, done.result.instances)
        ids.append(done.task_id)
        computed += done.runs
        bar.update(done.runs)

    start = time.perf_counter()
    try:
        if executor == "serial":
            report = executors.run_serial(tasks, on_result, out=results.uri)
        else:
            report = executors.run_ray(tasks, on_result, out=results.uri)
    except KeyboardInterrupt:
        entry.update(finished=store.now(), already_stored=tasks.already, tasks=tasks.tasks,
                     computed=computed, interrupted=True)
        store.record_invocation(results, manifest, entry)
        raise
    finally:
        bar.close()
    entry.update(finished=store.now(), already_stored=tasks.already, tasks=tasks.tasks,
                 computed=computed, failed=report.failed,
                 written_by_driver=report.written_by_driver,
                 cpu_utilization=round(report.utilization(cpus), 3) if ids else None)
    if "round" in entry:  # an adaptive round: which tasks it made (its runs' shards)
        entry["task_ids"] = sorted(ids)
    store.record_invocation(results, manifest, entry)
    report.seconds = time.perf_counter() - start
    return computed, report


def status_text(out: str) -> tuple[str, bool]:
    """What `wnsweep status` prints, and whether the folder is complete and healthy."""
    results = store.ResultsStore(out)
    manifest = results.read_manifest()
    if manifest is None:
        raise store.StoreError(f"{out}: no manifest.json: not a wnsweep results folder")
    inventory = results.inventory()
    stored_spec = _stored_spec(results, manifest)
    lines = [f"sweep {manifest.get('sweep')} in {out} (spec hash "
             f"{str(manifest.get('spec_hash'))[:12]})"]
    for shard in inventory.shards:
        detail = f"  {shard.detail}" if shard.detail else ""
        lines.append(f"  part-{shard.task_id}  {shard.state:<16} {shard.runs:>7} runs{detail}")
    for name in inventory.ignored:
        lines.append(f"  {name}  ignored (not a part-*.parquet shard)")
    corrupt = inventory.corrupt
    done = len(inventory.run_ids)
    if len(inventory.versions) > 1:
        lines.append("shards were written by wnsweep versions "
                     + ", ".join(sorted(inventory.versions))
                     + ": a resumed sweep mixes their engines (each shard's schema metadata "
                     "names its version)")
    if inventory.duplicates:
        lines.append(f"{inventory.duplicates} run_ids are stored in more than one shard "
                     "(two runs into one folder at once?); analysis.load keeps one copy")
    if stored_spec is not None and stored_spec.adaptive is not None:
        adaptive_lines, missing = _adaptive_status(stored_spec, results)
        lines += adaptive_lines
        lines.append(f"done {done} runs, missing {missing} of the current round, corrupt "
                     f"shards {len(corrupt)}")
        healthy = missing == 0 and not corrupt and not inventory.duplicates
    elif stored_spec is not None:
        planned, missing = _planned_and_missing(
            stored_spec, inventory, store.equivalent_spec_hashes(manifest, stored_spec))
        lines.append(f"done {done} / {planned} runs, missing {missing}, "
                     f"corrupt shards {len(corrupt)}")
        healthy = missing == 0 and not corrupt and not inventory.duplicates
    else:
        lines.append(f"done {done} runs (planned count unknown: the sweep file could not be "
                     f"re-read), corrupt shards {len(corrupt)}")
        healthy = not corrupt and not inventory.duplicates
    if not healthy:
        lines.append("rerun `wnsweep run` with the same sweep file and --out to complete it")
    return "\n".join(lines), healthy


def _adaptive_status(spec: SweepSpec, results: store.ResultsStore) -> tuple[list[str], int]:
    """The lines ``status`` adds for an adaptive sweep, replayed from the stored outcomes (nothing
    is run): its round, the runs asked, and per slice the cells decided and undecided; and how
    many runs the round in progress still misses (0 when done)."""
    state = rounds.replay(spec, _outcomes(results, spec.adaptive))
    last = state.rounds[-1]
    missing = last.runs - last.stored if not state.done else 0
    where = ("done" if state.done else
             f"in progress: {last.stored} of its {last.runs} runs stored")
    lines = [f"adaptive: round {state.round} ({where}); "
             f"{sum(r.runs for r in state.rounds)} runs asked so far, "
             f"{rounds.full_grid_runs(spec)} in the full grid at the finest resolution "
             f"with {spec.adaptive.trials_max} trials"]
    names = state.slice_names()
    for key, counts in state.slices().items():
        label = ", ".join(f"{n}={v}" for n, v in zip(names, key)) or "all"
        lines.append(f"  {label}: cells decided {counts['below'] + counts['above']} "
                     f"(below {counts['below']}, above {counts['above']}), undecided "
                     f"{counts['undecided']}, at the trial limit {counts['limit']}")
    return lines, missing


def _stored_spec(results: store.ResultsStore, manifest: dict) -> SweepSpec | None:
    """The spec stored in the folder (None if it cannot be re-read here)."""
    try:
        with results.fs.open_input_stream(results.path("sweep.yaml")) as f:
            text = f.read().decode()
        source = manifest.get("source") or results.path("sweep.yaml")
        base = posixpath.dirname(source) if source else None
        return parse_spec(text, source=source, base_dir=base)
    except Exception:  # the instance file moved, a newer spec format, ...: status still works
        return None


def _planned_and_missing(spec: SweepSpec, inventory: store.Inventory,
                         hashes: set[str]) -> tuple[int, int]:
    """The sweep's run count and how many of its runs are not stored. When every done shard was
    written for this very spec (one of its ``hashes``: ``store.equivalent_spec_hashes``), each
    stored run_id is one of its runs, and both numbers are counts; otherwise (the sweep was
    extended or changed) the sweep's run_ids are expanded, task by task, and compared."""
    planned = count_runs(spec)
    if all(s.spec_hashes and s.spec_hashes <= hashes for s in inventory.done):
        return planned, planned - len(inventory.run_ids)
    missing = 0
    for lazy in lazy_tasks(spec):
        task = lazy.expand(skip=inventory.run_ids)
        missing += len(task.runs) if task is not None else 0
    return planned, missing
