"""Executors: run tasks serially in this process, or as Ray tasks on a local instance or a cluster.

Both call the same ``run_task`` on the same tasks and hand each result to ``on_result`` as soon as
it completes, so the two produce identical numbers. The Ray executor keeps a bounded number of
tasks in flight (``ray.wait``), lets Ray retry a task whose worker or node died, and ships a user
instance file's bytes once through the object store. This is the only module that imports Ray.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.plan import Task
from pipeline.spec import SpecError
from pipeline.task import TaskResult, run_task

#: Retries of a task whose worker process or node died (Ray's max_retries).
MAX_RETRIES = 4
#: Tasks kept in flight at least, so that an autoscaling cluster that starts with no worker sees
#: enough demand to add workers (the window is re-read as the cluster grows).
MIN_IN_FLIGHT = 16


@dataclass
class ExecutionReport:
    """What happened: tasks completed and tasks that failed with an exception (not retried)."""

    completed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (task_id, error)
    seconds: float = 0.0

    def fail(self, task: Task, exc: BaseException) -> None:
        self.failed.append((task.task_id, f"{type(exc).__name__}: {exc}"))


def _problem_bytes(tasks: Sequence[Task]) -> bytes | None:
    """The user instance file's bytes (a sweep has at most one), checked against the hash its
    run_ids were made with."""
    files = {(i.problem_file, i.file_sha256) for t in tasks for i in t.instances if i.problem_file}
    if not files:
        return None
    ((path, sha256),) = files
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SpecError(path, "problem.file", "the file changed after the sweep was validated; "
                        "run the command again")
    return data


def run_serial(tasks: Sequence[Task], on_result: Callable[[TaskResult], None]) -> ExecutionReport:
    """Run every task in this process, in order (debugging, profiling, no Ray)."""
    report, start = ExecutionReport(), time.perf_counter()
    data = _problem_bytes(tasks)
    node = f"serial@{socket.gethostname()}"
    for task in tasks:
        try:
            result = run_task(task, data, node=node)
        except Exception as exc:  # a bug or a bad instance: record it, go on with the others
            report.fail(task, exc)
            continue
        on_result(result)
        report.completed += 1
    report.seconds = time.perf_counter() - start
    return report


def _ray_task(task: Task, data: bytes | None) -> TaskResult:
    import ray

    node = ray.get_runtime_context().get_node_id()[:12]
    return run_task(task, data, node=f"{socket.gethostname()}:{node}")


def init_ray(address: str | None, num_cpus: int | None = None, verbose: bool = False) -> bool:
    """Connect to Ray: an existing cluster (``address`` or RAY_ADDRESS), else a new local
    instance. Returns True when this call started Ray (and so should shut it down). Raises
    ConnectionError when the cluster cannot be reached.

    Quiet unless ``verbose``: Ray's driver logging at error level and the workers' output left in
    their log files (``logging_level``, ``log_to_driver`` of ``ray.init``). A failing task still
    reaches the user: Ray raises its traceback in the driver as the task's error."""
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
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    return True


def cluster_cpus() -> int:
    """CPUs of the Ray cluster this process is connected to (at least 1)."""
    import ray

    return max(int(ray.cluster_resources().get("CPU", 1)), 1)


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


def run_ray(tasks: Sequence[Task], on_result: Callable[[TaskResult], None],
            max_in_flight: int | None = None) -> ExecutionReport:
    """Run the tasks as Ray tasks on the Ray instance this process is connected to."""
    import ray

    report, start = ExecutionReport(), time.perf_counter()
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(_ray_task)
    data = _problem_bytes(tasks)
    data_ref = ray.put(data) if data is not None else None
    queue = list(reversed(tasks))
    in_flight: dict[ray.ObjectRef, Task] = {}
    try:
        while queue or in_flight:
            # two per CPU keeps every CPU busy while results are consumed
            limit = max_in_flight or max(2 * cluster_cpus(), MIN_IN_FLIGHT)
            while queue and len(in_flight) < limit:
                task = queue.pop()
                in_flight[remote.remote(task, data_ref)] = task
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                task = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # an exception in the task, or retries
                    report.fail(task, exc)  # exhausted (worker, node or memory failures)
                    continue
                on_result(result)
                report.completed += 1
    finally:
        for ref in in_flight:  # Ctrl-C or an error in on_result: stop what is still running
            ray.cancel(ref, force=True)
    report.seconds = time.perf_counter() - start
    return report
