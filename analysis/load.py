"""Read a results folder (local path or pyarrow filesystem URI) into one tidy pandas DataFrame.

Layout (docs/SWEEP_FILES.md)::

    <results>/sweep.yaml, manifest.json
    <results>/runs/part-<task>.parquet        pipeline.results.schema.RUNS_SCHEMA, one row per run
    <results>/instances/part-<task>.parquet   pipeline.results.schema.INSTANCES_SCHEMA, one row per instance

``load`` returns one row per run (all RUNS_SCHEMA columns, plus any newer columns a shard carries)
left-joined on ``instance_id`` with the instance columns runs do not already have
(``INSTANCE_COLUMNS``). Instances may be stored more than once after a resumed run: they are
deduplicated by ``instance_id`` (first occurrence in shard-name order wins).

Which files are shards and which shards are valid is ``pipeline.results.folder``'s rule, the same one
``wnsweep status`` and resume apply: a shard pair that status calls ``corrupt`` or
``missing-instances`` raises ``ShardError`` naming the file and giving that verdict
(``on_corrupt="raise"``) or is skipped with a ``warnings.warn`` naming it (``on_corrupt="skip"``).
Files that are not ``part-*.parquet`` are ignored, as are instances shards without runs.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.results.folder import (
    OPTIONAL,
    ORPHAN_INSTANCES,
    RUNS,
    ResultsFolder,
    ResultsNotFoundError,
    ShardError,
    StoreError,
)
from pipeline import families
from pipeline.parameters import PARAMS
from pipeline.results.schema import INSTANCES_SCHEMA, RUNS_SCHEMA

__all__ = ["INSTANCE_COLUMNS", "ResultsNotFoundError", "ShardError", "load", "load_provenance",
           "resolve"]

#: Instance columns brought into the run table: every column of the instances shard that runs
#: do not already have (they have trial, M, N, s, sign), in the order of wnsweep 0.3's tables,
#: then those of other families in schema order.
_ORDER_0_3 = ("bp_solver", "bp_status", "bp_seconds", "l1_norm_bp", "bp_error_truth",
              "problem_file", "seed", "x_star", "x_l1")
INSTANCE_COLUMNS = tuple(sorted(
    (n for n in INSTANCES_SCHEMA.names if n not in RUNS_SCHEMA.names),
    key=lambda n: (_ORDER_0_3.index(n) if n in _ORDER_0_3 else len(_ORDER_0_3),
                   INSTANCES_SCHEMA.names.index(n))))
#: Run columns a shard may omit (filled with nulls); every other RUNS_SCHEMA column is required.
OPTIONAL_RUN_COLUMNS = OPTIONAL[RUNS]

Filters = Any  # a pyarrow.compute.Expression or DNF: [(col, op, val), ...] or [[...], [...]]


def resolve(path_or_uri: str | os.PathLike) -> ResultsFolder:
    """A local path or a URI (``s3://bucket/prefix``, ``file:///...``) as a ``ResultsFolder``
    (``fs``, ``root``, ``uri``, ``is_local``)."""
    return ResultsFolder(path_or_uri)


def _to_expression(filters: Filters) -> ds.Expression | None:
    """``filters`` as an Expression, checked against RUNS_SCHEMA (so a bad filter is reported
    as such, not as a bad shard)."""
    if filters is None:
        return None
    try:
        expr = filters if isinstance(filters, ds.Expression) else pq.filters_to_expression(filters)
        ds.dataset(RUNS_SCHEMA.empty_table()).to_table(filter=expr)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ValueError(f"invalid filters {filters!r} for the runs table: {exc}") from exc
    return expr


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="default")


def load(
    path_or_uri: str | os.PathLike,
    filters: Filters = None,
    on_corrupt: Literal["raise", "skip"] = "raise",
) -> pd.DataFrame:
    """Runs of a results folder joined with their instances, as a pandas DataFrame.

    Args:
        path_or_uri: the results folder (``results/<name>``) or a pyarrow filesystem URI.
        filters: applied to the runs while reading, batch by batch, so that only matching
            rows are kept (every page is still decoded, to check the shard): a
            ``pyarrow.compute`` expression, or DNF tuples as for ``pyarrow.parquet``, e.g.
            ``[("method", "=", "wn"), ("L", "in", [2, 3])]``. Only run columns can be filtered.
        on_corrupt: ``"raise"`` a ``ShardError`` naming a bad shard, or ``"skip"`` it with a warning.

    Returns:
        One row per run: RUNS_SCHEMA columns (list columns hold numpy arrays; nullable integer
        columns with nulls become float) plus ``INSTANCE_COLUMNS`` (null when the instance is not
        stored). ``df.attrs`` holds ``source``, ``skipped_shards`` and ``spec_hashes``.

    Raises:
        ResultsNotFoundError: missing folder, missing runs/ or no run shards.
        ShardError: a bad shard with ``on_corrupt="raise"``.
    """
    if on_corrupt not in ("raise", "skip"):
        raise ValueError(f"on_corrupt must be 'raise' or 'skip', not {on_corrupt!r}")
    folder = resolve(path_or_uri)
    if not folder.is_dir():
        raise ResultsNotFoundError(f"results folder not found: {folder.uri}")
    expr = _to_expression(filters)
    inventory = folder.scan(columns=None, filter=expr,
                            instance_columns=("instance_id", *INSTANCE_COLUMNS))
    if all(s.state == ORPHAN_INSTANCES for s in inventory.shards):
        raise ResultsNotFoundError(
            f"no run shards in {folder.path(RUNS)} (expected runs/part-<task>.parquet)"
        )
    skipped: list[str] = []
    for status in inventory.corrupt:
        if on_corrupt == "raise":
            raise status.error()
        warnings.warn(f"skipping {status.error()}", stacklevel=2)
        skipped.append(status.path)
    done = inventory.done
    if not done:
        raise ResultsNotFoundError(f"no readable run shards in {folder.path(RUNS)}")
    runs = _concat([s.runs_table for s in done]).to_pandas()
    n_before = len(runs)
    runs = runs.drop_duplicates("run_id", keep="first", ignore_index=True)
    if len(runs) < n_before:
        warnings.warn(
            f"{n_before - len(runs)} duplicate run_id row(s) in {folder.path(RUNS)}; "
            "kept the first",
            stacklevel=2,
        )
    inst = _concat([s.instances_table for s in done]).to_pandas()
    inst = inst.drop_duplicates("instance_id", keep="first", ignore_index=True)
    df = runs.merge(inst, on="instance_id", how="left", validate="many_to_one")
    _fill_added_defaults(df)
    df.attrs = {
        "source": folder.uri,
        "skipped_shards": skipped,
        "spec_hashes": sorted(set().union(*(s.spec_hashes for s in done))),
        "adaptive": _stored_adaptive(folder),
    }
    return df


def _stored_adaptive(folder: ResultsFolder) -> dict | None:
    """The adaptive section of the stored spec (``analysis.contours``' defaults), if any."""
    try:
        manifest = folder.manifest() or {}
    except (OSError, ValueError, StoreError, pa.ArrowException):
        return None
    return (manifest.get("spec") or {}).get("adaptive")


def load_provenance(path_or_uri: str | os.PathLike) -> dict[str, Any]:
    """``{"manifest": dict | None, "sweep_yaml": str | None}`` read from the results folder."""
    folder = resolve(path_or_uri)
    out: dict[str, Any] = {"manifest": None, "sweep_yaml": None}
    for key, read in (("manifest", folder.manifest), ("sweep_yaml", folder.sweep_yaml)):
        try:
            out[key] = read()
        except (OSError, ValueError, StoreError, pa.ArrowException) as exc:
            warnings.warn(f"could not read {key} of {folder.uri}: {exc}", stacklevel=2)
    return out


def _fill_added_defaults(df: pd.DataFrame) -> None:
    """Numeric parameters added after a folder was written (``noise``, ``label_noise``; the
    two-layer family's are always written) are null in its older rows: they ran at the default,
    so the default stands in wherever the parameter applies to the row's family and method (a
    resumed folder's old and new rows are one cell). A generated problem's parameter stays null
    for an instance file's runs."""
    names = df["family"].map(families.family_name) if "family" in df else None
    for p in PARAMS:
        if (p.identity != "unless_default" or p.kind == "str" or p.required
                or p.default is None or p.name not in df or not df[p.name].isna().any()):
            continue
        applies = df["method"].map(p.applies_to) if p.methods is not None else True
        if names is not None:
            applies = applies & names.map(p.applies_to_family)
        elif not p.applies_to_family(families.DEFAULT_FAMILY):
            continue
        if p.generated and "problem_file" in df:
            applies = applies & df["problem_file"].isna()
        df.loc[df[p.name].isna() & applies, p.name] = p.default
