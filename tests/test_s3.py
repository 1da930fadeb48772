"""`--out s3://...`: a sweep written to, resumed on, checked and read back from a real
S3-compatible server on the loopback interface (moto), through pyarrow's S3 filesystem."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from urllib.parse import urlencode

import pyarrow.fs as pafs
import pytest

import analysis
from analysis import ShardError
from pipeline import cli, sweep
from tests.test_scale import damage_a_curve_page

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

BUCKET = "wnsweep-results"

pytestmark = pytest.mark.slow  # an S3 server (moto)


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port chosen by the OS); yields 'HOST:PORT'."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """Fake credentials (never real ones, never the EC2 metadata service), a fresh bucket, and a
    function making an s3:// URI for a prefix in it."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.client("s3", endpoint_url=f"http://{s3_endpoint}", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)

    def uri(prefix: str, **extra: str) -> str:
        query = urlencode({"endpoint_override": s3_endpoint, "scheme": "http", **extra})
        return f"s3://{BUCKET}/{prefix}?{query}"

    yield client, uri
    keys = [o["Key"] for o in _objects(client, "")]
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={
            "Objects": [{"Key": k} for k in keys[start:start + 1000]]})
    client.delete_bucket(Bucket=BUCKET)


def _objects(client, prefix: str) -> list[dict]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += page.get("Contents", [])
    return out


def _keys(client, prefix: str) -> set[str]:
    """Object keys under ``prefix/``, relative to it, without directory markers ("runs/": empty
    objects that pyarrow's create_dir puts on S3)."""
    return {o["Key"][len(prefix) + 1:] for o in _objects(client, prefix + "/")
            if not o["Key"].endswith("/")}


def test_pyarrow_s3_uri_query_parameters(s3):
    """The URI options the docs rely on are accepted by the installed pyarrow; others are refused
    with a clear error rather than ignored."""
    client, uri = s3
    fs, path = pafs.FileSystem.from_uri(uri("probe", region="us-east-1"))
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{BUCKET}/probe"
    with fs.open_output_stream(f"{BUCKET}/probe/x.txt") as f:
        f.write(b"hello")
    assert client.get_object(Bucket=BUCKET, Key="probe/x.txt")["Body"].read() == b"hello"
    # allow_bucket_creation: create_dir on a missing bucket creates it
    fs, _ = pafs.FileSystem.from_uri(uri("p", allow_bucket_creation="true"))
    fs.create_dir("wnsweep-new-bucket")
    assert "wnsweep-new-bucket" in {b["Name"] for b in client.list_buckets()["Buckets"]}
    client.delete_bucket(Bucket="wnsweep-new-bucket")
    with pytest.raises(Exception, match="Unexpected query parameter"):
        pafs.FileSystem.from_uri(uri("p", not_an_option="1"))


def test_sweep_to_s3_resume_status_and_load(s3, make_sweep, capsys):
    client, uri = s3
    path = make_sweep(trials=1)
    out = uri("sweeps/tiny")

    first = sweep.run_sweep(str(path), out=out, executor="serial", progress=False,
                            task_seconds=0.01)  # one task per instance
    assert first.planned == first.computed == 80 and first.tasks > 1 and not first.failed

    keys = _keys(client, "sweeps/tiny")
    runs = {k for k in keys if k.startswith("runs/")}
    instances = {k for k in keys if k.startswith("instances/")}
    assert {"manifest.json", "sweep.yaml"} <= keys
    assert len(runs) == first.tasks and all(
        k.startswith("runs/part-") and k.endswith(".parquet") for k in runs)
    assert {k.replace("runs/", "instances/", 1) for k in runs} == instances
    # nothing but the layout: no temporary names, no stray keys, nothing quarantined
    assert keys == runs | instances | {"manifest.json", "sweep.yaml"}, keys
    assert not any(".tmp-" in k for k in keys)
    assert client.get_object(Bucket=BUCKET, Key="sweeps/tiny/sweep.yaml")["Body"].read() \
        == path.read_bytes()
    manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key="sweeps/tiny/manifest.json")["Body"].read())
    assert manifest["sweep"] == "tiny" and manifest["invocations"][-1]["computed"] == 80

    df = analysis.load(out)
    assert len(df) == 80 and df.run_id.is_unique and df.l1_norm_bp.notna().all()
    assert set(df.attrs["spec_hashes"]) == {manifest["spec_hash"]}

    capsys.readouterr()
    assert cli.main(["status", out]) == 0
    assert "done 80 / 80 runs, missing 0, corrupt shards 0" in capsys.readouterr().out

    again = sweep.run_sweep(str(path), out=out, executor="serial", progress=False)
    assert again.computed == 0 and again.already == 80 and again.tasks == 0
    capsys.readouterr()
    assert cli.main(["run", str(path), "--out", out, "--executor", "serial",
                     "--no-progress"]) == 0
    assert "0 runs computed" in capsys.readouterr().out
    assert _keys(client, "sweeps/tiny") == keys
    assert len(analysis.load(out)) == 80


def test_s3_resume_recomputes_lost_and_damaged_shards(s3, make_sweep, capsys):
    """What a lost node or a killed driver leaves on S3 is repaired by re-running."""
    client, uri = s3
    path = make_sweep(trials=2)  # 4 instances: 4 tasks of 40 runs with task_seconds=0.01
    out = uri("damaged")
    first = sweep.run_sweep(str(path), out=out, executor="serial", progress=False,
                            task_seconds=0.01)
    assert first.computed == 160 and first.tasks == 4
    runs = sorted(k for k in _keys(client, "damaged") if k.startswith("runs/"))
    lost, damaged = runs[0], runs[1]
    client.delete_object(Bucket=BUCKET, Key=f"damaged/{lost}")
    client.put_object(Bucket=BUCKET, Key=f"damaged/{damaged}", Body=b"PAR1 not parquet")

    capsys.readouterr()
    assert cli.main(["status", out]) == 1
    text = capsys.readouterr().out
    assert "done 80 / 160 runs, missing 80, corrupt shards 1" in text, text

    again = sweep.run_sweep(str(path), out=out, executor="serial", progress=False,
                            task_seconds=0.01)
    assert again.already == 80 and again.computed == 80
    keys = _keys(client, "damaged")
    assert f"corrupt/runs-{damaged[len('runs/'):]}" in keys  # set aside, not deleted
    assert cli.main(["status", out]) == 0
    df = analysis.load(out)
    assert len(df) == 160 and df.run_id.is_unique


def test_writes_nothing_outside_its_prefix(s3, make_sweep):
    client, uri = s3
    sweep.run_sweep(str(make_sweep(trials=1)), out=uri("team/tiny"), executor="serial",
                    progress=False)
    outside = {o["Key"] for o in _objects(client, "") if not o["Key"].startswith("team/tiny/")}
    assert not outside, sorted(outside)


def test_ray_executor_writes_to_s3(ray_local, s3, make_sweep):
    """The cluster path: Ray tasks compute and upload their shards, or (when this session's Ray
    workers started without the test's credentials) hand them to the driver, which uploads
    them: the folder is the same either way."""
    client, uri = s3
    path = make_sweep(trials=1)
    out = uri("ray")
    outcome = sweep.run_sweep(str(path), out=out, executor="ray", progress=False,
                              task_seconds=0.2)
    assert outcome.computed == 80 and not outcome.failed
    df = analysis.load(out)
    assert len(df) == 80 and not df.node.str.startswith("serial@").any()
    assert not any(".tmp-" in k for k in _keys(client, "ray"))


def test_workers_write_to_s3_and_status_reads_only_metadata(s3, make_sweep, capsys):
    """The driver runs as `wnsweep run` in its own process (its local Ray workers inherit its
    credentials, as cluster workers get theirs from an instance profile)."""
    client, uri = s3
    path = make_sweep(trials=1)
    out = uri("workers")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(path), "--out", out, "--num-cpus", "2",
         "--task-seconds", "0.01", "--no-progress"],
        capture_output=True, text=True, timeout=600, env={**os.environ}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "could not write" not in proc.stderr
    manifest = json.loads(client.get_object(
        Bucket=BUCKET, Key="workers/manifest.json")["Body"].read())
    (entry,) = manifest["invocations"]
    assert entry["computed"] == 80 and entry["tasks"] == 2 and entry["written_by_driver"] == 0
    keys = _keys(client, "workers")
    runs = sorted(k for k in keys if k.startswith("runs/part-"))
    assert len(runs) == 2 and not any(".tmp-" in k for k in keys)

    victim = runs[0]
    body = client.get_object(Bucket=BUCKET, Key=f"workers/{victim}")["Body"].read()
    client.put_object(Bucket=BUCKET, Key=f"workers/{victim}", Body=damage_a_curve_page(body))
    capsys.readouterr()
    assert cli.main(["status", out]) == 0  # footers and run_ids only: the damage is not read
    assert "done 80 / 80 runs, missing 0, corrupt shards 0" in capsys.readouterr().out
    with pytest.raises(ShardError) as raised:
        analysis.load(out)
    assert raised.value.path == f"{BUCKET}/workers/{victim}"
    assert "corrupt: damaged data" in raised.value.reason
