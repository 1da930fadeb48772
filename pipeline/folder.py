"""A results folder, read one way (layout in docs/SWEEP_FILES.md).

The store (resume, ``wnsweep status``) and ``analysis.load`` both read through ``ResultsFolder``,
so they resolve the same URI, list the same files, and give every shard the same verdict::

    folder = ResultsFolder("results/quickstart")      # or file://..., s3://bucket/prefix?...
    folder.manifest(), folder.sweep_yaml()
    inventory = folder.scan()        # a verdict for every file in runs/ and instances/

Shards are the files named ``part-<task>.parquet`` in ``runs/`` and ``instances/``; any other file
there (``notes.txt``, ``extra.parquet``, a hidden ``.tmp-*`` left by an interrupted write) is
*ignored*. The shards of one task form a pair, and the pair gets one verdict:

- ``done``: both shards are valid (the rule below); its run_ids count as stored.
- ``corrupt``: one of them is not valid; the reason names what is wrong.
- ``missing-instances``: a valid runs shard without its instances shard.
- ``orphan-instances``: an instances shard without its runs shard (harmless: the instances shard
  is written first, so an interrupted write leaves this; the task is simply not done).

Validity rule (``read_shard``): a shard is valid when it is readable Parquet; has every column of
its schema (``pipeline.schema``) except the optional ones (``OPTIONAL``); each of those columns has
a type that *casts* to the schema's without changing meaning (any integer for an integer, any
integer or float for a float, string or large_string, lists of such, or all-null); every page
reads back; the row count equals the ``wnsweep.rows`` metadata when present; its key column
(run_id, instance_id) holds no nulls; and a runs shard does not repeat a run_id.

Why castable types and not exact ones: a shard is data, and the values of an int32 ``L`` or a
large_string ``method`` are the same values. Shards are cast to the schema when read, so readers
always see the schema's types, while a shard written by an older or newer writer (or by hand)
with a narrower or wider type of the same kind is neither refused by ``analysis.load`` nor sent
back to be recomputed by a resume. A type of another kind (a string ``alpha``) is refused.

Cost: validity needs every page decoded, so ``scan`` reads each shard once, whole, keeping only
the columns its caller asks for (the store keeps none: the run_ids are always collected). A
metadata-only check would replace ``_read_pages`` in ``read_shard`` and nothing else.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import schema

RUNS, INSTANCES = "runs", "instances"
SHARD_PREFIX, SHARD_SUFFIX = "part-", ".parquet"

DONE, CORRUPT = "done", "corrupt"
MISSING_INSTANCES, ORPHAN_INSTANCES = "missing-instances", "orphan-instances"

SCHEMAS = {RUNS: schema.RUNS_SCHEMA, INSTANCES: schema.INSTANCES_SCHEMA}
#: Columns a shard may omit (read as nulls): for runs, schema.OPTIONAL_RUN_COLUMNS; for instances,
#: an instance's trial, M, N, s and sign repeat columns of its runs, so readers take them there.
OPTIONAL = {RUNS: schema.OPTIONAL_RUN_COLUMNS,
            INSTANCES: frozenset({"trial", "M", "N", "s", "sign"})}
KEYS = {RUNS: "run_id", INSTANCES: "instance_id"}


class StoreError(RuntimeError):
    """The output folder cannot be used as asked (for example, written by another spec)."""


class ShardError(ValueError):
    """A shard that cannot be used; ``reason`` starts with its verdict (``corrupt: ...``)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"bad shard {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class ShardStatus:
    """The verdict on one task's pair of shards, and what was read from a done pair."""

    task_id: str
    state: str  # done | corrupt | missing-instances | orphan-instances
    runs: int = 0
    detail: str = ""
    version: str = ""  # the wnsweep version that wrote the runs shard
    path: str = ""  # the file the verdict names (the runs shard, unless instances is at fault)
    run_ids: frozenset[str] = frozenset()
    spec_hashes: frozenset[str] = frozenset()
    runs_table: pa.Table | None = field(default=None, repr=False)
    instances_table: pa.Table | None = field(default=None, repr=False)

    @property
    def reason(self) -> str:
        """The verdict and what is wrong, as ``wnsweep status`` and ``ShardError`` say it."""
        return f"{self.state}: {self.detail}" if self.detail else self.state

    def error(self) -> ShardError:
        return ShardError(self.path, self.reason)


@dataclass
class Inventory:
    """What a results folder holds: valid run_ids, a verdict per shard pair, ignored files."""

    run_ids: set[str] = field(default_factory=set)
    shards: list[ShardStatus] = field(default_factory=list)
    duplicates: int = 0  # run_ids of valid shards already seen in an earlier valid shard
    ignored: list[str] = field(default_factory=list)  # e.g. "runs/notes.txt"

    @property
    def corrupt(self) -> list[ShardStatus]:
        """Pairs whose runs cannot count as stored (corrupt or missing-instances)."""
        return [s for s in self.shards if s.state not in (DONE, ORPHAN_INSTANCES)]

    @property
    def done(self) -> list[ShardStatus]:
        return [s for s in self.shards if s.state == DONE]

    @property
    def versions(self) -> set[str]:
        """The wnsweep versions that wrote the valid runs shards."""
        return {s.version for s in self.done}

    def add(self, status: ShardStatus) -> None:
        if status.state == DONE:
            self.duplicates += len(self.run_ids & status.run_ids)
            self.run_ids |= status.run_ids
        self.shards.append(status)


@dataclass
class ShardRead:
    """One shard read and checked: ``problem`` is "" when it is valid."""

    problem: str = ""
    table: pa.Table | None = None  # the kept columns, cast to the schema, filtered
    keys: list | None = None  # the key column, whole (before any filter)
    metadata: dict[bytes, bytes] = field(default_factory=dict)


class ResultsFolder:
    """A results folder: ``uri`` a local path, ``file://...`` or any pyarrow filesystem URI
    (``s3://bucket/prefix?endpoint_override=host:port``)."""

    def __init__(self, uri: str | os.PathLike):
        text = os.fspath(uri)
        if "://" in text:
            self.fs, root = pafs.FileSystem.from_uri(text)
            self.root = root.rstrip("/") or root
            self.uri = text
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(text)
            self.uri = self.root
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def shard_path(self, kind: str, task_id: str) -> str:
        return self.path(kind, f"{SHARD_PREFIX}{task_id}{SHARD_SUFFIX}")

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def exists(self) -> bool:
        """Whether the folder holds a manifest (was written by ``wnsweep run``)."""
        return self.fs.get_file_info(self.path("manifest.json")).type == pafs.FileType.File

    # -- manifest and spec ------------------------------------------------------------------------

    def manifest(self) -> dict | None:
        """``manifest.json`` as a dict, None when absent; StoreError naming it when unreadable."""
        text = self._read_text("manifest.json")
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self.path('manifest.json')}: not valid JSON ({exc})") from exc

    def sweep_yaml(self) -> str | None:
        """The sweep file as run (``sweep.yaml``), None when absent."""
        return self._read_text("sweep.yaml")

    def _read_text(self, name: str) -> str | None:
        path = self.path(name)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")

    # -- shards -----------------------------------------------------------------------------------

    def list_shards(self, kind: str) -> tuple[dict[str, str], list[str]]:
        """(task_id -> path of every shard of ``kind``, the other entries there as
        ``<kind>/<name>``, which are ignored)."""
        selector = pafs.FileSelector(self.path(kind), allow_not_found=True)
        shards, ignored = {}, []
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            if info.type == pafs.FileType.File and name.startswith(SHARD_PREFIX) \
                    and name.endswith(SHARD_SUFFIX):
                shards[name[len(SHARD_PREFIX):-len(SHARD_SUFFIX)]] = info.path
            else:
                ignored.append(f"{kind}/{name}")
        return shards, sorted(ignored)

    def scan(self, columns: Sequence[str] | None = (), filter: ds.Expression | None = None,
             instance_columns: Sequence[str] | None = ()) -> Inventory:
        """Read every shard once and give each pair its verdict (see the module docstring).

        ``columns`` / ``instance_columns``: what a done pair keeps in ``runs_table`` /
        ``instances_table`` (None: all columns, cast to the schema, plus any newer ones; ``()``:
        no table). ``filter`` selects the rows kept in ``runs_table``; run_ids are always whole.
        """
        # runs/ is listed before instances/: a task's instances shard is written before its runs
        # shard, so a runs shard seen here has its instances shard in the second listing.
        runs, ignored_runs = self.list_shards(RUNS)
        instances, ignored_instances = self.list_shards(INSTANCES)
        inventory = Inventory(ignored=ignored_runs + ignored_instances)
        for task_id in sorted(set(runs) | set(instances)):
            inventory.add(self._pair(task_id, runs.get(task_id), instances.get(task_id),
                                     columns, filter, instance_columns))
        return inventory

    def _pair(self, task_id: str, runs_path: str | None, instances_path: str | None,
              columns: Sequence[str] | None, filter: ds.Expression | None,
              instance_columns: Sequence[str] | None) -> ShardStatus:
        if runs_path is None:
            return ShardStatus(task_id, ORPHAN_INSTANCES, path=instances_path or "",
                               detail="no runs shard (an interrupted write)")
        runs = read_shard(self.fs, runs_path, RUNS, columns, filter)
        if runs.problem:
            return ShardStatus(task_id, CORRUPT, path=runs_path, detail=runs.problem)
        if instances_path is None:
            return ShardStatus(task_id, MISSING_INSTANCES, path=runs_path,
                               detail="its instances shard is missing")
        instances = read_shard(self.fs, instances_path, INSTANCES, instance_columns)
        if instances.problem:
            return ShardStatus(task_id, CORRUPT, path=instances_path,
                               detail=f"instances shard: {instances.problem}")
        run_ids = frozenset(runs.keys or ())
        hashes = {m[schema.META_SPEC_HASH].decode() for m in (runs.metadata, instances.metadata)
                  if schema.META_SPEC_HASH in m}
        return ShardStatus(task_id, DONE, runs=len(run_ids), path=runs_path, run_ids=run_ids,
                           version=runs.metadata.get(schema.META_VERSION, b"").decode(),
                           spec_hashes=frozenset(hashes), runs_table=runs.table,
                           instances_table=instances.table)


def read_shard(fs: pafs.FileSystem, path: str, kind: str, columns: Sequence[str] | None = (),
               filter: ds.Expression | None = None) -> ShardRead:
    """Read and check one shard of ``kind`` (runs | instances) against the validity rule (module
    docstring), keeping ``columns`` (None: all) of the rows that pass ``filter``."""
    expected, key = SCHEMAS[kind], KEYS[kind]
    try:
        with fs.open_input_file(path) as f:
            try:
                parquet = pq.ParquetFile(f)
                physical = parquet.schema_arrow
            except (OSError, pa.ArrowException) as exc:
                return ShardRead(f"not a readable Parquet file ({exc})")
            problem = schema_problem(physical, expected, OPTIONAL[kind])
            if problem:
                return ShardRead(problem)
            metadata = dict(physical.metadata or {})
            target = pa.schema(list(expected) + [f for f in physical
                                                 if f.name not in expected.names])
            keep = target.names if columns is None else list(columns)
            try:
                table, keys, rows = _read_pages(parquet, target, key, keep, filter)
            except (OSError, pa.ArrowException) as exc:
                return ShardRead(f"damaged data ({exc})")
    except (OSError, pa.ArrowException) as exc:
        return ShardRead(f"cannot open ({exc})")
    recorded = metadata.get(schema.META_ROWS)
    if recorded is not None and recorded.decode(errors="replace").strip() != str(rows):
        return ShardRead(f"holds {rows} rows, its metadata says "
                         f"{recorded.decode(errors='replace')}")
    if any(k is None for k in keys):
        return ShardRead(f"column {key!r} has nulls")
    if kind == RUNS and len(set(keys)) != len(keys):
        return ShardRead("repeats a run_id")
    return ShardRead("", table if keep else None, keys, metadata)


def _read_pages(parquet: pq.ParquetFile, target: pa.Schema, key: str, keep: list[str],
                filter: ds.Expression | None) -> tuple[pa.Table, list, int]:
    """Decode every page of every column (so a damaged one shows up), keeping the key column
    whole and, of the rows that pass ``filter``, the ``keep`` columns cast to ``target`` (absent
    optional columns as nulls). Returns (kept table, key column, rows read)."""
    cast = keep if filter is None else target.names  # the filter may use any column
    wanted = pa.schema([target.field(name) for name in cast])
    batches, keys, rows = [], [], 0
    for batch in parquet.iter_batches():
        rows += batch.num_rows
        keys.extend(batch.column(key).to_pylist())
        if not keep:
            continue
        arrays = [batch.column(f.name).cast(f.type) if f.name in batch.schema.names
                  else pa.nulls(batch.num_rows, f.type) for f in wanted]
        conformed = pa.RecordBatch.from_arrays(arrays, schema=wanted)
        if filter is not None:
            conformed = conformed.filter(filter).select(keep)
        batches.append(conformed)
    kept = pa.schema([target.field(name) for name in keep])
    return pa.Table.from_batches(batches, schema=kept), keys, rows


def schema_problem(actual: pa.Schema, expected: pa.Schema, optional: frozenset[str]) -> str:
    """What keeps a shard's schema from the expected one ("" when nothing)."""
    missing = [f.name for f in expected if f.name not in actual.names and f.name not in optional]
    if missing:
        return f"missing required column(s) {', '.join(missing)}"
    bad = [f"{f.name}: {actual.field(f.name).type} (expected {f.type})" for f in expected
           if f.name in actual.names and not castable(actual.field(f.name).type, f.type)]
    if bad:
        return "incompatible column type(s) " + "; ".join(bad)
    return ""


def castable(actual: pa.DataType, expected: pa.DataType) -> bool:
    """True when a column of type ``actual`` reads as ``expected`` without changing meaning."""
    t = pa.types
    if actual.equals(expected) or t.is_null(actual):
        return True
    if t.is_integer(expected):
        return t.is_integer(actual)
    if t.is_floating(expected):
        return t.is_floating(actual) or t.is_integer(actual)
    if t.is_string(expected) or t.is_large_string(expected):
        return t.is_string(actual) or t.is_large_string(actual)
    if t.is_list(expected) or t.is_large_list(expected):
        return (t.is_list(actual) or t.is_large_list(actual)) and castable(
            actual.value_type, expected.value_type)
    return False
