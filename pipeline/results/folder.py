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

Validity rule (``read_shard``), read from metadata: a shard is valid when its Parquet footer is
readable; it has every column of its schema (``pipeline.results.schema``) except the optional ones
(``OPTIONAL``); each of those columns has a type that *casts* to the schema's without changing
meaning (any integer for an integer, any integer or float for a float, string or large_string,
lists of such, or all-null); the row count of its footer equals the ``wnsweep.rows`` metadata
when present; its key column (run_id, instance_id), the one column read, decodes whole with as
many rows, holds no nulls; and a runs shard does not repeat a run_id.

Why castable types and not exact ones: a shard is data, and the values of an int32 ``L`` or a
large_string ``method`` are the same values. Shards are cast to the schema when read, so readers
always see the schema's types, while a shard written by an older or newer writer (or by hand)
with a narrower or wider type of the same kind is neither refused by ``analysis.load`` nor sent
back to be recomputed by a resume. A type of another kind (a string ``alpha``) is refused.

Cost, and its trade-off. A scan that keeps no table (``wnsweep status``, resume: ``columns=()``)
reads the footer and the key column of each shard and nothing else (column projection: on S3,
a few ranged reads per shard), so its cost grows with the number of runs only through the 22
bytes of each run_id; 1e6 stored runs take about a second (benchmarks/scale.py). The price: a
damaged page in another column (a curve, a metric) is not seen by status or resume, which count
that shard as done. A scan that keeps tables (``analysis.load``) still decodes every page of
every shard it reads, so such a shard is named there (``corrupt: damaged data (...)``), and
moving it aside (or deleting it) makes the next ``wnsweep run`` recompute its runs. Footers,
schemas, row counts and run_ids (what decides which runs are stored) are checked by both.

Stored run_ids are held compactly (``RunIds``): one sorted numpy array of fixed-width bytes,
22 bytes a run_id, with vectorized membership, instead of a Python set of strings (~100 bytes
a run_id).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.results import schema

RUNS, INSTANCES = "runs", "instances"
SHARD_PREFIX, SHARD_SUFFIX = "part-", ".parquet"

DONE, CORRUPT = "done", "corrupt"
MISSING_INSTANCES, ORPHAN_INSTANCES = "missing-instances", "orphan-instances"

SCHEMAS = {RUNS: schema.RUNS_SCHEMA, INSTANCES: schema.INSTANCES_SCHEMA}
#: Columns a shard may omit (read as nulls; ``pipeline.results.schema``).
OPTIONAL = {RUNS: schema.OPTIONAL_RUN_COLUMNS, INSTANCES: schema.OPTIONAL_INSTANCE_COLUMNS}
KEYS = {RUNS: "run_id", INSTANCES: "instance_id"}


class StoreError(RuntimeError):
    """The output folder cannot be used as asked (for example, written by another spec)."""


class ResultsNotFoundError(FileNotFoundError):
    """The results folder, or its runs/ sub-folder, is missing or holds no shards."""


class ShardError(ValueError):
    """A shard that cannot be used; ``reason`` starts with its verdict (``corrupt: ...``)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"bad shard {path}: {reason}")
        self.path = path
        self.reason = reason


class RunIds(AbstractSet):
    """A set of run_ids held as one sorted numpy array of unique fixed-width bytes.

    Built from strings, from a numpy bytes array or from Arrow string arrays (``from_arrow``,
    which does not go through Python objects). ``contains`` tests many ids at once; ``&``, ``|``
    and ``-`` with another ``RunIds`` are vectorized (with any other set, it is converted first).
    Iterating yields ``str``; it compares equal to any set holding the same strings."""

    __slots__ = ("array",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, ids: Iterable[str] | np.ndarray = ()):
        if isinstance(ids, RunIds):
            self.array = ids.array
            return
        if not isinstance(ids, np.ndarray):
            ids = _bytes_array([i.encode() for i in ids])
        self.array = _sorted_unique(ids) if len(ids) else np.empty(0, dtype="S1")

    @classmethod
    def from_arrow(cls, column: pa.Array | pa.ChunkedArray) -> RunIds:
        return cls(arrow_bytes(column))

    @classmethod
    def _from_iterable(cls, it: Iterable[str]) -> RunIds:  # what the Set mixins build
        return cls(it)

    def __len__(self) -> int:
        return len(self.array)

    def __iter__(self) -> Iterator[str]:
        return (b.decode() for b in self.array)

    def __contains__(self, run_id: object) -> bool:
        if not isinstance(run_id, str) or not len(self.array):
            return False
        key = run_id.encode()
        i = int(np.searchsorted(self.array, key))
        return i < len(self.array) and self.array[i] == key

    def contains(self, ids: Iterable[str] | np.ndarray) -> np.ndarray:
        """A boolean array: whether each of ``ids`` is in the set (vectorized)."""
        if not isinstance(ids, np.ndarray):
            ids = _bytes_array([i.encode() for i in ids])
        if not len(self.array) or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        width = max(self.array.dtype.itemsize, ids.dtype.itemsize)
        ids = ids.astype(f"S{width}", copy=False)
        array = self.array.astype(f"S{width}", copy=False)
        i = np.minimum(np.searchsorted(array, ids), len(array) - 1)
        return array[i] == ids

    @staticmethod
    def _coerce(other: object) -> RunIds | None:
        if isinstance(other, RunIds):
            return other
        if isinstance(other, AbstractSet):
            return RunIds(other)  # type: ignore[arg-type]
        return None

    def __and__(self, other):
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return RunIds(self.array[other.contains(self.array)])

    __rand__ = __and__

    def __or__(self, other):
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return RunIds(np.concatenate([self.array, other.array]))

    __ror__ = __or__

    def __sub__(self, other):
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return RunIds(self.array[~other.contains(self.array)])

    def __rsub__(self, other):
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return other - self

    def __eq__(self, other):
        other = self._coerce(other)
        if other is None:
            return NotImplemented
        return len(self) == len(other) and bool(np.all(self.contains(other.array)))

    def __repr__(self) -> str:
        return f"RunIds({len(self)} run_ids)"


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """Sorted and without repeats. A stable sort (timsort for bytes) merges the already sorted
    runs of concatenated shards in near-linear time; faster here than ``np.unique``'s hashing."""
    ids = np.sort(ids, kind="stable")
    if len(ids) > 1:
        ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))]
    return ids


def _bytes_array(items: list[bytes]) -> np.ndarray:
    return np.array(items, dtype=bytes) if items else np.empty(0, dtype="S1")


def arrow_bytes(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A string column (no nulls) as a numpy array of fixed-width bytes. Ids of one width (every
    run_id is ``r-`` and 20 hex digits) are viewed straight from Arrow's data buffer."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    n = len(column)
    if n == 0:
        return np.empty(0, dtype="S1")
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset:column.offset + n + 1]
    widths = np.diff(offsets)
    width = int(widths[0])
    if width > 0 and bool(np.all(widths == width)):
        return np.frombuffer(column.buffers()[2], dtype=f"S{width}", count=n,
                             offset=int(offsets[0])).copy()
    return _bytes_array([v.encode() for v in column.to_pylist()])


@dataclass
class ShardStatus:
    """The verdict on one task's pair of shards, and what was read from a done pair."""

    task_id: str
    state: str  # done | corrupt | missing-instances | orphan-instances
    runs: int = 0
    detail: str = ""
    version: str = ""  # the wnsweep version that wrote the runs shard
    path: str = ""  # the file the verdict names (the runs shard, unless instances is at fault)
    run_ids: RunIds = field(default_factory=RunIds, repr=False)
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

    shards: list[ShardStatus] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # e.g. "runs/notes.txt"
    _merged: tuple[RunIds, int] | None = field(default=None, repr=False)

    @property
    def run_ids(self) -> RunIds:
        """The run_ids of the done pairs (merged once, when first asked for)."""
        return self._merge()[0]

    @property
    def duplicates(self) -> int:
        """Run_ids of done pairs already seen in another done pair (a shard never repeats one)."""
        return self._merge()[1]

    def _merge(self) -> tuple[RunIds, int]:
        if self._merged is None:
            arrays = [s.run_ids.array for s in self.done]
            total = sum(len(a) for a in arrays)
            ids = RunIds(np.concatenate(arrays)) if arrays else RunIds()
            self._merged = (ids, total - len(ids))
        return self._merged

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
        self.shards.append(status)
        self._merged = None


@dataclass
class ShardRead:
    """One shard read and checked: ``problem`` is "" when it is valid."""

    problem: str = ""
    table: pa.Table | None = None  # the kept columns, cast to the schema, filtered
    ids: RunIds | None = None  # a runs shard's run_ids, whole (before any filter)
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
        no table, and then only the shard's footer and key column are read). ``filter`` selects
        the rows kept in ``runs_table``; run_ids are always whole.
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
        run_ids = runs.ids if runs.ids is not None else RunIds()
        hashes = {m[schema.META_SPEC_HASH].decode() for m in (runs.metadata, instances.metadata)
                  if schema.META_SPEC_HASH in m}
        return ShardStatus(task_id, DONE, runs=len(run_ids), path=runs_path, run_ids=run_ids,
                           version=runs.metadata.get(schema.META_VERSION, b"").decode(),
                           spec_hashes=frozenset(hashes), runs_table=runs.table,
                           instances_table=instances.table)


def read_shard(fs: pafs.FileSystem, path: str, kind: str, columns: Sequence[str] | None = (),
               filter: ds.Expression | None = None) -> ShardRead:
    """Read and check one shard of ``kind`` (runs | instances) against the validity rule (module
    docstring), keeping ``columns`` (None: all) of the rows that pass ``filter``. With no
    column to keep, only the footer and the key column are read; otherwise every page of every
    column is decoded (so that a damaged page is named)."""
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
                if keep:
                    table, keys, rows = _read_pages(parquet, target, key, keep, filter)
                else:  # metadata only: the footer's row count and the key column
                    table, rows = None, parquet.metadata.num_rows
                    keys = parquet.read(columns=[key]).column(key)
            except (OSError, pa.ArrowException) as exc:
                return ShardRead(f"damaged data ({exc})")
    except (OSError, pa.ArrowException) as exc:
        return ShardRead(f"cannot open ({exc})")
    recorded = metadata.get(schema.META_ROWS)
    if recorded is not None and recorded.decode(errors="replace").strip() != str(rows):
        return ShardRead(f"holds {rows} rows, its metadata says "
                         f"{recorded.decode(errors='replace')}")
    if len(keys) != rows:
        return ShardRead(f"column {key!r} holds {len(keys)} rows, the footer says {rows}")
    if keys.null_count:
        return ShardRead(f"column {key!r} has nulls")
    ids = None
    if kind == RUNS:
        ids = RunIds.from_arrow(keys)
        if len(ids) != len(keys):
            return ShardRead("repeats a run_id")
    return ShardRead("", table if keep else None, ids, metadata)


def _read_pages(parquet: pq.ParquetFile, target: pa.Schema, key: str, keep: list[str],
                filter: ds.Expression | None) -> tuple[pa.Table, pa.ChunkedArray, int]:
    """Decode every page of every column (so a damaged one shows up), keeping the key column
    whole and, of the rows that pass ``filter``, the ``keep`` columns cast to ``target`` (absent
    optional columns as nulls). Returns (kept table, key column, rows read)."""
    cast = keep if filter is None else target.names  # the filter may use any column
    wanted = pa.schema([target.field(name) for name in cast])
    batches, keys, rows = [], [], 0
    for batch in parquet.iter_batches():
        rows += batch.num_rows
        keys.append(batch.column(key))
        arrays = [batch.column(f.name).cast(f.type) if f.name in batch.schema.names
                  else pa.nulls(batch.num_rows, f.type) for f in wanted]
        conformed = pa.RecordBatch.from_arrays(arrays, schema=wanted)
        if filter is not None:
            conformed = conformed.filter(filter).select(keep)
        batches.append(conformed)
    kept = pa.schema([target.field(name) for name in keep])
    key_type = parquet.schema_arrow.field(key).type
    return pa.Table.from_batches(batches, schema=kept), pa.chunked_array(keys, key_type), rows


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
