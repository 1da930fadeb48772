"""Expand a sweep into runs and group them into tasks (docs/SWEEP_FILES.md, "Run identity").

Identity. An instance is identified by its parameters (M, N, s, sign, and for the twolayer family
its family and, unless 1, outputs; or the instance file's content hash), the trial and the master
seed; a run by its instance's identity, its method and every run parameter
(``pipeline.parameters.identity_items``: parameters of wnsweep 0.1 always, null where they do not
apply; those added since only where they apply and differ from their default). Both ids are
hashes of canonical JSON, with floats written to 12 significant digits: the precision of ids, at
which two values of an axis count as the same (``pipeline.spec`` refuses such duplicates). Axis
values are computed to the same bits on every machine (``pipeline.axes``), so the same sweep file
yields the same ids on any machine, in any order; the rounding also keeps valid the ids of folders
written before that from numpy's machine-dependent logspace.

Seeds. Each instance's seed comes from numpy's SeedSequence(master seed, spawn_key = its
family's key of its parameters and trial, ``Family.spawn_key``); the instance's arrays and its
random initial weights derive from that seed alone, never from execution order or worker identity.

Tasks. A task holds whole instances (a family's per-instance work, such as a basis-pursuit solve,
is done once; its engine batches the runs of the instances it is given) and is sized by the
families' cost models (``Family.cost``) to take seconds to about a minute. Its id hashes its
run_ids, so a shard's name says which runs it holds. The planner knows no family by name.

Two planners, one result. ``make_plan`` expands every run (tests, analysis, small sweeps);
``lazy_tasks`` (what ``wnsweep plan`` and ``wnsweep run`` use) gives the same tasks as
``make_plan(spec).tasks(...)`` without expanding a run: every instance of one combination of the
instance parameters costs the same, so the greedy packing is done by arithmetic on blocks of
trials, and a ``LazyTask`` (the spec and a few integers) is expanded into its instances, seeds,
runs and run_ids where it runs (``LazyTask.expand``). Planning costs time and memory per task
and per combination, not per run: 1e7 runs plan in well under a second (benchmarks/scale.py).
The run count itself (``count_runs``) is arithmetic on the spec, checked against a ceiling
before any planning (``pipeline.sweep``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline import families
from pipeline.families.base import STEP_OVERHEAD_SECONDS
from pipeline.parameters import (
    INSTANCE_PARAMS,
    METHOD_FAMILIES,
    RUN_PARAMS,
    SHARED_RUN_PARAMS,
    identity_items,
)
from pipeline.spec import SweepSpec

#: Default wall time a task aims at (estimated by each family's cost model, ``Family.cost``).
TASK_SECONDS = 20.0
#: A task is not cut smaller than the work whose step overhead is this share of it (unless the
#: caller's ``task_seconds`` asks for it): smaller tasks would spend their time on numpy calls.
MAX_OVERHEAD_SHARE = 0.5


def _hash(payload: dict, prefix: str, length: int = 20) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:length]


class _Params:
    """Attribute access to ``params`` (``run.alpha``, ``inst.M``) for the parameter dataclasses."""

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "params":  # not a parameter (e.g. while unpickling)
            raise AttributeError(name)
        try:
            return self.params[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}") from None


@dataclass(frozen=True)
class InstanceKey(_Params):
    """One problem instance: generated from its parameters and seed, or loaded from
    ``problem_file``. ``params`` holds every instance parameter of ``pipeline.parameters``
    (``sign``, ``M``, ``N``, ``s``; for a file, ``M`` and ``N`` are its shape and ``s`` is None)."""

    instance_id: str
    trial: int
    seed: int  # derived with SeedSequence; also seeds the random init direction
    params: dict[str, Any]
    problem_file: str | None = None
    file_sha256: str | None = None

    @property
    def family(self) -> str:
        """The name of its model family (``pipeline.families``)."""
        return families.family_name(self.params.get("family"))


@dataclass(frozen=True)
class Run(_Params):
    """One run: an instance, a method and a value of every run parameter of
    ``pipeline.parameters`` (None where the parameter is not the method's, e.g. GD's eta_ratio)."""

    run_id: str
    instance_id: str
    method: str  # a key of pipeline.families.METHODS
    params: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """A unit of work shipped to a worker: whole instances and all their runs to compute."""

    task_id: str
    sweep: str
    spec_hash: str
    reference_solver: str
    save_solutions: bool
    instances: tuple[InstanceKey, ...]
    runs: tuple[Run, ...]
    est_seconds: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Plan:
    """Every run and instance of a sweep, in a deterministic order."""

    spec: SweepSpec
    instances: tuple[InstanceKey, ...]
    runs: tuple[Run, ...]

    @property
    def run_ids(self) -> frozenset[str]:
        return frozenset(r.run_id for r in self.runs)

    def tasks(self, done: frozenset[str] | set[str] = frozenset(),
              task_seconds: float = TASK_SECONDS, min_tasks: int = 1,
              overhead_floor: bool = True) -> list[Task]:
        """Tasks computing every run not in ``done``: whole instances (an instance is never
        split), in plan order, packed greedily into tasks of about equal estimated work, each at
        most ``task_seconds`` (or one instance). There are at least ``min_tasks`` tasks (so that
        every worker gets work) unless that would make a task so small that the engine's fixed
        cost per step exceeds MAX_OVERHEAD_SHARE of its work (a task's instances share that
        cost: the more runs per engine call, the faster each run), or, with ``overhead_floor``
        False, in any case (an adaptive round: the next round waits for this one's last task).
        The grouping does not change any result: a run's numbers do not depend on what else
        shares its engine call."""
        by_instance: dict[str, list[Run]] = {}
        for run in self.runs:
            if run.run_id not in done:
                by_instance.setdefault(run.instance_id, []).append(run)
        pending = [(inst, by_instance[inst.instance_id]) for inst in self.instances
                   if inst.instance_id in by_instance]
        if not pending:
            return []
        costs = [instance_cost(inst, runs) for inst, runs in pending]
        total = sum(costs)
        steps = max(r.max_iters for _, runs in pending for r in runs)
        floor = steps * STEP_OVERHEAD_SECONDS / MAX_OVERHEAD_SHARE if overhead_floor else 0.0
        target = min(task_seconds, max(total / max(min_tasks, 1), floor))
        n_tasks = min(len(pending), max(1, math.ceil(total / target - 1e-9)))
        share = total / n_tasks * (1 + 1e-9)  # equal shares: the last task is not a remainder
        tasks: list[Task] = []
        batch: list[tuple[InstanceKey, list[Run]]] = []
        cost = 0.0
        for (inst, runs), c in zip(pending, costs):
            if batch and cost + c > share:
                tasks.append(self._task(batch, cost + steps * STEP_OVERHEAD_SECONDS))
                batch, cost = [], 0.0
            batch.append((inst, runs))
            cost += c
        tasks.append(self._task(batch, cost + steps * STEP_OVERHEAD_SECONDS))
        return tasks

    def _task(self, batch: list[tuple[InstanceKey, list[Run]]], cost: float) -> Task:
        return _make_task(self.spec, batch, cost)


def _make_task(spec: SweepSpec, batch: list[tuple[InstanceKey, list[Run]]], cost: float) -> Task:
    """A task of these instances and runs; its id hashes its run_ids."""
    runs = tuple(r for _, rs in batch for r in rs)
    digest = hashlib.sha256("\n".join(sorted(r.run_id for r in runs)).encode()).hexdigest()
    return Task(
        task_id=digest[:16],
        sweep=spec.name,
        spec_hash=spec.spec_hash,
        reference_solver=spec.reference_solver,
        save_solutions=spec.save_solutions,
        instances=tuple(inst for inst, _ in batch),
        runs=runs,
        est_seconds=cost,
    )


def instance_cost(inst: InstanceKey, runs: list[Run]) -> float:
    """Estimated seconds for one instance and these runs: its family's cost model
    (``Family.cost``), an upper bound (every run to its max_iters)."""
    return families.family(inst.family).cost(inst, runs)


def instance_seed(master_seed: int, spawn_key: tuple[int, ...]) -> int:
    """A 63-bit seed for one instance from the master seed and its parameters (SeedSequence)."""
    state = np.random.SeedSequence(master_seed, spawn_key=spawn_key).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def make_plan(spec: SweepSpec) -> Plan:
    """Expand the sweep: instances (per model family, instance parameters x trials), then per
    instance the runs (the shared run axes as its family takes them, then each method of its
    family in file order with its own axes), every product in the order of
    ``pipeline.parameters.PARAMS``."""
    instances = _instances(spec)
    runs: list[Run] = []
    for inst in instances:
        runs.extend(_instance_runs(spec, inst))
    if len({r.run_id for r in runs}) != len(runs):  # spec validation rules this out
        raise AssertionError("two runs of the sweep share a run_id")
    return Plan(spec=spec, instances=tuple(instances), runs=tuple(runs))


def _instance_runs(spec: SweepSpec, inst: InstanceKey) -> list[Run]:
    """One instance's runs: the shared run axes as its family takes them, then each method of
    its family with its own axes."""
    shared = [p.name for p in SHARED_RUN_PARAMS]
    problem_id = _problem_identity(spec, inst)
    axes = spec.family_axes(inst.family)
    runs: list[Run] = []
    for shared_values in itertools.product(*(axes[name] for name in shared)):
        for method in spec.methods:
            if inst.family not in METHOD_FAMILIES[method.name]:
                continue
            own = list(method.axes)
            for own_values in itertools.product(*method.axes.values()):
                values = {p.name: None for p in RUN_PARAMS}
                values.update(zip(shared, shared_values))
                values.update(zip(own, own_values))
                identity = {**problem_id, "method": method.name,
                            **identity_items(RUN_PARAMS, values, method.name, family=inst.family)}
                runs.append(Run(_hash(identity, "r-"), inst.instance_id, method.name, values))
    return runs


def _problem_identity(spec: SweepSpec, inst: InstanceKey) -> dict:
    """What identifies an instance (and is part of each of its runs' identity)."""
    base = {"seed": int(spec.seed), "trial": inst.trial}
    if inst.file_sha256 is not None:
        params = tuple(p for p in INSTANCE_PARAMS if not p.generated)
        return {**base, **identity_items(params, inst.params, family=inst.family),
                "file_sha256": inst.file_sha256}
    return {**base, **identity_items(INSTANCE_PARAMS, inst.params, family=inst.family)}


def _instances(spec: SweepSpec) -> list[InstanceKey]:
    """Every instance: per family, the product of the instance parameters' axes, then the
    trials."""
    return [_instance(spec, params, trial) for params in _instance_combinations(spec)
            for trial in range(spec.trials)]


def _instance_combinations(spec: SweepSpec) -> list[dict[str, Any]]:
    """The instance parameters' values of every combination, family by family, in their
    product's order: every instance parameter is in each, None where the sweep has no axis of
    it (a generated problem's parameters for an instance file)."""
    out = []
    for family in spec.families:
        axes = {**spec.family_axes(family), "family": (family,)}
        names = [q.name for q in INSTANCE_PARAMS if q.name in axes]
        for values in itertools.product(*(axes[name] for name in names)):
            out.append({**{q.name: None for q in INSTANCE_PARAMS}, **dict(zip(names, values))})
    return out


def _instance(spec: SweepSpec, params: dict[str, Any], trial: int) -> InstanceKey:
    """One instance: a combination of instance parameter values (``_instance_combinations``)
    and a trial. Its seed's spawn key is its family's (``Family.spawn_key``, a contract:
    changing it changes every instance of existing sweeps); an instance file's code is the first
    15 hex digits of its content hash."""
    p = spec.problem
    family = families.family(params["family"])
    file_code = None
    if p.file is not None:
        M, N = p.file_shape  # type: ignore[misc]
        params = {**params, "M": M, "N": N, "s": None}
        file_code = int(p.file_sha256[:15], 16)  # type: ignore[index]
    spawn_key = family.spawn_key(params, trial, file_code)
    if spawn_key[0] not in family.seed_codes:
        raise AssertionError(f"family {family.name}: spawn key {spawn_key} outside its codes")
    seed = instance_seed(spec.seed, spawn_key)
    key = InstanceKey("", trial, seed, params, p.file, p.file_sha256)
    return replace(key, instance_id=_hash(_problem_identity(spec, key), "i-", 16))


def summarize(plan: Plan, tasks: list[Task]) -> str:
    """The text `wnsweep plan` prints: counts and a cost estimate."""
    by_method: dict[str, int] = {}
    for run in plan.runs:
        by_method[run.method] = by_method.get(run.method, 0) + 1
    by_family: dict[str, int] = {}
    for inst in plan.instances:
        by_family[inst.family] = by_family.get(inst.family, 0) + 1
    return _summary(plan.spec, by_method, by_family, tasks)


def _summary(spec: SweepSpec, by_method: dict[str, int], by_family: dict[str, int],
             tasks: list[LazyTask] | list[Task]) -> str:
    """The lines of ``summarize`` / ``summarize_lazy`` from the counts and the tasks to run."""
    todo = sum(t.runs_count if isinstance(t, LazyTask) else len(t.runs) for t in tasks)
    cpu = sum(t.est_seconds for t in tasks)
    lines = [
        f"sweep {spec.name} ({spec.source}), spec hash {spec.spec_hash[:12]}",
        f"runs:      {sum(by_method.values())} ("
        + ", ".join(f"{m} {n}" for m, n in sorted(by_method.items())) + ")",
        f"instances: {sum(by_family.values())} ({_note(by_family)})",
        f"to run:    {todo} runs in {len(tasks)} tasks",
        f"cost:      at most ~{_duration(cpu)} of CPU time (every run to max_iters); "
        f"~{_duration(cpu / 2)} on 2 CPUs",
    ]
    return "\n".join(lines)


def _note(by_family: dict[str, int]) -> str:
    """What each instance needs besides its runs (``Family.reference``), per family."""
    if len(by_family) == 1:
        name = next(iter(by_family))
        reference = families.family(name).reference
        return reference if name == families.DEFAULT_FAMILY else f"{name}: {reference}"
    return "; ".join(f"{n} {name}: {families.family(name).reference}"
                     for name, n in by_family.items())


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_count_factors(spec: SweepSpec) -> list[tuple[str, list[tuple[str, int]],
                                                       list[tuple[str, int]],
                                                       list[tuple[str, list[tuple[str, int]]]]]]:
    """The sizes that multiply into the run count, each with its sweep-file field, as
    ``make_plan`` expands them, per model family: (family, its instance axes and trials, its
    shared run axes, per method of the family its own axes). Read from the validated spec;
    nothing is expanded."""
    by_name = {p.name: p for p in RUN_PARAMS}
    out = []
    for family in spec.families:
        axes = spec.family_axes(family)
        instance = [(p.field(), len(axes[p.name])) for p in INSTANCE_PARAMS
                    if p.name in axes and p.name != "family"]
        instance.append(("trials", int(spec.trials)))
        shared = [(p.field(), len(axes[p.name])) for p in SHARED_RUN_PARAMS if p.name in axes]
        methods = [(m.name, [(by_name[name].field(m.name) if name in by_name
                              else f"methods.{m.name}.{name}", len(values))
                             for name, values in m.axes.items()])
                   for m in spec.methods if family in METHOD_FAMILIES[m.name]]
        out.append((family, instance, shared, methods))
    return out


def count_runs(spec: SweepSpec) -> int:
    """The number of runs ``make_plan`` would make, counted arithmetically: per model family,
    the product of its instance axes x trials x (the product of its shared run axes x the sum
    over its methods of the product of that method's own axes)."""
    total = 0
    for _, instance, shared, methods in run_count_factors(spec):
        per_method = sum(_product(n for _, n in axes) for _, axes in methods)
        total += _product(n for _, n in instance) * _product(n for _, n in shared) * per_method
    return total


def _product(numbers) -> int:
    out = 1
    for n in numbers:
        out *= int(n)
    return out


# -- lazy planning: cost in tasks, not runs ------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """Consecutive instances of one combination of the instance parameters' values (index
    ``combination`` of ``_instance_combinations``): trials ``start`` to ``stop - 1``."""

    combination: int
    start: int
    stop: int


@dataclass(frozen=True)
class LazyTask:
    """A task described by the positions of its instances in the sweep (``blocks``), expanded
    into today's ``Task`` (its instances, runs, run_ids and task id) where it runs: what crosses
    the wire and what the driver holds is the spec and a few integers, not the runs."""

    spec: SweepSpec
    blocks: tuple[Block, ...]
    runs_count: int
    est_seconds: float = field(default=0.0, compare=False)

    def instances(self) -> list[InstanceKey]:
        combinations = _instance_combinations(self.spec)
        return [_instance(self.spec, combinations[b.combination], trial)
                for b in self.blocks for trial in range(b.start, b.stop)]

    def expand(self, skip=None) -> Task | None:
        """The task with its runs, without those in ``skip`` (run_ids already stored; any
        container) and the instances left with none; None when no run is left."""
        batch = [(inst, _instance_runs(self.spec, inst)) for inst in self.instances()]
        if skip is not None and len(skip):
            ids = [r.run_id for _, runs in batch for r in runs]
            stored = iter(skip.contains(ids) if hasattr(skip, "contains")  # vectorized
                          else [i in skip for i in ids])
            batch = [(inst, [r for r in runs if not next(stored)]) for inst, runs in batch]
            batch = [(inst, runs) for inst, runs in batch if runs]
        if not batch:
            return None
        return _make_task(self.spec, batch, self.est_seconds)


def _representatives(spec: SweepSpec) -> list[tuple[InstanceKey, list[Run]]]:
    """The first trial of every combination of instance parameters, with its runs: every trial
    of a combination has as many runs, of the same settings and cost."""
    return [(inst, _instance_runs(spec, inst))
            for inst in (_instance(spec, params, 0) for params in _instance_combinations(spec))]


def lazy_tasks(spec: SweepSpec, task_seconds: float = TASK_SECONDS,
               min_tasks: int = 1) -> list[LazyTask]:
    """The tasks ``make_plan(spec).tasks(task_seconds=..., min_tasks=...)`` makes, as the same
    greedy packing (``Plan.tasks``) done by arithmetic on runs of instances of equal cost: one
    representative instance per combination of the instance parameters is expanded, so the cost
    grows with the number of tasks and combinations, not with runs or trials."""
    trials = spec.trials
    representatives = _representatives(spec) if trials else []
    costs = [instance_cost(inst, runs) for inst, runs in representatives]
    sizes = [len(runs) for _, runs in representatives]
    steps = max((r.max_iters for _, runs in representatives for r in runs), default=0)
    if not any(sizes):
        return []
    n_instances = sum(trials for size in sizes if size)  # Plan.tasks leaves out instances
    total = sum(c * trials for c, size in zip(costs, sizes) if size)  # without runs
    floor = steps * STEP_OVERHEAD_SECONDS / MAX_OVERHEAD_SHARE
    target = min(task_seconds, max(total / max(min_tasks, 1), floor))
    n_tasks = min(n_instances, max(1, math.ceil(total / target - 1e-9)))
    share = total / n_tasks * (1 + 1e-9)
    overhead = steps * STEP_OVERHEAD_SECONDS
    tasks: list[LazyTask] = []
    blocks: list[Block] = []
    count, cost = 0, 0.0

    def close() -> None:
        runs = sum((b.stop - b.start) * sizes[b.combination] for b in blocks)
        tasks.append(LazyTask(spec, tuple(blocks), runs, cost + overhead))

    for index, c in enumerate(costs):
        trial = 0 if sizes[index] else trials
        while trial < trials:
            if count and cost + c > share:  # Plan.tasks cuts here
                close()
                blocks, count, cost = [], 0, 0.0
            # take this instance, then as many more as fit (cost + c <= share before each)
            take = 1
            if c > 0:
                room = math.floor((share - (cost + c)) / c)
                take = max(1, min(trials - trial, 1 + max(room, 0)))
                while take > 1 and cost + (take - 1) * c > share - c:  # float guard
                    take -= 1
            else:
                take = trials - trial
            blocks.append(Block(index, trial, trial + take))
            cost += take * c
            count += take
            trial += take
    close()
    return tasks


def summarize_lazy(spec: SweepSpec, tasks: list[LazyTask] | list[Task]) -> str:
    """``summarize`` for a sweep planned lazily: the counts come from the spec and one instance
    per combination of instance parameters, the work to do from ``tasks`` (LazyTask or Task)."""
    representatives = _representatives(spec)
    by_method: dict[str, int] = {}
    for _, runs in representatives:
        for run in runs:
            by_method[run.method] = by_method.get(run.method, 0) + spec.trials
    by_family: dict[str, int] = {}
    for inst, _ in representatives:
        by_family[inst.family] = by_family.get(inst.family, 0) + spec.trials
    return _summary(spec, by_method, by_family, tasks)
