"""Executors: run tasks serially in this process, or as Ray tasks on a local instance or a cluster.

Both call the same ``run_task`` on the same tasks and hand each completion to ``on_result`` as
soon as it happens, so the two produce identical numbers. The Ray executor keeps a bounded number
of tasks in flight (``ray.wait``), lets Ray retry a task whose worker or node died, and ships a
user instance file's bytes once through the object store. This is the only module that imports
Ray.

Tasks come as an iterable (consumed as they are submitted): ``plan.Task`` with its runs, or
``plan.LazyTask``, a few integers describing its instances, expanded into its runs where it runs.

Who writes the shards. Given the output (``out``), a task writes its own two shards through
``store.ResultsStore`` where it ran, and the driver receives only ``Completed(task_id, runs)``:
the driver tracks completion and nothing else, so it does not limit how many workers a sweep can
use. A task writes when its node sees the output: always for an object store (``s3://...``);
for a local path, when that node sees the very ``manifest.json`` the driver wrote (same inode,
time and size: the driver's machine, or a shared file system). Otherwise, or when its write
fails (a worker without S3 credentials), it hands its tables back in ``Completed.result`` and
the driver writes them. Exactly once: a task's shards are named by its id, each written whole
(``pipeline.results.store``), so a retried task, or one repeated after a killed driver, replaces the same
two files; a run is stored when a valid runs shard holds it, whoever wrote it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.plan import LazyTask, Task
from pipeline.results import store
from pipeline.spec import SpecError
from pipeline.task import TaskResult, run_task

#: Retries of a task whose worker process or node died (Ray's max_retries).
MAX_RETRIES = 4
#: Tasks kept in flight at least, so that an autoscaling cluster that starts with no worker sees
#: enough demand to add workers (the window is re-read as the cluster grows).
MIN_IN_FLIGHT = 16
#: How often the cluster's CPU count (and so the window of tasks in flight) is re-read.
CPUS_EVERY_SECONDS = 2.0


@dataclass(frozen=True)
class Completed:
    """A task done: its id and run count, and its tables when the driver is to write them
    (``result`` is None when the task wrote its shards itself)."""

    task_id: str
    runs: int
    result: TaskResult | None = None
    problem: str = ""  # why the task could not write its shards, when it tried and failed
    seconds: float = 0.0  # wall time of the task where it ran (computing and writing)


@dataclass
class ExecutionReport:
    """What happened: tasks completed and tasks that failed with an exception (not retried)."""

    completed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (task_id, error)
    seconds: float = 0.0
    written_by_driver: int = 0  # completions handed back with their tables
    write_problem: str = ""  # the first reason a task could not write its own shards
    busy_seconds: float = 0.0  # the tasks' own wall times, summed (CPU-seconds at one per task)

    def utilization(self, cpus: int) -> float:
        """The share of ``cpus`` x the run's wall time that tasks kept busy (1.0: no CPU idle)."""
        return self.busy_seconds / (self.seconds * cpus) if self.seconds > 0 else float("nan")

    def fail(self, task: Task | LazyTask, exc: BaseException) -> None:
        self.failed.append((_task_id(task), f"{type(exc).__name__}: {exc}"))

    def absorb(self, other: ExecutionReport) -> None:
        """Add ``other``'s counts to these (a sweep run as several executions: adaptive rounds);
        ``seconds`` is the caller's, the elapsed time of the whole."""
        self.completed += other.completed
        self.failed += other.failed
        self.written_by_driver += other.written_by_driver
        self.write_problem = self.write_problem or other.write_problem
        self.busy_seconds += other.busy_seconds

    def count(self, done: Completed) -> None:
        self.completed += 1
        self.busy_seconds += done.seconds
        if done.result is not None:
            self.written_by_driver += 1
        if done.problem and not self.write_problem:
            self.write_problem = done.problem


@dataclass(frozen=True)
class Output:
    """Where tasks write their shards (module docstring): ``uri``, and for a local path the
    identity (inode, mtime in ns, size) of its ``manifest.json`` as the driver sees it."""

    uri: str
    local: bool = False
    witness: tuple[int, int, int] | None = None

    @classmethod
    def of(cls, uri: str) -> Output:
        folder = store.ResultsFolder(uri)
        if not folder.is_local:
            return cls(folder.uri)
        return cls(folder.uri, True, _identity(folder.path("manifest.json")))

    def visible(self) -> bool:
        """Whether this process sees the output (an object store: always)."""
        if not self.local:
            return True
        here = _identity(store.ResultsFolder(self.uri).path("manifest.json"))
        return here is not None and here == self.witness


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _store(uri: str) -> store.ResultsStore:
    """One store per output and process (an S3 filesystem is set up once per worker)."""
    return store.ResultsStore(uri)


def _finish(result: TaskResult, out: Output | None) -> Completed:
    """Write the task's shards here when ``out`` is visible, else hand the tables back."""
    rows = result.runs.num_rows
    if out is None or not out.visible():
        return Completed(result.task_id, rows, result)
    try:
        _store(out.uri).write_task(result.task_id, result.runs, result.instances)
    except store.StoreWriteError as exc:  # e.g. no credentials for the bucket here (the
        return Completed(result.task_id, rows, result,  # failed write left no temporary file)
                         problem=f"{socket.gethostname()}: {exc.cause}")
    except (OSError, pa.ArrowException) as exc:  # encoding the shard, or reaching the store
        return Completed(result.task_id, rows, result,
                         problem=f"{socket.gethostname()}: {type(exc).__name__}: {exc}")
    return Completed(result.task_id, rows)


def _task_id(task: Task | LazyTask) -> str:
    """A task's id (a lazily described task is expanded for it: only on failure)."""
    if isinstance(task, LazyTask):
        expanded = task.expand()
        return expanded.task_id if expanded is not None else "(empty)"
    return task.task_id


def _expanded(task: Task | LazyTask) -> Task:
    """The task with its runs (a LazyTask is expanded where it runs)."""
    if isinstance(task, LazyTask):
        expanded = task.expand()
        if expanded is None:
            raise ValueError("a lazily planned task without runs")
        return expanded
    return task


def _problem_file(task: Task | LazyTask) -> tuple[str, str] | None:
    if isinstance(task, LazyTask):
        problem = task.spec.problem
        return (problem.file, problem.file_sha256) if problem.file else None
    files = {(i.problem_file, i.file_sha256) for i in task.instances if i.problem_file}
    return next(iter(files)) if files else None


def _problem_bytes(tasks: Iterable[Task | LazyTask]) -> tuple[bytes | None, Iterator]:
    """The user instance file's bytes (a sweep has at most one, so the first task tells),
    checked against the hash its run_ids were made with; and the tasks, as an iterator."""
    tasks = iter(tasks)
    first = next(tasks, None)
    if first is None:
        return None, iter(())
    tasks = itertools.chain([first], tasks)
    file = _problem_file(first)
    if file is None:
        return None, tasks
    path, sha256 = file
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SpecError(path, "problem.file", "the file changed after the sweep was validated; "
                        "run the command again")
    return data, tasks


def run_serial(tasks: Iterable[Task | LazyTask], on_result: Callable[[Completed], None],
               out: str | None = None) -> ExecutionReport:
    """Run every task in this process, in order (debugging, profiling, no Ray); with ``out``,
    each task's shards are written as it completes (else ``on_result`` gets the tables)."""
    report, start = ExecutionReport(), time.perf_counter()
    data, tasks = _problem_bytes(tasks)
    node = f"serial@{socket.gethostname()}"
    output = Output.of(out) if out is not None else None
    for task in tasks:
        try:
            begun = time.perf_counter()
            done = _finish(run_task(_expanded(task), data, node=node), output)
            done = dataclasses.replace(done, seconds=time.perf_counter() - begun)
        except Exception as exc:  # a bug or a bad instance: record it, go on with the others
            report.fail(task, exc)
            continue
        on_result(done)
        report.count(done)
    report.seconds = time.perf_counter() - start
    return report


def _ray_task(task: Task | LazyTask, data: bytes | None, out: Output | None) -> Completed:
    import ray

    begun = time.perf_counter()
    node = ray.get_runtime_context().get_node_id()[:12]
    done = _finish(run_task(_expanded(task), data, node=f"{socket.gethostname()}:{node}"), out)
    return dataclasses.replace(done, seconds=time.perf_counter() - begun)


def init_ray(address: str | None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Connect to Ray: an existing cluster (``address`` or RAY_ADDRESS), else a new local
    instance. Returns True when this call started Ray (and so should shut it down). Raises
    ConnectionError, one line naming the address and what to check, when the cluster cannot be
    reached.

    Quiet unless ``verbose``: Ray's driver logging at error level and the workers' output left in
    their log files (``logging_level``, ``log_to_driver`` of ``ray.init``). A failing task still
    reaches the user: Ray raises its traceback in the driver as the task's error.

    Joining a cluster (``_connect``): a cluster address is first probed with one TCP connection
    (``GCS_PROBE_SECONDS``), so that a head that is down or a wrong port fails at once, without
    Ray's GCS client retrying for minutes; then Ray connects with one attempt (its own retries cut
    to one via RAY_gcs_server_port_wait_time_s, unless set), with the C++ client's warnings
    (written to stderr by the core worker, not through Python's logging) kept out of the
    terminal unless ``verbose``."""
    origin = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local" and not verbose and "ray" not in sys.modules:
        # Ray (2.59+) turns token authentication on for a new local instance and warns that it
        # did unless RAY_AUTH_MODE is set. Setting it, as Ray's token-authentication guide says,
        # keeps that default without the warning. Ray reads it when imported: once Ray is
        # imported it is left to Ray (whose warning is then below the error level anyway).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = {"include_dashboard": False, "log_to_driver": verbose,
              "logging_level": logging.INFO if verbose else logging.ERROR}
    if address == "local":
        kwargs["num_cpus"] = num_cpus
        # the workers import this package from the installed distribution; on a cluster set
        # up by cluster.yaml it is installed on every node
        ray.init(address=address, **kwargs)
        return True
    _connect(address, origin, kwargs, verbose)
    return True


#: How long the TCP probe of a cluster's address waits for the connection (a live head answers
#: in milliseconds, a refused port at once).
GCS_PROBE_SECONDS = 5.0


def _unreachable(address: str, origin: str, cause: str, verbose: bool = False
                 ) -> ConnectionError:
    return ConnectionError(
        f"cannot reach the Ray cluster at {address} ({origin}): {cause}; check that the cluster "
        "is up (`ray status` on its head node), that the address and the GCS port (6379 by "
        "default) are right, and that RAY_ADDRESS does not name another cluster"
        + ("" if verbose else " (--verbose shows Ray's own messages)"))


def _gcs_address(address: str) -> tuple[str, int] | None:
    """The (host, port) Ray would dial for ``address`` (``auto``: the one it would find), None
    when Ray is to find or refuse it by itself."""
    from ray._private import services  # the resolution ray.init applies (localhost -> node IP)

    try:
        canonical = services.canonicalize_bootstrap_address(address)
    except Exception:  # noqa: BLE001  (auto without a cluster, a malformed address: Ray says)
        return None
    if not canonical:
        return None
    host, _, port = canonical.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def _probe(address: str, origin: str) -> None:
    """One TCP connection to the GCS port; ConnectionError naming the address when it fails."""
    target = _gcs_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=GCS_PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError) or reason == "timed out":
            reason = f"no answer within {GCS_PROBE_SECONDS:g} s"
        raise _unreachable(address, origin, reason.lower()) from None


def _connect(address: str, origin: str, kwargs: dict, verbose: bool) -> None:
    import ray

    if not verbose:
        _probe(address, origin)
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "1")  # one attempt, not 20
    try:
        with _stderr_to_file(enabled=not verbose):
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unreachable(address, origin, first, verbose) from None


class _stderr_to_file:
    """Send file descriptor 2 to a temporary file (discarded) while the block runs, when
    ``enabled``: Ray's C++ GCS client writes its warnings there, below Python's logging."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.saved: int | None = None

    def __enter__(self):
        if self.enabled:
            import tempfile

            sys.stderr.flush()
            self.sink = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.sink.fileno(), 2)
        return self

    def __exit__(self, *exc_info):
        if self.saved is not None:
            sys.stderr.flush()
            os.dup2(self.saved, 2)
            os.close(self.saved)
            self.sink.close()
            self.saved = None
        return False


def cluster_cpus() -> int:
    """CPUs of the Ray cluster this process is connected to (at least 1)."""
    import ray

    return max(int(ray.cluster_resources().get("CPU", 1)), 1)


def local_cpus(num_cpus: int | None = None) -> int:
    """The CPUs a new local Ray instance started by ``init_ray(None, num_cpus)`` gets, without
    starting it: ``num_cpus``, else what Ray detects on this machine, by the function Ray's
    resource spec calls for ``ray.init(num_cpus=None)`` (cgroup quotas included)."""
    if num_cpus is not None:
        return max(int(num_cpus), 1)
    from ray._private import utils

    return max(int(utils.get_num_cpus()), 1)


def planned_cpus(address: str | None, num_cpus: int | None = None, verbose: bool = False
                 ) -> int:
    """The CPUs ``wnsweep run`` with these options will count its tasks for: a cluster's
    (``address`` or RAY_ADDRESS: connected to and read, then disconnected), else a new local
    instance's (``local_cpus``, nothing started). ConnectionError as ``init_ray``."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        import ray

        return cluster_cpus() if ray.is_initialized() else local_cpus(num_cpus)
    started = init_ray(address, verbose=verbose)
    try:
        return cluster_cpus()
    finally:
        if started:
            shutdown_ray()


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


def run_ray(tasks: Iterable[Task | LazyTask], on_result: Callable[[Completed], None],
            max_in_flight: int | None = None, out: str | None = None) -> ExecutionReport:
    """Run the tasks as Ray tasks on the Ray instance this process is connected to; with
    ``out``, each task writes its shards where it ran when it can (module docstring)."""
    import ray

    report, start = ExecutionReport(), time.perf_counter()
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(_ray_task)
    data, queue = _problem_bytes(tasks)  # tasks are taken from it as they are submitted
    data_ref = ray.put(data) if data is not None else None
    output = Output.of(out) if out is not None else None
    in_flight: dict[ray.ObjectRef, Task | LazyTask] = {}
    task = next(queue, None)
    limit, checked = 0, -CPUS_EVERY_SECONDS
    try:
        while task is not None or in_flight:
            if time.monotonic() - checked >= CPUS_EVERY_SECONDS:  # the cluster may have grown
                # two per CPU keeps every CPU busy while results are consumed
                limit = max_in_flight or max(2 * cluster_cpus(), MIN_IN_FLIGHT)
                checked = time.monotonic()
            while task is not None and len(in_flight) < limit:
                in_flight[remote.remote(task, data_ref, output)] = task
                task = next(queue, None)
            refs = list(in_flight)
            ready, rest = ray.wait(refs, num_returns=1)
            if rest:  # and every other result already there: one pass over the window for all
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                submitted = in_flight.pop(ref)
                try:
                    done = ray.get(ref)
                except ray.exceptions.RayError as exc:  # an exception in the task, or retries
                    report.fail(submitted, exc)  # exhausted (worker, node or memory failures)
                    continue
                on_result(done)
                report.count(done)
    finally:
        for ref in in_flight:  # Ctrl-C or an error in on_result: stop what is still running
            ray.cancel(ref, force=True)
    report.seconds = time.perf_counter() - start
    return report
