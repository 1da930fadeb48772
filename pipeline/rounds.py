"""Adaptive sweeps as rounds of ordinary runs, replayed from stored outcomes (docs/SWEEP_FILES.md,
"Adaptive sweeps"; the statistics and decisions: ``pipeline.adaptive``).

An adaptive sweep's runs are runs of its full grid: a cell (a method and a value of every axis)
and a trial give the same run, with the same run_id, instance and initial weights, as in a grid
sweep. What the ``adaptive:`` section decides is which cells exist (the base grid, then values
bisected where the contour passes) and how many trials ``0 .. n - 1`` each gets.

``replay(spec, outcomes)`` is a pure function of the stored outcomes (run_id -> success):
round 0 asks the base grid at ``trials.start``; round ``r + 1`` is ``adaptive.next_round`` of the
counts over the trials asked in rounds ``0 .. r``. The replay walks the rounds whose runs are all
stored and stops at the first one with runs missing: those are the runs to compute. So the driver
(``pipeline.sweep``) is a loop: read the outcomes, replay, run what is missing, until the replay
says done; a killed or interrupted sweep resumes by the same replay, and ends with exactly the
runs an uninterrupted one makes, whatever order its tasks finished in. ``wnsweep status`` replays
without running anything.

Cells. A cell's key holds its method and its value of every parameter with more than one value in
the sweep (``key_names``), in the order of the parameter table; ``along`` and ``across`` are
always among them. A parameter of another method (GD's ``eta_ratio``) is ``None`` in the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from pipeline import adaptive
from pipeline.parameters import BY_NAME, PARAMS
from pipeline.plan import (InstanceKey, Run, _instance, _instance_combinations, _instance_runs,
                           count_runs)
from pipeline.spec import SweepSpec

Key = tuple


@dataclass(frozen=True)
class RoundRecord:
    """One round as replayed: its index, the runs it asks for, how many are stored, the cells'
    statuses after it (``adaptive.RoundPlan.status``, counted) and the axis values it added."""

    index: int
    runs: int
    stored: int
    statuses: dict[str, int]
    new_values: dict[str, tuple]


@dataclass(frozen=True)
class Replay:
    """Where an adaptive sweep stands. ``rounds``: every round replayed (the last may be
    incomplete); ``pending``: the instances and runs of the first incomplete round still to
    compute (empty when done); ``spec``: the sweep with the axis values bisected so far (what
    tasks are made from); ``cells``: cell -> (successes, trials asked) over the complete rounds;
    ``status``: the last decision per cell; ``done``: nothing left to ask."""

    rounds: tuple[RoundRecord, ...]
    pending: tuple[tuple[InstanceKey, tuple[Run, ...]], ...]
    spec: SweepSpec
    names: tuple[str, ...]
    cells: dict[Key, tuple[int, int]]
    status: dict[Key, str]
    done: bool

    @property
    def round(self) -> int:
        """The round in progress (or the last one, when done)."""
        return self.rounds[-1].index if self.rounds else 0

    def slices(self) -> dict[Key, dict[str, int]]:
        """Per slice (a cell without its along and across values): how many cells are decided
        below / above the level, undecided, or undecided at their trial limit."""
        a = self.spec.adaptive
        drop = {self.names.index(a.along)} | (
            {self.names.index(a.across)} if a.across is not None else set())
        out: dict[Key, dict[str, int]] = {}
        for key, state in sorted(self.status.items(), key=lambda kv: adaptive._order(kv[0])):
            part = tuple(v for i, v in enumerate(key) if i not in drop)
            counts = out.setdefault(part, {"below": 0, "above": 0, "undecided": 0, "limit": 0})
            counts[state] += 1
        return out

    def slice_names(self) -> tuple[str, ...]:
        a = self.spec.adaptive
        return tuple(n for n in self.names if n not in (a.along, a.across))


def key_names(spec: SweepSpec) -> tuple[str, ...]:
    """The parameters a cell key holds, after ``method``: every parameter column with more than
    one value in the sweep, and ``along`` / ``across``, in table order."""
    a = spec.adaptive
    values = spec.values()
    wanted = {a.along, a.across} - {None}
    return ("method", *(p.name for p in PARAMS if p.column and p.name in values
                        and (len(values[p.name]) > 1 or p.name in wanted)))


def axis_kind(spec: SweepSpec, name: str) -> str:
    """How ``along`` / ``across`` are bisected: ``integer`` for an integer parameter, ``log`` for
    positive numbers spanning a factor of 10 or more, else ``linear``; other axes are never
    bisected (``category``)."""
    a = spec.adaptive
    if name not in (a.along, a.across):
        return "category"
    if BY_NAME[name].kind == "int":
        return "integer"
    if BY_NAME[name].kind == "str":
        return "category"
    values = _values(spec, name)
    return "log" if min(values) > 0 and max(values) >= 10 * min(values) else "linear"


def _values(spec: SweepSpec, name: str) -> tuple:
    """The values axis ``name`` takes in the sweep (``SweepSpec.values``), nulls left out."""
    return tuple(v for v in spec.values()[name] if v is not None)


def with_values(spec: SweepSpec, name: str, values: tuple) -> SweepSpec:
    """``spec`` with the axis ``name`` holding ``values`` (in its axes, the per-family axes and
    every method's axes that have it); its identity (name, hash) is unchanged."""
    axes = dict(spec.axes)
    by_family = {f: dict(a) for f, a in spec.by_family.items()}
    methods = spec.methods
    if name in axes:
        axes[name] = values
        for fam in by_family.values():
            if name in fam and fam[name] != (None,):
                fam[name] = values
    else:
        methods = tuple(dataclasses.replace(m, axes={**m.axes, name: values})
                        if name in m.axes else m for m in spec.methods)
    return dataclasses.replace(spec, axes=axes, by_family=by_family, methods=methods)


def cell_key(names: tuple[str, ...], inst: InstanceKey, run: Run) -> Key:
    return tuple(run.method if n == "method" else
                 run.params[n] if n in run.params else inst.params.get(n) for n in names)


def replay(spec: SweepSpec, outcomes: Mapping[str, bool]) -> Replay:
    """Replay the rounds of an adaptive sweep from ``outcomes`` (run_id -> success, for every
    stored run; others are ignored) up to the first round with runs not in ``outcomes``."""
    a = spec.adaptive
    if a is None:
        raise ValueError(f"sweep {spec.name} has no adaptive section")
    names = key_names(spec)
    base = {n: tuple(sorted(set(_values(spec, n)), key=adaptive._order1))
            for n in (a.along, a.across) if n is not None}
    grid_values = dict(base)
    current = spec
    run_of: dict[tuple[Key, int], str] = {}  # (cell, trial) -> run_id, for the trials asked
    asked: dict[Key, int] = {}
    want = {key: a.trials_start for key in _base_cells(spec, names)}
    records: list[RoundRecord] = []
    index = 0
    while True:
        todo = {k: (asked.get(k, 0), n) for k, n in want.items() if n > asked.get(k, 0)}
        batch = _runs_of(current, names, todo, run_of)
        ids = [r.run_id for _, runs in batch for r in runs]
        stored = sum(i in outcomes for i in ids)
        for key, (_, n) in todo.items():
            asked[key] = n
        if stored < len(ids):
            pending = tuple((inst, tuple(r for r in runs if r.run_id not in outcomes))
                            for inst, runs in batch)
            pending = tuple((inst, runs) for inst, runs in pending if runs)
            records.append(RoundRecord(index, len(ids), stored, {}, {}))
            return Replay(tuple(records), pending, current, names, {},
                          _stored_status(spec, asked, run_of, outcomes), False)
        cells = {k: (sum(outcomes[run_of[(k, t)]] for t in range(n)), n)
                 for k, n in asked.items()}
        grid = [adaptive.axis(n, axis_kind(spec, n), base[n], grid_values[n]) if n in base
                else _category(n, cells, names) for n in names]
        plan = adaptive.next_round(cells, a, grid)
        counts = {s: sum(1 for v in plan.status.values() if v == s)
                  for s in ("below", "above", "undecided", "limit")}
        records.append(RoundRecord(index, len(ids), stored, counts,
                                   {k: tuple(v for v, _ in vs)
                                    for k, vs in plan.new_values.items()}))
        if plan.done:
            return Replay(tuple(records), (), current, names, cells, dict(plan.status), True)
        for name, made in plan.new_values.items():
            grid_values[name] = tuple(sorted(set(grid_values[name]) | {v for v, _ in made},
                                             key=adaptive._order1))
            current = with_values(current, name, grid_values[name])
        want = {**asked, **plan.trials}
        index += 1


def _category(name: str, cells: Mapping[Key, tuple[int, int]],
              names: tuple[str, ...]) -> adaptive.Axis:
    """A never-bisected axis, with the values its cells have."""
    i = names.index(name)
    values = tuple(sorted({k[i] for k in cells}, key=adaptive._order1))
    return adaptive.Axis(name, "category", values, (0,) * len(values))


def _base_cells(spec: SweepSpec, names: tuple[str, ...]) -> list[Key]:
    """Every cell of the base grid (the file's axes), from one trial of every instance
    combination."""
    cells: dict[Key, None] = {}
    for params in _instance_combinations(spec):
        inst = _instance(spec, params, 0)
        for run in _instance_runs(spec, inst):
            cells[cell_key(names, inst, run)] = None
    return sorted(cells, key=adaptive._order)


def _runs_of(spec: SweepSpec, names: tuple[str, ...], todo: Mapping[Key, tuple[int, int]],
             run_of: dict[tuple[Key, int], str]) -> list[tuple[InstanceKey, list[Run]]]:
    """The runs of trials ``lo .. hi - 1`` of each cell in ``todo`` (cell -> (lo, hi)), grouped
    by instance in plan order; records each (cell, trial)'s run_id in ``run_of``."""
    if not todo:
        return []
    positions = [i for i, n in enumerate(names) if n != "method" and BY_NAME[n].scope == "instance"]
    by_instance: dict[Key, dict[Key, tuple[int, int]]] = {}  # instance part -> its cells
    for key, bounds in todo.items():
        by_instance.setdefault(tuple(key[i] for i in positions), {})[key] = bounds
    out = []
    for params in _instance_combinations(spec):
        cells = by_instance.get(tuple(params.get(names[i]) for i in positions), {})
        last = max((hi for _, hi in cells.values()), default=0)
        for trial in range(last):
            wanted = {k for k, (lo, hi) in cells.items() if lo <= trial < hi}
            if not wanted:
                continue
            inst = _instance(spec, params, trial)
            runs = []
            for run in _instance_runs(spec, inst):
                key = cell_key(names, inst, run)
                if key in wanted:
                    run_of[(key, trial)] = run.run_id
                    runs.append(run)
            if runs:
                out.append((inst, runs))
    return out


def _stored_status(spec: SweepSpec, asked: Mapping[Key, int],
                   run_of: Mapping[tuple[Key, int], str],
                   outcomes: Mapping[str, bool]) -> dict[Key, str]:
    """The cells' states as the stored runs stand, for ``status`` mid-round: each cell's counts
    over its stored trials, decided as a round would decide them."""
    out = {}
    for key, n in asked.items():
        done = [outcomes[run_of[(key, t)]] for t in range(n) if run_of.get((key, t)) in outcomes]
        out[key] = adaptive.cell_status(sum(done), len(done), spec.adaptive)
    return out


def finest_spec(spec: SweepSpec) -> SweepSpec:
    """The sweep's full grid at the finest resolution ``refine`` bisections can reach, with
    ``trials.max`` trials per cell (``spec.trials``): what a non-adaptive sweep of the same
    resolution runs, and an upper bound of the adaptive sweep's runs."""
    a = spec.adaptive
    finer = spec
    for name in (a.along, a.across):
        if name is not None and axis_kind(spec, name) != "category":
            values = adaptive.finest_values(_values(spec, name), axis_kind(spec, name), a.refine)
            finer = with_values(finer, name, values)
    return finer


def full_grid_runs(spec: SweepSpec) -> int:
    """Runs of ``finest_spec``, counted arithmetically (``plan.count_runs``)."""
    return count_runs(finest_spec(spec))
