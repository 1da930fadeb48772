"""Writing a results folder, on disk or on an object store (layout in docs/SWEEP_FILES.md).

Layout: ``sweep.yaml``, ``manifest.json``, ``runs/part-<task>.parquet``,
``instances/part-<task>.parquet``. Every path goes through a pyarrow filesystem, so any URI that
pyarrow understands (a local path, ``file://``, ``s3://``, ...) works. What counts as a valid
shard, and which run_ids are stored, is decided by ``pipeline.results.folder`` (the same rules
``analysis.load`` applies); this module writes, quarantines and cleans.

Atomicity. A shard is written whole or not at all: on local disks under a hidden temporary name,
then renamed; on object stores it is encoded in memory first and then uploaded to its final key in
one write, so an interruption falls before the upload starts or after it has completed. The
instances shard of a task is written before its runs shard, and a run counts as stored only when
a runs shard holding it is valid, so a killed driver or worker can leave at most a hidden
temporary file or an unreferenced instances shard, both harmless.

Writers. A task's shards are named by the task id (a hash of its run_ids), so whoever writes them
(the Ray task where it ran, or the driver: ``pipeline.executors``) and however often (a retried
task, a task repeated after a killed driver), the same runs land under the same two names, each
replaced whole.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import posixpath
import socket
import subprocess
import uuid
from importlib import metadata

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.results import schema
from pipeline.results.folder import (  # noqa: F401  (Inventory, RunIds, ShardStatus: re-exported)
    INSTANCES,
    RUNS,
    Inventory,
    ResultsFolder,
    RunIds,
    ShardStatus,
    StoreError,
)
from pipeline.spec import SweepSpec

RUNS_DIR, INSTANCES_DIR, QUARANTINE_DIR = RUNS, INSTANCES, "corrupt"
LIBRARIES = ("numpy", "numba", "scipy", "cvxpy", "highspy", "pyarrow", "pandas", "ray", "pyyaml")


def compat_fingerprint(spec: SweepSpec) -> str:
    """What changes results without changing run_ids: the reference solver and saved solutions.
    A folder written with another fingerprint is refused unless --force."""
    payload = json.dumps({"bp_solver": spec.reference_solver,  # the key of wnsweep 0.1
                          "save_solutions": spec.save_solutions})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ResultsStore(ResultsFolder):
    """One results folder to write (``uri``: a local path or a pyarrow filesystem URI). Reading,
    listing and the validity of shards are ``ResultsFolder``'s, shared with ``analysis.load``."""

    @property
    def local(self) -> bool:
        return self.is_local

    def _ensure_dir(self, path: str) -> None:
        """Create a folder on local disks; object stores have none (and creating the marker
        objects would write above the prefix, which a prefix-scoped IAM policy refuses)."""
        if self.local:
            self.fs.create_dir(path, recursive=True)

    # -- manifest and spec ------------------------------------------------------------------------

    def read_manifest(self) -> dict | None:
        return self.manifest()

    def prepare(self, spec: SweepSpec, force: bool = False, source: str | None = None) -> dict:
        """Check that this folder may take ``spec``'s runs and (re)write sweep.yaml and the
        manifest. Refuses a folder written by a different spec for the same run_ids unless
        ``force``, which discards the folder's previous results first."""
        manifest = self.read_manifest()
        if manifest is not None and not force:
            problem = _incompatibility(manifest, spec)
            if problem:
                raise StoreError(
                    f"{self.uri}: {problem}; use another --out, or --force to discard the results "
                    "stored there")
        if manifest is not None and force:
            for kind in (RUNS_DIR, INSTANCES_DIR, QUARANTINE_DIR):
                if self.fs.get_file_info(self.path(kind)).type == pafs.FileType.Directory:
                    self.fs.delete_dir(self.path(kind))
            manifest = None
        self._ensure_dir(self.root)
        manifest = manifest or {"created": now(), "invocations": []}
        earlier = sorted(equivalent_spec_hashes(manifest, spec) - {spec.spec_hash})
        if earlier:  # this sweep, hashed by an earlier version: its shards stay recognised
            manifest["equivalent_spec_hashes"] = earlier
        manifest.update({
            "sweep": spec.name,
            "spec_hash": spec.spec_hash,
            "compat": compat_fingerprint(spec),
            "spec": spec.to_dict(),
            "wnsweep_version": __version__,
            "git_commit": git_commit(),
            "libraries": library_versions(),
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "source": source,  # the sweep file as run, to re-plan it for `wnsweep status`
        })
        self._write_bytes(self.path("sweep.yaml"), spec.text.encode())
        self.write_manifest(manifest)
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        self._write_bytes(self.path("manifest.json"),
                          (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

    # -- shards -----------------------------------------------------------------------------------

    def write_task(self, task_id: str, runs: pa.Table, instances: pa.Table) -> None:
        """Write a task's instances shard, then its runs shard, each atomically."""
        for kind, table in ((INSTANCES_DIR, instances), (RUNS_DIR, runs)):
            meta = {**table.schema.metadata, schema.META_VERSION: __version__.encode(),
                    schema.META_ROWS: str(table.num_rows).encode()}
            self._write_table(self.shard_path(kind, task_id), table.replace_schema_metadata(meta))

    def inventory(self) -> Inventory:
        """Every shard pair's verdict and the valid run_ids, from each shard's footer and key
        column only (``ResultsFolder.scan`` keeping no table; see pipeline/results/folder.py for what
        that does not see)."""
        return self.scan()

    def quarantine(self, statuses: list[ShardStatus]) -> None:
        """Move unusable shards to ``corrupt/`` so that they are out of the dataset but kept."""
        for status in statuses:
            for kind in (RUNS_DIR, INSTANCES_DIR):
                src = self.shard_path(kind, status.task_id)
                if self.fs.get_file_info(src).type != pafs.FileType.File:
                    continue
                dst = self.path(QUARANTINE_DIR, f"{kind}-part-{status.task_id}.parquet")
                self._ensure_dir(self.path(QUARANTINE_DIR))
                self.fs.move(src, dst)

    def clean_temporaries(self) -> int:
        """Remove hidden temporary files left by a killed writer; returns how many."""
        removed = 0
        for kind in (RUNS_DIR, INSTANCES_DIR, ""):
            selector = pafs.FileSelector(self.path(kind) if kind else self.root,
                                         allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    # -- helpers ----------------------------------------------------------------------------------

    def _write_table(self, path: str, table: pa.Table) -> None:
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        self._write_bytes(path, buffer.getvalue())

    def _write_bytes(self, path: str, data: bytes | pa.Buffer) -> None:
        """Write a whole file atomically (see the module docstring). Any failure (a full disk,
        no permission, an object store refusing the upload) removes the temporary file of the
        write, when there is one, and raises StoreWriteError naming this folder and the cause."""
        target = self._temporary(path) if self.local else path
        try:
            self._ensure_dir(posixpath.dirname(path))
            with self.fs.open_output_stream(target) as out:
                out.write(data)
            if target != path:
                self.fs.move(target, path)
            else:  # an object store: check that the object holds what was sent
                stored = self.fs.get_file_info(path).size
                if stored != len(data):
                    raise OSError(f"{path}: the object store holds {stored} bytes, {len(data)} "
                                  "were written")
        except (OSError, pa.ArrowException) as exc:
            if target != path:
                self._discard(target)
            raise StoreWriteError(self.uri, path, exc) from exc
        except BaseException:  # Ctrl-C mid-write: no temporary file left either
            if target != path:
                self._discard(target)
            raise

    def _discard(self, path: str) -> None:
        """Delete ``path`` if it exists (the temporary file of a failed write), quietly."""
        try:
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                self.fs.delete_file(path)
        except (OSError, pa.ArrowException):
            pass

    @staticmethod
    def _temporary(path: str) -> str:
        return posixpath.join(posixpath.dirname(path),
                              f".tmp-{uuid.uuid4().hex[:12]}-{posixpath.basename(path)}")


def equivalent_spec_hashes(manifest: dict | None, spec: SweepSpec) -> set[str]:
    """``spec``'s hash and the hashes by which earlier versions of wnsweep identified the same
    sweep in this folder (``SweepSpec.same_runs``): shards carrying any of them hold runs of
    ``spec``."""
    hashes = {spec.spec_hash}
    if manifest:
        hashes.update(manifest.get("equivalent_spec_hashes", ()))
        stored = manifest.get("spec_hash")
        if stored and stored != spec.spec_hash and spec.same_runs(manifest.get("spec") or {}):
            hashes.add(stored)
    return hashes


class StoreWriteError(StoreError):
    """A write into the results folder failed (disk full, permission denied, an object store
    refusing it). ``folder``, ``path``, ``cause`` (one line), ``errno`` (None for an object
    store); ``stored`` / ``planned`` runs are filled in by ``sweep.run_sweep`` when known.
    `wnsweep run` reports it as one line (``message``) and exits with status 3."""

    def __init__(self, folder: str, path: str, exc: BaseException):
        self.folder, self.path = folder, path
        self.errno = getattr(exc, "errno", None)
        if self.errno:
            self.cause = f"{os.strerror(self.errno)} (errno {self.errno})"
        else:
            text = " ".join(str(exc).split()) or type(exc).__name__
            self.cause = text if len(text) <= 300 else text[:297] + "..."
        self.stored: int | None = None
        self.planned: int | None = None
        super().__init__(f"cannot write to {folder}: {self.cause}")

    def message(self) -> str:
        """The one line `wnsweep run` prints: the folder, the cause, what is stored, what to do."""
        parts = [f"cannot write to {self.folder}: {self.cause}"]
        if self.stored is not None and self.planned is not None:
            parts.append(f"{self.stored} of {self.planned} runs are stored")
        if self.errno == errno.ENOSPC or self.errno == errno.EDQUOT:
            fix = "free space"
        elif self.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "fix the folder's permissions (or use another --out)"
        elif self.errno:
            fix = "fix the cause"
        else:
            fix = ("check that the bucket exists and that these credentials may write to the "
                   "prefix")
        parts.append(f"{fix}, then rerun the same command: it resumes")
        return "; ".join(parts)


def _incompatibility(manifest: dict, spec: SweepSpec) -> str:
    if manifest.get("sweep") not in (None, spec.name):
        return f"holds sweep {manifest.get('sweep')!r}, not {spec.name!r}"
    if manifest.get("compat") not in (None, compat_fingerprint(spec)):
        old = manifest.get("spec", {})
        return ("was written by a different spec for the same run_ids (reference solver or "
                f"output.save_solutions differ: stored {old.get('reference')}, "
                f"{old.get('output')})")
    return ""


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the wnsweep checkout, when there is one (with '+dirty' for local changes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def record_invocation(store: ResultsStore, manifest: dict, entry: dict) -> None:
    """Append one `wnsweep run` invocation (times, counts, executor) to the manifest."""
    manifest.setdefault("invocations", []).append(entry)
    store.write_manifest(manifest)

