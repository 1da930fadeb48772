"""Multi-node behaviour on this machine with ray.cluster_utils.Cluster: a worker node dies while
tasks run, and the sweep still completes with every run exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import analysis
from pipeline import plan, spec
from tests.conftest import REPO, SLOW_SWEEP

pytestmark = pytest.mark.slow  # a multi-node Ray cluster

# Runs in its own process: a Cluster needs its own ray.init, and the test session already has one.
DRIVER = r"""
import json, pathlib, sys, threading, time
import ray
from ray.cluster_utils import Cluster
from pipeline import sweep

path, out = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # work goes to workers
keep = cluster.add_node(num_cpus=1)
doomed = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
event = {}

def remove_when_first_shard_lands():
    runs = pathlib.Path(out) / "runs"
    while not list(runs.glob("part-*.parquet")):
        time.sleep(0.05)
    event["shards_before"] = len(list(runs.glob("part-*.parquet")))
    event["alive_before"] = sum(n["Alive"] for n in ray.nodes())
    cluster.remove_node(doomed, allow_graceful=False)
    event["removed"] = doomed.node_id

threading.Thread(target=remove_when_first_shard_lands, daemon=True).start()
outcome = sweep.run_sweep(path, out=out, executor="ray", progress=False, task_seconds=0.01)
deadline = time.monotonic() + 60  # the GCS marks a killed node dead after its health checks
while sum(n["Alive"] for n in ray.nodes()) > 2 and time.monotonic() < deadline:
    time.sleep(0.5)
event.update(computed=outcome.computed, tasks=outcome.tasks, failed=outcome.failed,
             alive_after=sum(n["Alive"] for n in ray.nodes()), survivor=keep.node_id)
print("RESULT " + json.dumps(event))
ray.shutdown()
cluster.shutdown()
"""


def test_sweep_survives_a_worker_node_removed_mid_sweep(tmp_path):
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_SWEEP.replace("trials: 6", "trials: 4"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(path), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    event = json.loads(line.removeprefix("RESULT "))
    planned = plan.make_plan(spec.load_spec(path))
    assert event["removed"] and event["alive_before"] == 3 and event["alive_after"] == 2
    assert event["shards_before"] < event["tasks"]  # the node died with work still to do
    assert event["failed"] == [] and event["computed"] == len(planned.runs)
    runs = analysis.load(str(out))
    assert len(runs) == len(planned.runs) and runs.run_id.is_unique
    assert set(runs.run_id) == set(planned.run_ids)
    assert runs.node.str.contains(event["survivor"][:12]).any()
