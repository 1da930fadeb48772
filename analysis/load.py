"""Read a results folder (local path or pyarrow filesystem URI) into one tidy pandas DataFrame.

Layout (docs/SWEEP_FILES.md, "What lands on disk")::

    <results>/sweep.yaml, manifest.json
    <results>/runs/part-<task>.parquet        pipeline.schema.RUNS_SCHEMA, one row per run
    <results>/instances/part-<task>.parquet   pipeline.schema.INSTANCES_SCHEMA, one row per instance

``load`` returns one row per run (all RUNS_SCHEMA columns, plus any newer columns a shard carries)
left-joined on ``instance_id`` with the instance columns runs do not already have
(``INSTANCE_COLUMNS``). Instances may be stored more than once after a resumed run: they are
deduplicated by ``instance_id`` (first occurrence in shard-name order wins).

Every shard is opened and checked on its own, so a bad file is always named: a shard that is not
readable Parquet, or lacks a required column, or has a column whose type cannot be cast to the
schema's, raises ``ShardError`` (``on_corrupt="raise"``) or is skipped with a ``warnings.warn``
naming it (``on_corrupt="skip"``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.schema import INSTANCES_SCHEMA, META_SPEC_HASH, RUNS_SCHEMA

#: Instance columns brought into the run table (runs already have trial, M, N, s, sign).
INSTANCE_COLUMNS = (
    "bp_solver",
    "bp_status",
    "bp_seconds",
    "l1_norm_bp",
    "bp_error_truth",
    "problem_file",
    "seed",
    "x_star",
    "x_l1",
)
#: Run columns a shard may omit (filled with nulls); every other RUNS_SCHEMA column is required.
OPTIONAL_RUN_COLUMNS = frozenset({"x_final"})

Filters = Any  # a pyarrow.compute.Expression or DNF: [(col, op, val), ...] or [[...], [...]]


class ResultsNotFoundError(FileNotFoundError):
    """The results folder, or its runs/ sub-folder, is missing or holds no shards."""


class ShardError(ValueError):
    """A shard that cannot be used (not Parquet, truncated, missing columns, wrong types)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"bad shard {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Location:
    """A results folder resolved to a pyarrow filesystem and a root path on it."""

    fs: pafs.FileSystem
    root: str
    uri: str
    is_local: bool

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])


def resolve(path_or_uri: str | os.PathLike) -> Location:
    """Resolve a local path or a URI (``s3://bucket/prefix``, ``file:///...``) to a ``Location``."""
    text = os.fspath(path_or_uri)
    if "://" in text:
        fs, root = pafs.FileSystem.from_uri(text)
        return Location(fs, root.rstrip("/"), text, isinstance(fs, pafs.LocalFileSystem))
    root = os.path.abspath(text)
    return Location(pafs.LocalFileSystem(), root, root, True)


def _list_shards(loc: Location, sub: str) -> list[str] | None:
    """Sorted ``*.parquet`` files under ``<root>/<sub>`` (None if the folder does not exist).

    Hidden / temporary names (leading '.' or '_', the atomic-write convention) are ignored.
    """
    folder = loc.join(sub)
    info = loc.fs.get_file_info(folder)
    if info.type != pafs.FileType.Directory:
        return None
    infos = loc.fs.get_file_info(pafs.FileSelector(folder, recursive=False))
    names = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.base_name.endswith(".parquet")
        and not i.base_name.startswith((".", "_"))
    ]
    return sorted(names)


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """True when a column of type ``actual`` can be read as ``expected`` without losing meaning."""
    t = pa.types
    if actual == expected or t.is_null(actual):
        return True
    if t.is_integer(expected):
        return t.is_integer(actual)
    if t.is_floating(expected):
        return t.is_floating(actual) or t.is_integer(actual)
    if t.is_string(expected) or t.is_large_string(expected):
        return t.is_string(actual) or t.is_large_string(actual)
    if t.is_list(expected) or t.is_large_list(expected):
        return (t.is_list(actual) or t.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    return False


def _check_schema(path: str, actual: pa.Schema, expected: pa.Schema, optional: frozenset) -> None:
    missing = [f.name for f in expected if f.name not in actual.names and f.name not in optional]
    if missing:
        raise ShardError(path, f"missing required column(s) {', '.join(missing)}")
    bad = [
        f"{f.name}: {actual.field(f.name).type} (expected {f.type})"
        for f in expected
        if f.name in actual.names and not _compatible(actual.field(f.name).type, f.type)
    ]
    if bad:
        raise ShardError(path, "incompatible column type(s) " + "; ".join(bad))


def _read_shards(
    loc: Location,
    paths: Sequence[str],
    expected: pa.Schema,
    optional: frozenset,
    filter_expr: ds.Expression | None,
    on_corrupt: str,
    skipped: list[str],
    spec_hashes: set[str],
) -> list[pa.Table]:
    """Read each shard separately (so an error names its file), cast to ``expected`` + extras."""
    tables = []
    for path in paths:
        try:
            try:
                with loc.fs.open_input_file(path) as fh:
                    physical = pq.ParquetFile(fh).schema_arrow
            except (pa.ArrowException, OSError) as exc:
                raise ShardError(path, f"not a readable Parquet file ({exc})") from exc
            _check_schema(path, physical, expected, optional)
            extras = [f for f in physical if f.name not in expected.names]
            schema = pa.schema(list(expected) + extras)
            try:
                table = ds.dataset(
                    path, schema=schema, format="parquet", filesystem=loc.fs
                ).to_table(filter=filter_expr)
            except (pa.ArrowException, OSError) as exc:
                raise ShardError(path, f"could not read data ({exc})") from exc
        except ShardError as exc:
            if on_corrupt == "raise":
                raise
            warnings.warn(f"skipping {exc}", stacklevel=3)
            skipped.append(path)
            continue
        meta = physical.metadata or {}
        if META_SPEC_HASH in meta:
            spec_hashes.add(meta[META_SPEC_HASH].decode())
        tables.append(table.replace_schema_metadata(None))
    return tables


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
        filters: applied to the runs while reading (pushed down into Parquet): a
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
    loc = resolve(path_or_uri)
    if loc.fs.get_file_info(loc.root).type != pafs.FileType.Directory:
        raise ResultsNotFoundError(f"results folder not found: {loc.uri}")
    run_paths = _list_shards(loc, "runs")
    if not run_paths:
        raise ResultsNotFoundError(
            f"no run shards in {loc.join('runs')} (expected runs/part-<task>.parquet)"
        )
    skipped: list[str] = []
    spec_hashes: set[str] = set()
    expr = _to_expression(filters)
    run_tables = _read_shards(
        loc, run_paths, RUNS_SCHEMA, OPTIONAL_RUN_COLUMNS, expr, on_corrupt, skipped, spec_hashes
    )
    if not run_tables:
        raise ResultsNotFoundError(f"no readable run shards in {loc.join('runs')}")
    runs = _concat(run_tables).to_pandas()
    n_before = len(runs)
    runs = runs.drop_duplicates("run_id", keep="first", ignore_index=True)
    if len(runs) < n_before:
        warnings.warn(
            f"{n_before - len(runs)} duplicate run_id row(s) in {loc.join('runs')}; kept the first",
            stacklevel=2,
        )

    inst = _load_instances(loc, on_corrupt, skipped, spec_hashes)
    df = runs.merge(inst, on="instance_id", how="left", validate="many_to_one")
    df.attrs = {
        "source": loc.uri,
        "skipped_shards": list(skipped),
        "spec_hashes": sorted(spec_hashes),
    }
    return df


def _load_instances(
    loc: Location, on_corrupt: str, skipped: list[str], spec_hashes: set[str]
) -> pd.DataFrame:
    """Instance columns (``instance_id`` + ``INSTANCE_COLUMNS``), one row per instance_id."""
    cols = ["instance_id", *INSTANCE_COLUMNS]
    empty = INSTANCES_SCHEMA.empty_table().select(cols).to_pandas()
    paths = _list_shards(loc, "instances")
    if not paths:
        warnings.warn(
            f"no instance shards in {loc.join('instances')}: instance columns will be null",
            stacklevel=3,
        )
        return empty
    optional = frozenset(f.name for f in INSTANCES_SCHEMA if f.name not in cols)
    tables = _read_shards(
        loc, paths, INSTANCES_SCHEMA, optional, None, on_corrupt, skipped, spec_hashes
    )
    if not tables:
        return empty
    inst = _concat([t.select(cols) for t in tables]).to_pandas()
    return inst.drop_duplicates("instance_id", keep="first", ignore_index=True)


def load_provenance(path_or_uri: str | os.PathLike) -> dict[str, Any]:
    """``{"manifest": dict | None, "sweep_yaml": str | None}`` read from the results folder."""
    loc = resolve(path_or_uri)
    out: dict[str, Any] = {"manifest": None, "sweep_yaml": None}
    for key, name in (("manifest", "manifest.json"), ("sweep_yaml", "sweep.yaml")):
        path = loc.join(name)
        if loc.fs.get_file_info(path).type != pafs.FileType.File:
            continue
        try:
            with loc.fs.open_input_stream(path) as fh:
                text = fh.read().decode("utf-8")
            out[key] = json.loads(text) if key == "manifest" else text
        except (OSError, ValueError, pa.ArrowException) as exc:
            warnings.warn(f"could not read {path}: {exc}", stacklevel=2)
    return out
