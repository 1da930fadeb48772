"""One driver per results folder: ``<folder>/driver.lock``.

`wnsweep run` takes the lock after the sweep file is validated and before it writes or computes
anything (``sweep.run_sweep``), holds it through ``prepare``, the manifest writes and the whole
execution, and removes it on every way out (normal end, an exception, Ctrl-C). A second driver
that finds a live lock refuses (``LockHeld``, exit status 2) with one message naming the other
driver's host, pid and start time and the lock file. The lock is one small JSON file, written
through the folder's pyarrow filesystem, so it works on a local disk and on an object store:

    {"host", "pid", "process_start" (the pid's start time in clock ticks since boot, from
     /proc/<pid>/stat), "process_started" (the same as a UTC time), "wnsweep_version",
     "started", "heartbeat" (UTC, ISO 8601), "heartbeat_unix", "token" (random)}

Stale locks. A dead driver never blocks: a lock is *stale*, and is taken over, when

- it was written on this host and its pid is not alive, or is alive but started at another time
  (the pid was reused; compared through /proc, so only on Linux; elsewhere the heartbeat rule);
- it was written on another host and its heartbeat is older than ``STALE_SECONDS``. A driver
  refreshes its heartbeat every ``HEARTBEAT_SECONDS`` from a thread while it runs, so a live
  driver's heartbeat is never that old (this compares the clocks of two hosts: keep them in sync,
  as NTP does, within a fraction of ``STALE_SECONDS``);
- it is not readable JSON (no writer leaves that: local writes are renamed into place, object
  uploads are whole).

Taking the lock, and the race that remains. pyarrow offers no atomic create-if-absent on object
stores. So: read the lock; if there is none (or a stale one), write ours, wait ``SETTLE_SECONDS``
(``LOCAL_SETTLE_SECONDS`` on a local disk), read it back and keep it only if it still holds our
token. Of two drivers that write within the settle delay of each other, the last writer wins and
the other sees its token replaced and refuses. On a local disk a lock where none was is created
atomically (a hard link that fails if the name exists), so there the settle delay only applies to
taking over a stale lock. The window left: a driver that read "no live lock", then stalled for
longer than the settle delay (a suspended process, a very slow store) before writing, can
overwrite a lock that another driver has by then confirmed; both then run. Each run is still
stored once per shard name (a shard is named by its task and replaced whole), so the cost is
duplicated work, not damaged results. The heartbeat thread reads the lock before each refresh
and stops refreshing (and the driver does not delete the lock at the end) if the lock holds
another driver's token.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
import secrets
import socket
import sys
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline import __version__
from pipeline.results.folder import ResultsFolder, StoreError

LOCK_NAME = "driver.lock"
#: How often a running driver refreshes its lock's heartbeat.
HEARTBEAT_SECONDS = 20.0
#: A lock from another host whose heartbeat is older than this is stale.
STALE_SECONDS = 120.0
#: Wait between writing the lock and reading it back, on an object store and on a local disk.
SETTLE_SECONDS = 1.0
LOCAL_SETTLE_SECONDS = 0.2


class LockHeld(StoreError):
    """Another live driver holds the folder's lock."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (/proc/<pid>/stat, field 22),
    None when it cannot be read (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its ')'
    fields = text[text.rindex(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _start_time_text(ticks: int | None) -> str | None:
    """``process_start`` ticks as a UTC time (boot time from /proc/stat)."""
    if ticks is None:
        return None
    try:
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None
    return _dt.datetime.fromtimestamp(int(started), _dt.timezone.utc).isoformat()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def stale_reason(lock: dict | None, now: float | None = None) -> str:
    """Why ``lock`` (its parsed JSON, None when unreadable) is stale, "" when it is live."""
    if not isinstance(lock, dict):
        return "the lock file is not readable JSON"
    now = time.time() if now is None else now
    host, pid = lock.get("host"), lock.get("pid")
    if host == socket.gethostname() and isinstance(pid, int) and os.path.isdir("/proc"):
        if not pid_alive(pid):
            return f"pid {pid} is not running"
        recorded, current = lock.get("process_start"), process_start(pid)
        if recorded is not None and current is not None and recorded != current:
            return f"pid {pid} is now another process"
        return ""
    beat = lock.get("heartbeat_unix")
    if not isinstance(beat, (int, float)):
        return "the lock has no heartbeat"
    if now - beat > STALE_SECONDS:
        return f"its heartbeat is {now - beat:.0f} s old (more than {STALE_SECONDS:g} s)"
    return ""


class DriverLock:
    """The lock of one results folder, held by this process between ``acquire`` and
    ``release`` (also a context manager)."""

    def __init__(self, folder: ResultsFolder | str, verbose: bool = False):
        self.folder = folder if isinstance(folder, ResultsFolder) else ResultsFolder(folder)
        self.path = self.folder.path(LOCK_NAME)
        self.verbose = verbose
        self.token = secrets.token_hex(16)
        self.held = False
        self.lost = ""  # set when another driver's token replaced ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        start = process_start(os.getpid())
        self.record = {
            "host": socket.gethostname(), "pid": os.getpid(), "process_start": start,
            "process_started": _start_time_text(start), "wnsweep_version": __version__,
            "started": _now(), "token": self.token}

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> bool:
        self.release()
        return False

    # -- reading and writing ---------------------------------------------------------------------

    def read(self) -> tuple[bool, dict | None]:
        """(whether a lock file exists, its parsed JSON or None when unreadable)."""
        try:
            with self.folder.fs.open_input_stream(self.path) as f:
                data = f.read()
        except FileNotFoundError:
            return False, None
        except (OSError, pa.ArrowException):
            if self.folder.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
                return False, None
            raise
        try:
            return True, json.loads(data.decode())
        except ValueError:
            return True, None

    def _payload(self) -> bytes:
        record = {**self.record, "heartbeat": _now(), "heartbeat_unix": time.time()}
        return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()

    def _write(self, exclusive: bool = False) -> bool:
        """Write our lock (whole). ``exclusive`` on a local disk: only if no lock exists
        (returns False when one does). Raises StoreWriteError when the write fails."""
        from pipeline.results.store import ResultsStore  # the atomic writer (store imports folder)

        writer = ResultsStore(self.folder.uri)
        if not (exclusive and self.folder.is_local):
            writer._write_bytes(self.path, self._payload())
            return True
        temporary = posixpath.join(self.folder.root, f".tmp-{uuid.uuid4().hex[:12]}-{LOCK_NAME}")
        writer._write_bytes(temporary, self._payload())
        try:
            os.link(temporary, self.path)  # atomic: fails when the name exists
            return True
        except FileExistsError:
            return False
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass

    # -- taking, keeping and leaving ---------------------------------------------------------------

    def check(self) -> None:
        """Raise LockHeld when a live driver holds the lock (reads only; ``acquire`` decides)."""
        exists, lock = self.read()
        if exists and not stale_reason(lock):
            raise self._held(lock)

    def acquire(self) -> None:
        """Take the lock, or raise LockHeld naming the live driver that holds it."""
        for _ in range(3):  # a fresh local lock that vanished (released) between two looks
            exists, lock = self.read()
            if exists:
                reason = stale_reason(lock)
                if not reason:
                    raise self._held(lock)
                if self.verbose:
                    print(f"wnsweep: taking over {self.path} ({self._who(lock)}): {reason}",
                          file=sys.stderr)
                self._write()
            else:  # (the write creates the folder on a local disk)
                if not self._write(exclusive=True):
                    continue  # another driver created it just now: look at it
                if self.folder.is_local:
                    break  # created atomically: ours
            time.sleep(LOCAL_SETTLE_SECONDS if self.folder.is_local else SETTLE_SECONDS)
            exists, lock = self.read()
            if not (isinstance(lock, dict) and lock.get("token") == self.token):
                if exists and isinstance(lock, dict):
                    raise self._held(lock)
                continue
            break
        else:
            raise StoreError(f"{self.path}: could not take the driver lock (it kept changing); "
                             "is another wnsweep run starting on this folder?")
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="wnsweep-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                _, lock = self.read()
                if not (isinstance(lock, dict) and lock.get("token") == self.token):
                    self.lost = (f"the lock was replaced by {self._who(lock)}"
                                 if isinstance(lock, dict) else "the lock was removed")
                    return
                self._write()
            except Exception:  # noqa: BLE001  (a full disk, a network hiccup: try again later)
                continue

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours. Never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        self.held = False
        try:
            _, lock = self.read()
            if isinstance(lock, dict) and lock.get("token") == self.token:
                self.folder.fs.delete_file(self.path)
        except Exception:  # noqa: BLE001  (the next driver finds it stale)
            pass

    # -- messages ---------------------------------------------------------------------------------

    @staticmethod
    def _who(lock: dict | None) -> str:
        if not isinstance(lock, dict):
            return "an unreadable lock"
        started = lock.get("process_started") or lock.get("started") or "an unknown time"
        return f"host {lock.get('host')}, pid {lock.get('pid')}, started {started}"

    def _held(self, lock: dict | None) -> LockHeld:
        beat = lock.get("heartbeat_unix") if isinstance(lock, dict) else None
        age = f", heartbeat {max(time.time() - beat, 0):.0f} s ago" \
            if isinstance(beat, (int, float)) else ""
        return LockHeld(
            f"{self.folder.uri} is in use by another wnsweep run ({self._who(lock)}{age}; lock "
            f"file {self.path}); wait for it to finish, or, if you are sure it is dead, delete "
            "that file and rerun")
