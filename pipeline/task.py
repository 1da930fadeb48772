"""Run one task: its instances, family by family, through each family's ``run``; rows to Arrow
tables with the shard schemas (docs/SWEEP_FILES.md, "What lands on disk").

The task knows no family by name: it groups the task's instances by ``family`` (the registry
refuses a name it does not list, so an unknown family reaches no engine), hands each group to
that family's ``Family.run`` (``pipeline.families.base``), and writes the header of every row
(ids, parameters, sweep, node) and nulls for the columns a family does not fill. A row may not
carry a column that is neither common nor its family's: a family cannot write into another's.

A task is pure: the same Task gives the same tables (but for ``seconds`` and ``node``) in any
process, on any worker.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pyarrow as pa
from threadpoolctl import threadpool_limits

from pipeline import families
from pipeline.families.base import RunContext
from pipeline.parameters import INSTANCE_PARAMS, RUN_PARAMS
from pipeline.plan import InstanceKey, Run, Task
from pipeline.results import schema

_PARAM_COLUMNS = frozenset(p.name for p in (*INSTANCE_PARAMS, *RUN_PARAMS) if p.column)
_COMMON_RUN = frozenset(name for name, _ in schema.COMMON_RUN_FIELDS) - {"node"}
_COMMON_INSTANCE = frozenset({"problem_file", "x_star"})


@dataclass
class TaskResult:
    """The two shards of one task, as Arrow tables with the shard schemas."""

    task_id: str
    runs: pa.Table
    instances: pa.Table


def run_task(task: Task, problem_bytes: bytes | None = None, node: str | None = None) -> TaskResult:
    """Compute every run of the task; ``node`` names the worker in the ``node`` column.

    BLAS runs single-threaded: the batched products are small enough that threads gain little,
    and parallelism comes from running one task per CPU (threads competing with other tasks'
    threads make OpenBLAS several times slower)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _run_task(task, problem_bytes, node or socket.gethostname())


def _run_task(task: Task, problem_bytes: bytes | None, node: str) -> TaskResult:
    """Rows come out in the order of ``task.instances``, each instance's runs in task order."""
    runs_by_instance: dict[str, list[Run]] = {}
    for run in task.runs:
        runs_by_instance.setdefault(run.instance_id, []).append(run)
    by_family: dict[str, list[InstanceKey]] = {}
    for inst in task.instances:
        by_family.setdefault(inst.family, []).append(inst)
    context = RunContext(sweep=task.sweep, reference_solver=task.reference_solver,
                         save_solutions=task.save_solutions, problem_bytes=problem_bytes)
    keys = {inst.instance_id: inst for inst in task.instances}
    run_rows: dict[str, list[dict]] = {}
    instance_rows: dict[str, dict] = {}
    for name, members in by_family.items():
        family = families.family(name)
        own_runs = _columns(family.run_columns) | _COMMON_RUN | _PARAM_COLUMNS
        own_instances = _columns(family.instance_columns) | _COMMON_INSTANCE | _PARAM_COLUMNS
        for instance_id, inst_row, rows in family.run(context, members, runs_by_instance):
            inst, runs = keys[instance_id], runs_by_instance[instance_id]
            if len(rows) != len(runs):
                raise RuntimeError(f"family {name} gave {len(rows)} rows for the {len(runs)} "
                                   f"runs of instance {instance_id}")
            instance_rows[instance_id] = _instance_row(inst, _own(inst_row, own_instances, name))
            run_rows[instance_id] = [_run_row(task, inst, run, _own(row, own_runs, name), node)
                                     for run, row in zip(runs, rows)]
    meta = {schema.META_SPEC_HASH: task.spec_hash.encode(), schema.META_TASK: task.task_id.encode()}
    return TaskResult(
        task_id=task.task_id,
        runs=_table([row for inst in task.instances for row in run_rows[inst.instance_id]],
                    schema.RUNS_SCHEMA, meta),
        instances=_table([instance_rows[inst.instance_id] for inst in task.instances],
                         schema.INSTANCES_SCHEMA, meta),
    )


def _columns(declared: tuple[tuple[str, str], ...]) -> frozenset[str]:
    return frozenset(name for name, _ in declared)


def _own(row: dict, allowed: frozenset[str], family: str) -> dict:
    foreign = sorted(set(row) - allowed)
    if foreign:
        raise RuntimeError(f"family {family} wrote columns it does not declare: {foreign}")
    return row


def _instance_row(inst: InstanceKey, values: dict) -> dict:
    """The header (id, trial, parameters, seed, file) and the family's columns; the family may
    give M, N and s as the instance's arrays have them (an instance file's shape)."""
    return {"instance_id": inst.instance_id, "trial": inst.trial,
            **{p.name: inst.params[p.name] for p in INSTANCE_PARAMS if p.column},
            "seed": inst.seed, "problem_file": inst.problem_file, **values}


def _run_row(task: Task, inst: InstanceKey, run: Run, values: dict, node: str) -> dict:
    return {"run_id": run.run_id, "sweep": task.sweep, "trial": inst.trial,
            "instance_id": inst.instance_id, "method": run.method,
            **{p.name: inst.params[p.name] for p in INSTANCE_PARAMS if p.column},
            **{p.name: run.params[p.name] for p in RUN_PARAMS if p.column},
            **values, "node": node}


def _table(rows: list[dict], table_schema: pa.Schema, meta: dict[bytes, bytes]) -> pa.Table:
    """Columns a row does not give are null (another family's, a WN-only metric of GD)."""
    columns = {name: [row.get(name) for row in rows] for name in table_schema.names}
    return pa.Table.from_pydict(columns, schema=schema.with_metadata(table_schema, meta))
