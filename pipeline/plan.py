"""Expand a sweep into runs and group them into tasks (docs/SWEEP_FILES.md, "Run identity").

Identity. An instance is identified by its parameters (M, N, s, sign or the instance file's content
hash), the trial and the master seed; a run by its instance and its fully resolved method, depth,
init and train settings. Both ids are hashes of canonical JSON, with floats written to 12
significant digits so that last-bit differences of numpy's logspace between platforms cannot
change an id. The same sweep file yields the same ids on any machine, in any order.

Seeds. Each instance's seed comes from numpy's SeedSequence(master seed, spawn_key = instance
parameters and trial); the instance's A, x* and its random init direction derive from that seed
alone, never from execution order or worker identity.

Tasks. A task holds whole instances (one basis-pursuit solve per instance; the engine stacks the
runs of all its instances of one shape) and is sized by a cost model to take seconds to about a
minute. Its id hashes its run_ids, so a shard's name says which runs it holds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.spec import SweepSpec

_SIGN_CODE = {"nonneg": 0, "signed": 1}

#: Cost model of the stacked engine (pipeline/dynamics.py), calibrated with benchmarks/engine.py on
#: one core: each run-step costs its products, 4*M*N flops at EFFECTIVE_FLOPS (12-35 GFLOP/s
#: measured at 6-24 runs per instance), plus ENTRY_SECONDS per trainable entry (the element-wise
#: passes); each step of a stack has a fixed cost (~40 numpy calls) shared by all its rows. The
#: rates are the loaded machine's, so estimates are upper bounds (as is every run taking its
#: full max_iters: runs that converge leave the stack early).
EFFECTIVE_FLOPS = 1.2e10
ENTRY_SECONDS = 5e-9
STEP_OVERHEAD_SECONDS = 1.0e-4
BP_SECONDS = 0.05
#: Default wall time a task aims at (estimated by the cost model above).
TASK_SECONDS = 20.0
#: A task is not cut smaller than the work whose step overhead is this share of it (unless the
#: caller's ``task_seconds`` asks for it): smaller tasks would spend their time on numpy calls.
MAX_OVERHEAD_SHARE = 0.5


def _num(value: float | int | None) -> str | int | None:
    """Canonical form of a number for hashing: ints as ints, floats to 12 significant digits."""
    if value is None or isinstance(value, (int, np.integer)):
        return None if value is None else int(value)
    return format(float(value), ".12g")


def _hash(payload: dict, prefix: str, length: int = 20) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class InstanceKey:
    """One problem instance: generated from (M, N, s, sign, seed) or loaded from ``problem_file``."""

    instance_id: str
    trial: int
    sign: str
    M: int
    N: int
    s: int | None  # None for a user instance without x_star
    seed: int  # derived with SeedSequence; also seeds the random init direction
    problem_file: str | None = None
    file_sha256: str | None = None

    @property
    def signed(self) -> bool:
        return self.sign == "signed"


@dataclass(frozen=True)
class Run:
    """One run: an instance and a fully resolved method configuration."""

    run_id: str
    instance_id: str
    method: str  # gd | wn
    L: int
    init: str  # constant | random
    alpha: float
    eta: float
    eta_ratio: float | None  # None for gd
    schedule: str | None  # None for gd
    max_iters: int
    tol: float
    checkpoints: int


@dataclass(frozen=True)
class Task:
    """A unit of work shipped to a worker: whole instances and all their runs to compute."""

    task_id: str
    sweep: str
    spec_hash: str
    bp_solver: str
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
              task_seconds: float = TASK_SECONDS, min_tasks: int = 1) -> list[Task]:
        """Tasks computing every run not in ``done``: whole instances (an instance is never
        split), in plan order, packed greedily into tasks of about equal estimated work, each at
        most ``task_seconds`` (or one instance). There are at least ``min_tasks`` tasks (so that
        every worker gets work) unless that would make a task so small that the engine's fixed
        cost per step exceeds MAX_OVERHEAD_SHARE of its work (a task's instances share that
        cost: the more runs per engine call, the faster each run). The grouping does not change
        any result: a run's numbers do not depend on what else shares its engine call."""
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
        floor = steps * STEP_OVERHEAD_SECONDS / MAX_OVERHEAD_SHARE
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
        runs = tuple(r for _, rs in batch for r in rs)
        digest = hashlib.sha256("\n".join(sorted(r.run_id for r in runs)).encode()).hexdigest()
        return Task(
            task_id=digest[:16],
            sweep=self.spec.name,
            spec_hash=self.spec.spec_hash,
            bp_solver=self.spec.bp_solver,
            save_solutions=self.spec.save_solutions,
            instances=tuple(inst for inst, _ in batch),
            runs=runs,
            est_seconds=cost,
        )


def run_step_seconds(M: int, N: int, signed: bool) -> float:
    """Estimated seconds of one step of one run in a stack (its share of a step's fixed cost
    aside): its two products with A and its element-wise passes."""
    n = 2 * N if signed else N
    return 4.0 * M * N / EFFECTIVE_FLOPS + n * ENTRY_SECONDS


def instance_cost(inst: InstanceKey, runs: list[Run]) -> float:
    """Estimated seconds for one instance: a BP solve plus its runs in a stack, every run taking
    its full max_iters (an upper bound: runs that converge leave the stack early)."""
    iterations = sum(r.max_iters for r in runs)
    return BP_SECONDS + iterations * run_step_seconds(inst.M, inst.N, inst.signed)


def instance_seed(master_seed: int, spawn_key: tuple[int, ...]) -> int:
    """A 63-bit seed for one instance from the master seed and its parameters (SeedSequence)."""
    state = np.random.SeedSequence(master_seed, spawn_key=spawn_key).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def make_plan(spec: SweepSpec) -> Plan:
    """Expand the sweep: instances (problem axes x sign x trials), then per instance the runs
    (depth x init x alpha x max_iters x tol x each method's own axes)."""
    instances = _instances(spec)
    runs: list[Run] = []
    problem_ids = {inst.instance_id: _problem_identity(spec, inst) for inst in instances}
    for inst in instances:
        for L, init, alpha, max_iters, tol in itertools.product(
            spec.depth, spec.init_scheme, spec.alpha, spec.train.max_iters, spec.train.tol
        ):
            for method in spec.methods:
                if method.name == "gd":
                    variants = [(eta, None, None) for eta in method.eta]
                else:
                    variants = list(itertools.product(method.eta, method.eta_ratio,
                                                      method.schedule))
                for eta, ratio, schedule in variants:
                    identity = {
                        **problem_ids[inst.instance_id],
                        "method": method.name, "L": int(L), "init": init, "alpha": _num(alpha),
                        "eta": _num(eta), "eta_ratio": _num(ratio), "schedule": schedule,
                        "max_iters": int(max_iters), "tol": _num(tol),
                        "checkpoints": int(spec.train.checkpoints),
                    }
                    runs.append(Run(
                        run_id=_hash(identity, "r-"),
                        instance_id=inst.instance_id, method=method.name, L=int(L), init=init,
                        alpha=float(alpha), eta=float(eta),
                        eta_ratio=None if ratio is None else float(ratio), schedule=schedule,
                        max_iters=int(max_iters), tol=float(tol),
                        checkpoints=int(spec.train.checkpoints),
                    ))
    if len({r.run_id for r in runs}) != len(runs):  # spec validation rules this out
        raise AssertionError("two runs of the sweep share a run_id")
    return Plan(spec=spec, instances=tuple(instances), runs=tuple(runs))


def _problem_identity(spec: SweepSpec, inst: InstanceKey) -> dict:
    """What identifies an instance (and is part of each of its runs' identity)."""
    base = {"seed": int(spec.seed), "trial": inst.trial, "sign": inst.sign}
    if inst.file_sha256 is not None:
        return {**base, "file_sha256": inst.file_sha256}
    return {**base, "M": inst.M, "N": inst.N, "s": inst.s}


def _instances(spec: SweepSpec) -> list[InstanceKey]:
    p = spec.problem
    out: list[InstanceKey] = []
    if p.file is not None:
        M, N = p.file_shape  # type: ignore[misc]
        file_code = int(p.file_sha256[:15], 16)  # type: ignore[index]
        for sign, trial in itertools.product(p.sign, range(spec.trials)):
            seed = instance_seed(spec.seed, (1, file_code, _SIGN_CODE[sign], trial))
            key = InstanceKey("", trial, sign, M, N, None, seed, p.file, p.file_sha256)
            out.append(_with_id(spec, key))
        return out
    for M, N, s, sign, trial in itertools.product(p.M, p.N, p.sparsity, p.sign,
                                                  range(spec.trials)):
        seed = instance_seed(spec.seed, (0, M, N, s, _SIGN_CODE[sign], trial))
        out.append(_with_id(spec, InstanceKey("", trial, sign, M, N, s, seed)))
    return out


def _with_id(spec: SweepSpec, key: InstanceKey) -> InstanceKey:
    return replace(key, instance_id=_hash(_problem_identity(spec, key), "i-", 16))


def summarize(plan: Plan, tasks: list[Task]) -> str:
    """The text `wnsweep plan` prints: counts and a cost estimate."""
    spec = plan.spec
    by_method: dict[str, int] = {}
    for run in plan.runs:
        by_method[run.method] = by_method.get(run.method, 0) + 1
    todo = sum(len(t.runs) for t in tasks)
    cpu = sum(t.est_seconds for t in tasks)
    lines = [
        f"sweep {spec.name} ({spec.source}), spec hash {spec.spec_hash[:12]}",
        f"runs:      {len(plan.runs)} ("
        + ", ".join(f"{m} {n}" for m, n in sorted(by_method.items())) + ")",
        f"instances: {len(plan.instances)} (one basis-pursuit solve each)",
        f"to run:    {todo} runs in {len(tasks)} tasks",
        f"cost:      at most ~{_duration(cpu)} of CPU time (every run to max_iters); "
        f"~{_duration(cpu / 2)} on 2 CPUs",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
