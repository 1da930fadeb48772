"""A sweep end to end: spec -> plan -> (resume) -> execute -> shards. The CLI and tests call this.

Resume: the store's inventory says which run_ids already sit in valid shards; only the others are
planned into tasks. Unusable shards (truncated, corrupt, half-written) are moved to ``corrupt/``
first, so their runs are computed again and the dataset never holds a damaged file.
"""

from __future__ import annotations

import os
import posixpath
import time
from dataclasses import dataclass

from tqdm import tqdm

from pipeline import executors, store
from pipeline.plan import TASK_SECONDS, Plan, Task, make_plan, summarize
from pipeline.spec import SweepSpec, load_spec, parse_spec
from pipeline.task import TaskResult


@dataclass
class SweepOutcome:
    out: str
    planned: int  # runs in the sweep
    already: int  # runs found stored before this invocation
    computed: int  # runs computed now
    tasks: int
    failed: list[tuple[str, str]]
    seconds: float


def default_out(spec: SweepSpec) -> str:
    return os.path.join("results", spec.name)


def plan_text(spec_path: str, out: str | None = None) -> str:
    """What `wnsweep plan` prints, accounting for runs already stored in the output folder."""
    spec = load_spec(spec_path)
    plan = make_plan(spec)
    out = out or default_out(spec)
    done = _stored_run_ids(out)
    tasks = plan.tasks(done & plan.run_ids)
    text = summarize(plan, tasks)
    if done:
        text += f"\nstored:    {len(done & plan.run_ids)} runs already in {out}"
    return text


def _stored_run_ids(out: str) -> set[str]:
    results = store.ResultsStore(out)
    return results.inventory().run_ids if results.exists() else set()


def run_sweep(spec_path: str, out: str | None = None, executor: str = "ray",
              address: str | None = None, force: bool = False, progress: bool | None = None,
              num_cpus: int | None = None, task_seconds: float = TASK_SECONDS,
              verbose: bool = False) -> SweepOutcome:
    """Run (or resume) a sweep into ``out`` (default results/<name>); ``verbose`` lets Ray's
    logs and the workers' output through (``executors.init_ray``). Raises SpecError on a bad
    sweep file, StoreError on an unusable output folder and ConnectionError when the Ray cluster
    cannot be reached, before anything is written."""
    spec = load_spec(spec_path)  # validation comes first: a bad file writes nothing
    plan = make_plan(spec)
    out = out or default_out(spec)
    if executor not in ("serial", "ray"):
        raise ValueError(f"unknown executor {executor!r}; allowed: serial, ray")
    results = store.ResultsStore(out)
    started_ray = executor == "ray" and executors.init_ray(
        address, num_cpus=num_cpus, verbose=verbose)
    try:
        source = os.path.abspath(spec_path) if "://" not in spec_path else spec_path
        manifest = results.prepare(spec, force=force, source=source)
        results.clean_temporaries()
        inventory = results.inventory()
        results.quarantine(inventory.corrupt)
        already = inventory.run_ids & plan.run_ids
        # at least eight tasks per CPU, so that the last wave leaves little idle time
        min_tasks = 8 * executors.cluster_cpus() if executor == "ray" else 1
        tasks = plan.tasks(frozenset(already), task_seconds=task_seconds, min_tasks=min_tasks)
        entry = {"started": store.now(), "executor": executor, "planned": len(plan.runs),
                 "already_stored": len(already), "tasks": len(tasks),
                 "quarantined": [s.task_id for s in inventory.corrupt]}
        computed, report, seconds = _execute(tasks, executor, results, manifest, entry,
                                             spec.name, progress)
    finally:
        if started_ray:
            executors.shutdown_ray()
    return SweepOutcome(out=out, planned=len(plan.runs), already=len(already), computed=computed,
                        tasks=len(tasks), failed=report.failed, seconds=seconds)


def _execute(tasks: list[Task], executor: str, results: store.ResultsStore, manifest: dict,
             entry: dict, name: str, progress: bool | None
             ) -> tuple[int, executors.ExecutionReport, float]:
    """Run the tasks, writing each result's shards as it completes, and record the invocation
    (``entry``) in the manifest. Returns (runs computed, the executor's report, seconds)."""
    # progress None: a bar on terminals only (tqdm's disable=None)
    bar = tqdm(total=sum(len(t.runs) for t in tasks), unit="run", desc=name,
               disable=None if progress is None else not progress, smoothing=0.1)
    computed = 0

    def on_result(result: TaskResult) -> None:
        nonlocal computed
        results.write_task(result.task_id, result.runs, result.instances)
        computed += result.runs.num_rows
        bar.update(result.runs.num_rows)

    start = time.perf_counter()
    try:
        run = executors.run_serial if executor == "serial" else executors.run_ray
        report = run(tasks, on_result)
    except KeyboardInterrupt:
        entry.update(finished=store.now(), computed=computed, interrupted=True)
        store.record_invocation(results, manifest, entry)
        raise
    finally:
        bar.close()
    entry.update(finished=store.now(), computed=computed, failed=report.failed)
    store.record_invocation(results, manifest, entry)
    return computed, report, time.perf_counter() - start


def status_text(out: str) -> tuple[str, bool]:
    """What `wnsweep status` prints, and whether the folder is complete and healthy."""
    results = store.ResultsStore(out)
    manifest = results.read_manifest()
    if manifest is None:
        raise store.StoreError(f"{out}: no manifest.json: not a wnsweep results folder")
    inventory = results.inventory()
    plan = _stored_plan(results, manifest)
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
    if plan is not None:
        missing = len(plan.run_ids - inventory.run_ids)
        lines.append(f"done {done} / {len(plan.runs)} runs, missing {missing}, "
                     f"corrupt shards {len(corrupt)}")
        healthy = missing == 0 and not corrupt and not inventory.duplicates
    else:
        lines.append(f"done {done} runs (planned count unknown: the sweep file could not be "
                     f"re-read), corrupt shards {len(corrupt)}")
        healthy = not corrupt and not inventory.duplicates
    if not healthy:
        lines.append("rerun `wnsweep run` with the same sweep file and --out to complete it")
    return "\n".join(lines), healthy


def _stored_plan(results: store.ResultsStore, manifest: dict) -> Plan | None:
    """The plan of the spec stored in the folder (None if it cannot be re-read here)."""
    try:
        with results.fs.open_input_stream(results.path("sweep.yaml")) as f:
            text = f.read().decode()
        source = manifest.get("source") or results.path("sweep.yaml")
        base = posixpath.dirname(source) if source else None
        return make_plan(parse_spec(text, source=source, base_dir=base))
    except Exception:  # the instance file moved, a newer spec format, ...: status still works
        return None
