"""The on-disk schema of result shards (docs/SWEEP_FILES.md, "What lands on disk").

One source of truth for column names and types: the task builds its tables with these schemas,
the store validates shards against them and ``analysis.load`` checks what it reads. Columns may be
added over time; none is renamed.

The columns are the header every row has (ids, the run parameters of ``pipeline.parameters``, the
sweep and the worker), the results every family gives (``COMMON_RUN_FIELDS``), and the columns each
model family declares by kind (``pipeline.families``; null in the rows of the other families). The
layout of wnsweep 0.1's shards, when the diagonal family was the only one, is kept as it was
(``_RUNS_0_1``, ``_INSTANCES_0_1``); every column added since follows, in registry order.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.families import REGISTRY
from pipeline.parameters import INSTANCE_PARAMS, PARAMS

#: Key-value metadata keys every shard's schema carries.
META_SPEC_HASH = b"wnsweep.spec_hash"
META_VERSION = b"wnsweep.version"
META_TASK = b"wnsweep.task"
META_ROWS = b"wnsweep.rows"

#: Arrow type of each column kind (``Param.kind``, ``pipeline.families.base.COLUMN_KINDS``).
ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(),
               "int_list": pa.list_(pa.int64()), "float_list": pa.list_(pa.float64())}

#: The header of a run row, written by the task (``pipeline.task``) whatever the family.
RUN_HEADER = [("run_id", pa.string()), ("sweep", pa.string()), ("trial", pa.int64()),
              ("instance_id", pa.string()), ("method", pa.string())]  # method: gd | wn | ...
#: The results every family's run rows give (error_truth and x_final may be null).
COMMON_RUN_FIELDS = [
    ("status", pa.string()),  # converged | max_iters | diverged
    ("iterations", pa.int64()),
    ("loss_final", pa.float64()),
    ("error_truth", pa.float64()),  # distance to the ground truth; null without one
    ("curve_iter", pa.list_(pa.int64())),
    ("curve_loss", pa.list_(pa.float64())),
    ("x_final", pa.list_(pa.float64())),  # null unless output.save_solutions
    ("seconds", pa.float64()),  # wall time of the run's share of its engine call
    ("node", pa.string()),  # host name of the worker that computed it (set by the task)
]
#: Every instance row has these besides its parameters (``x_star``: the ground truth, flattened
#: row-major; null when unknown; ``problem_file``: null for generated instances).
COMMON_INSTANCE_FIELDS = [("instance_id", pa.string()), ("trial", pa.int64()),
                          ("seed", pa.int64()), ("problem_file", pa.string()),
                          ("x_star", pa.list_(pa.float64()))]

_PARAMS = "<run parameters>"  # where the parameter columns sit in a layout
_RUNS_0_1 = ("run_id", "sweep", "trial", "instance_id", "method", _PARAMS, "status", "iterations",
             "loss_final", "error_l1", "rel_error_l1", "error_truth", "l1_norm", "l1_gap", "r0",
             "r_final", "c_inf", "alpha_eff", "curve_iter", "curve_loss", "x_final", "seconds",
             "node")
_INSTANCES_0_1 = ("instance_id", "trial", _PARAMS, "seed", "problem_file", "bp_solver",
                  "bp_status", "bp_seconds", "l1_norm_bp", "bp_error_truth", "x_star", "x_l1")

#: The instance parameters of the instances shard: those of wnsweep 0.1. Instance parameters
#: added since (``family``, ``outputs``) are columns of the runs shard only, where they repeat
#: on every run row: an instances shard written before them then stays valid (the store
#: requires every instances column it does not list as optional).
INSTANCE_SHARD_PARAMS = tuple(p.name for p in INSTANCE_PARAMS if p.identity == "always")


def _family_fields(kind: str) -> list[tuple[str, pa.DataType]]:
    """Every family's declared columns of ``kind`` ('runs' or 'instances'), registry order."""
    out: dict[str, pa.DataType] = {}
    for f in REGISTRY.values():
        for name, column_kind in (f.run_columns if kind == "runs" else f.instance_columns):
            out.setdefault(name, ARROW_TYPES[column_kind])
    return list(out.items())


def _layout(legacy: tuple[str, ...], fixed: list[tuple[str, pa.DataType]],
            params: list[tuple[str, pa.DataType]],
            families: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """The 0.1 layout's columns where they were, then every other column (fixed, then the
    families'), each once."""
    types = dict(fixed) | dict(families)
    fields = []
    for name in legacy:
        fields += params if name == _PARAMS else [(name, types[name])]
    placed = {name for name, _ in fields}
    fields += [(n, t) for n, t in (*fixed, *families) if n not in placed]
    return pa.schema(fields)


_RUN_PARAM_FIELDS = [(p.name, ARROW_TYPES[p.kind]) for p in PARAMS if p.column]
RUNS_SCHEMA = _layout(_RUNS_0_1, RUN_HEADER + COMMON_RUN_FIELDS, _RUN_PARAM_FIELDS,
                      _family_fields("runs"))
INSTANCES_SCHEMA = _layout(
    _INSTANCES_0_1, COMMON_INSTANCE_FIELDS,
    [(p.name, ARROW_TYPES[p.kind]) for p in INSTANCE_PARAMS if p.name in INSTANCE_SHARD_PARAMS],
    _family_fields("instances"))

#: Runs columns a valid shard may lack (read as nulls): x_final, written only with
#: output.save_solutions, and every column added after wnsweep 0.1 (parameters added since,
#: marked ``identity="unless_default"``, and results), so that shards written before a column
#: existed stay valid and resume computes nothing again.
_PARAM_COLUMNS = frozenset(name for name, _ in _RUN_PARAM_FIELDS)
#: Result columns added after wnsweep 0.1 (the theory overlay, the two-layer family, ...).
ADDED_RUN_COLUMNS = frozenset(n for n in RUNS_SCHEMA.names
                              if n not in _RUNS_0_1 and n not in _PARAM_COLUMNS)
OPTIONAL_RUN_COLUMNS = frozenset(
    {"x_final", *ADDED_RUN_COLUMNS,
     *(p.name for p in PARAMS if p.column and p.identity == "unless_default")})
#: Instances columns a valid shard may lack: an instance's trial and parameters repeat columns of
#: its runs, so readers take them there; columns added after 0.1.
OPTIONAL_INSTANCE_COLUMNS = frozenset(
    {"trial", *INSTANCE_SHARD_PARAMS,
     *(n for n in INSTANCES_SCHEMA.names if n not in _INSTANCES_0_1 and n not in
       INSTANCE_SHARD_PARAMS)})


def with_metadata(schema: pa.Schema, metadata: dict[bytes, bytes]) -> pa.Schema:
    """``schema`` with ``metadata`` merged into its key-value metadata."""
    merged = dict(schema.metadata or {})
    merged.update(metadata)
    return schema.with_metadata(merged)
