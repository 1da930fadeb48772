"""`wnsweep run --address HOST:PORT` with nothing listening there: one line on stderr naming the
address and what to check, exit status 2, nothing written; Ray's own client warnings only with
`--verbose`. Only loopback addresses: 127.0.0.2 (Ray rewrites 127.0.0.1 and localhost to this
machine's own network address, 127.0.0.2 it dials as given)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # real subprocesses importing Ray


def free_loopback_address() -> str:
    """A port on 127.0.0.2 that nothing listens on (bound, then released, without listen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return f"127.0.0.2:{s.getsockname()[1]}"


def run_against(address: str, out, *extra: str, env_extra: dict | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(REPO / "sweeps" / "quickstart.yaml"),
         "--out", str(out), "--address", address, "--no-progress", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_unreachable_address_is_one_line_and_exit_2(tmp_path):
    address = free_loopback_address()
    proc = run_against(address, tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"wnsweep: error: cannot reach the Ray cluster at {address} "
                           "(--address): connection refused"), line
    assert "RAY_ADDRESS" in line and "cluster is up" in line and "port" in line
    assert not (tmp_path / "out").exists()


def test_unreachable_address_verbose_shows_rays_messages(tmp_path):
    address = free_loopback_address()
    # Ray's GCS client waits 30 s for the cluster id by default; 5 s keeps this test short
    proc = run_against(address, tmp_path / "out", "--verbose",
                       env_extra={"RAY_py_gcs_connect_timeout_s": "5"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) > 1, proc.stderr
    assert any("Failed to connect to GCS" in line or "Connecting to existing Ray cluster" in line
               for line in lines[:-1]), proc.stderr
    assert lines[-1].startswith(f"wnsweep: error: cannot reach the Ray cluster at {address}")
    assert not (tmp_path / "out").exists()
