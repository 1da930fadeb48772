"""The on-disk schema of result shards (docs/SWEEP_FILES.md, "What lands on disk").

One source of truth for column names and types: the task builds its tables with these schemas,
the store validates shards against them and ``analysis.load`` checks what it reads. Columns may be
added over time; none is renamed.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.parameters import INSTANCE_PARAMS, PARAMS

#: Key-value metadata keys every shard's schema carries.
META_SPEC_HASH = b"wnsweep.spec_hash"
META_VERSION = b"wnsweep.version"
META_TASK = b"wnsweep.task"
META_ROWS = b"wnsweep.rows"

#: Arrow type of a parameter column, by ``Param.kind``.
ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}


def _param_fields(params) -> list[tuple[str, pa.DataType]]:
    """The columns of the run parameters (``pipeline.parameters``; null where a parameter is not
    the run's method's, and ``s`` for a user instance without x_star)."""
    return [(p.name, ARROW_TYPES[p.kind]) for p in params if p.column]


#: Result columns added after wnsweep 0.1 (optional in stored shards, see OPTIONAL_RUN_COLUMNS).
ADDED_RUN_FIELDS: list[tuple[str, pa.DataType]] = [
    # the theory overlay (docs/MODEL.md, "Predicted gradient-flow limits")
    ("pred_status", pa.string()),  # ok | inaccurate | infeasible | failed
    ("pred_error", pa.float64()),  # ||x~_T - x_pred|| / ||x_pred||; null unless ok/inaccurate
    ("pred_l1_gap", pa.float64()),  # ||x_pred||_1 / ||x_l1||_1 - 1
    ("pred_rel_error_l1", pa.float64()),  # ||x_pred - x_l1|| / ||x_l1||
    ("x_pred", pa.list_(pa.float64())),  # null unless output.save_solutions
    # the two-layer family (docs/MODEL.md, "The two-layer family"); null for diagonal rows
    ("error_min_norm", pa.float64()),  # ||U V^T - A^+ Y||_F / ||A^+ Y||_F
    ("rate", pa.float64()),  # fitted linear rate of the loss per step; null if not fittable
    ("imbalance_min", pa.float64()),  # lambda_min(U0^T U0 - V0^T V0)
    ("imbalance_max", pa.float64()),  # lambda_max(U0^T U0 - V0^T V0)
    ("imbalance_margin", pa.float64()),  # the margin that bounds the flow's rate
]
#: The result columns of the two-layer family alone (null for diagonal rows).
TWOLAYER_RUN_COLUMNS = ("error_min_norm", "rate", "imbalance_min", "imbalance_max",
                        "imbalance_margin")
#: The result columns of the diagonal family alone (null for twolayer rows).
DIAGONAL_RUN_COLUMNS = ("error_l1", "rel_error_l1", "l1_norm", "l1_gap", "r0", "r_final", "c_inf",
                        "alpha_eff", "pred_status", "pred_error", "pred_l1_gap",
                        "pred_rel_error_l1", "x_pred")
ADDED_RUN_COLUMNS = frozenset(name for name, _ in ADDED_RUN_FIELDS)

RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("sweep", pa.string()),
        ("trial", pa.int64()),
        ("instance_id", pa.string()),
        ("method", pa.string()),  # gd | wn
        *_param_fields(PARAMS),
        ("status", pa.string()),  # converged | max_iters | diverged
        ("iterations", pa.int64()),
        ("loss_final", pa.float64()),
        ("error_l1", pa.float64()),
        ("rel_error_l1", pa.float64()),
        ("error_truth", pa.float64()),  # null without x_star
        ("l1_norm", pa.float64()),
        ("l1_gap", pa.float64()),
        ("r0", pa.float64()),  # WN only
        ("r_final", pa.float64()),  # WN only
        ("c_inf", pa.float64()),  # WN only
        ("alpha_eff", pa.float64()),  # WN only
        ("curve_iter", pa.list_(pa.int64())),
        ("curve_loss", pa.list_(pa.float64())),
        ("x_final", pa.list_(pa.float64())),  # null unless output.save_solutions
        ("seconds", pa.float64()),  # wall time of the run's share of its batch
        ("node", pa.string()),  # host name of the worker that computed it
        *ADDED_RUN_FIELDS,
    ]
)

#: The instance parameters of the instances shard: those of wnsweep 0.1. Instance parameters
#: added since (``family``, ``outputs``) are columns of the runs shard only, where they repeat
#: on every run row: an instances shard written before them then stays valid (the store
#: requires every instances column it does not list as optional).
_INSTANCE_SHARD_PARAMS = tuple(p for p in INSTANCE_PARAMS if p.identity == "always")

INSTANCES_SCHEMA = pa.schema(
    [
        ("instance_id", pa.string()),
        ("trial", pa.int64()),
        *_param_fields(_INSTANCE_SHARD_PARAMS),
        ("seed", pa.int64()),
        ("problem_file", pa.string()),  # null for generated instances
        ("bp_solver", pa.string()),  # bp_*, x_l1: null for twolayer instances
        ("bp_status", pa.string()),
        ("bp_seconds", pa.float64()),
        ("l1_norm_bp", pa.float64()),
        ("bp_error_truth", pa.float64()),  # null without x_star
        ("x_star", pa.list_(pa.float64())),  # null without x_star; twolayer: X* (N, K) row-major
        ("x_l1", pa.list_(pa.float64())),
    ]
)


#: Runs columns a valid shard may lack (read as nulls): x_final, written only with
#: output.save_solutions, and every column added after wnsweep 0.1 (``ADDED_RUN_COLUMNS``, and
#: parameters added since, which ``pipeline.parameters`` marks ``identity="unless_default"``), so
#: that shards written before a column existed stay valid and resume computes nothing again.
OPTIONAL_RUN_COLUMNS = frozenset(
    {"x_final", *ADDED_RUN_COLUMNS,
     *(p.name for p in PARAMS if p.column and p.identity == "unless_default")})


def with_metadata(schema: pa.Schema, metadata: dict[bytes, bytes]) -> pa.Schema:
    """``schema`` with ``metadata`` merged into its key-value metadata."""
    merged = dict(schema.metadata or {})
    merged.update(metadata)
    return schema.with_metadata(merged)
