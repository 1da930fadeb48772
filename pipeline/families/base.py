"""The contract of a model family (docs/MODEL.md; adding one: docs/SWEEP_FILES.md, "Model
families").

A family is one folder under ``pipeline/families/`` whose ``__init__`` builds one ``Family``: what
a sweep file may say about it (its parameters, schemes, methods, rules), how its instances are
seeded, what its runs cost, what columns they fill, and ``run``, which turns instances and runs
into rows. The sweep machinery (spec, plan, task, executors, store) reads only this record and
knows no family by name; ``pipeline.families`` is the registry that lists them.

Like the numerical modules it fronts, this module imports neither Ray nor pyarrow: result columns
are declared by kind (``COLUMN_KINDS``) and ``pipeline.results.schema`` maps kinds to Arrow types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pipeline.parameter import Param

if TYPE_CHECKING:  # the planner's records, passed to cost and run
    from pipeline.plan import InstanceKey, Run

#: The kinds a result column may have: Arrow int64, float64, string, list<int64>, list<float64>.
COLUMN_KINDS = ("int", "float", "str", "int_list", "float_list")

#: The machine model every family's cost estimate uses (calibrated with benchmarks/engine.py and
#: benchmarks/twolayer.py on one core of this project's 2-core machine, loaded): useful flop rate
#: of small products, seconds per trainable entry and step (element-wise passes), and the fixed
#: cost of one step of an engine call. Estimates are upper bounds (every run to max_iters).
EFFECTIVE_FLOPS = 1.2e10
ENTRY_SECONDS = 5e-9
STEP_OVERHEAD_SECONDS = 1.0e-4


@dataclass(frozen=True)
class RunContext:
    """What a family's ``run`` needs besides its instances and runs: the sweep's settings that
    are not run parameters, and an instance file's bytes when the executor shipped them (workers
    that do not share the driver's disk)."""

    sweep: str
    reference_solver: str  # the sweep file's reference.solver
    save_solutions: bool  # the sweep file's output.save_solutions
    problem_bytes: bytes | None = None


#: ``Family.run``: (context, instances, their runs by instance_id) -> per instance, in any order,
#: (instance_id, instance row, run rows in the order of its runs). Rows are dicts of column values
#: (the family's columns and the common ones of ``pipeline.results.schema``); the task adds the
#: header columns (ids, parameters, sweep, node) and nulls for columns a row does not give.
RunFunction = Callable[[RunContext, "list[InstanceKey]", "dict[str, list[Run]]"],
                       Iterator[tuple[str, dict, list[dict]]]]


def no_rules(axes: dict[str, tuple]) -> tuple[str, str] | None:
    return None


def at_most(name: str, bound: str, field: str) -> Callable[[dict[str, tuple]],
                                                           tuple[str, str] | None]:
    """A ``Family.check`` rule: every value of axis ``name`` is <= every value of ``bound``
    (``s <= M``), else ``(field, message)``."""
    def check(axes: dict[str, tuple]) -> tuple[str, str] | None:
        values = [x for x in axes.get(name, ()) if x is not None]
        limits = [x for x in axes.get(bound, ()) if x is not None]
        if values and limits and max(values) > min(limits):
            return (field, f"{name} must be <= {bound} for every combination, got "
                    f"{name} = {max(values)}, {bound} = {min(limits)}")
        return None

    return check


@dataclass(frozen=True)
class Family:
    """One model family (module docstring). Every field is data or a pure function.

    name:             the value of ``model.family``.
    summary:          one line: the model, its methods, its reference solution.
    reference:        what each instance costs besides its runs, for ``wnsweep plan``.
    params:           its own run and instance parameters (``Param.families`` is set to this
                      family by the registry), merged into ``pipeline.parameters.PARAMS``.
    overrides:        ``((parameter name, choices, default), ...)`` for shared parameters:
                      the words it takes (``()``: all) and its default (``init.scheme``: its
                      schemes; ``problem.sparsity``: ``None`` when it may be omitted).
    methods:          ``{method key: display name}`` of the methods it defines (``gd: GD``).
    seed_codes:       the first entries of its instances' seed spawn keys. Never reused by
                      another family, never changed: they seed every stored instance.
    spawn_key:        ``(instance parameters, trial, file code or None) -> spawn key`` of an
                      instance's seed, starting with one of ``seed_codes``.
    instance_columns: ``((name, kind), ...)``: columns of the instances shard it fills.
    run_columns:      ``((name, kind), ...)``: columns of the runs shard it fills.
    summary_columns:  run columns the statistics summarize per cell (median and quartiles).
    recovery_column:  a run recovers when this column is <= the threshold (None: no notion).
    takes_file:       whether ``problem.file`` (a user's instance) can hold its problem.
    check:            rules across its axes, on the values its instances get: ``(field,
                      message)`` of the first violated one, or None.
    quiet:            called before a quiet run computes in the driver's own process (serial):
                      keeps what its libraries print on their own (a solver's banner) away.
    cost:             ``(instance, its runs) -> seconds``, the planner's upper estimate.
    run:              the computation (``RunFunction``).
    """

    name: str
    summary: str
    reference: str
    params: tuple[Param, ...]
    methods: dict[str, str]
    seed_codes: tuple[int, ...]
    spawn_key: Callable[[dict[str, Any], int, int | None], tuple[int, ...]]
    run_columns: tuple[tuple[str, str], ...]
    cost: Callable[["InstanceKey", "list[Run]"], float]
    run: RunFunction
    overrides: tuple[tuple[str, tuple[str, ...], Any], ...] = ()
    instance_columns: tuple[tuple[str, str], ...] = ()
    summary_columns: tuple[str, ...] = ()
    recovery_column: str | None = None
    takes_file: bool = False
    check: Callable[[dict[str, tuple]], tuple[str, str] | None] = field(default=no_rules)
    quiet: Callable[[], None] = field(default=lambda: None)

    def __post_init__(self) -> None:
        for name, kind in (*self.run_columns, *self.instance_columns):
            if kind not in COLUMN_KINDS:
                raise ValueError(f"family {self.name}: column {name} has kind {kind!r}; "
                                 f"allowed: {', '.join(COLUMN_KINDS)}")
