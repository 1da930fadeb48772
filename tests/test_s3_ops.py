"""The driver lock and write failures on a real S3-compatible server (moto, loopback): a stale
lock (a dead pid on this host, an old heartbeat from another host) is taken over, a fresh one
from another host refuses; a bucket that refuses the writes (it does not exist) is exit status 3
in one line."""

from __future__ import annotations

import json
import socket
import time

import pytest

from pipeline import cli
from pipeline.results import lock
from tests.test_lock import dead_pid
from tests import test_s3
from tests.test_s3 import BUCKET, _keys

s3_endpoint, s3 = test_s3.s3_endpoint, test_s3.s3  # the moto server and bucket fixtures

pytestmark = pytest.mark.slow  # an S3 server (moto)


def put_lock(client, prefix: str, **fields) -> None:
    record = {"host": socket.gethostname(), "pid": 1, "process_start": None,
              "process_started": "2026-01-02T03:04:05+00:00", "started": "x",
              "heartbeat_unix": time.time(), "token": "someone-else", **fields}
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/driver.lock", Body=json.dumps(record))


def run(path, out, capsys) -> tuple[int, str]:
    code = cli.main(["run", str(path), "--out", out, "--executor", "serial", "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dead-pid-here", "old-heartbeat-elsewhere"])
def test_s3_stale_lock_is_taken_over(kind, s3, make_sweep, capsys):
    client, uri = s3
    if kind == "dead-pid-here":
        put_lock(client, "stale", pid=dead_pid())
    else:
        put_lock(client, "stale", host="elsewhere",
                 heartbeat_unix=time.time() - 2 * lock.STALE_SECONDS)
    code, err = run(make_sweep(trials=1), uri("stale"), capsys)
    assert code == 0 and err == "", err
    keys = _keys(client, "stale")
    assert "driver.lock" not in keys and "manifest.json" in keys
    assert cli.main(["status", uri("stale")]) == 0


def test_s3_fresh_lock_from_another_host_refuses(s3, make_sweep, capsys):
    client, uri = s3
    put_lock(client, "busy", host="elsewhere", pid=4242)
    code, err = run(make_sweep(trials=1), uri("busy"), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "host elsewhere, pid 4242, started 2026-01-02T03:04:05+00:00" in err
    assert f"{BUCKET}/busy/driver.lock" in err
    assert _keys(client, "busy") == {"driver.lock"}  # nothing else written


def test_s3_lock_is_written_while_running(s3, make_sweep):
    client, uri = s3
    held = lock.DriverLock(uri("held"))
    held.acquire()
    body = json.loads(client.get_object(Bucket=BUCKET, Key="held/driver.lock")["Body"].read())
    assert body["token"] == held.token
    with pytest.raises(lock.LockHeld):
        lock.DriverLock(uri("held")).acquire()
    held.release()
    assert "driver.lock" not in _keys(client, "held")


def test_s3_refusing_writes_is_exit_3_in_one_line(s3, make_sweep, capsys):
    """A bucket that does not exist: the first write (the lock) is refused by the server."""
    _, uri = s3
    out = uri("x").replace(f"s3://{BUCKET}/", "s3://no-such-bucket-here/")
    code, err = run(make_sweep(trials=1), out, capsys)
    assert code == 3, err
    assert err.count("\n") == 1 and err.startswith(f"wnsweep: cannot write to {out}: "), err
    assert "0 of 80 runs are stored" in err
    assert "check that the bucket exists and that these credentials may write" in err
