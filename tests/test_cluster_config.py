"""cluster.yaml is a valid Ray cluster-launcher config for this project, and docs/CLUSTER.md
matches it. Nothing here starts Ray or talks to AWS."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

CLUSTER = REPO / "cluster.yaml"
DOC = REPO / "docs" / "CLUSTER.md"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray  # importing the package does not start Ray

    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"{path}: the installed ray ships no cluster-config schema"
    return json.loads(path.read_text())


def test_validates_against_the_installed_ray_schema(config, ray_schema):
    jsonschema.validate(config, ray_schema)


def test_ray_accepts_it_as_ray_up_would(config):
    """Ray's own defaults-merge and checks (what `ray up` runs before touching AWS)."""
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    was_initialized = ray.is_initialized()  # another test may have started the session's Ray
    validate_config(prepare_config(json.loads(json.dumps(config))))
    assert ray.is_initialized() == was_initialized  # checking a config starts nothing


def test_identity_provider_and_auth(config):
    assert config["cluster_name"] == "wnsweep"
    assert config["provider"]["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", config["provider"]["region"])
    assert isinstance(config["provider"]["cache_stopped_nodes"], bool)
    assert config["auth"]["ssh_user"] == "ubuntu"
    assert config["idle_timeout_minutes"] > 0


def test_node_types_are_consistent(config):
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types
    workers = {name: t for name, t in types.items() if name != head}
    assert workers, "no worker node type"
    assert types[head]["resources"].get("CPU") == 0, "sweep tasks must run on the workers"
    for name, node in types.items():
        assert node["node_config"].get("InstanceType"), name
        for key, value in node["resources"].items():
            assert isinstance(value, int) and value >= 0, (name, key)
        if name == head:
            continue
        lo, hi = node.get("min_workers", 0), node.get("max_workers", config["max_workers"])
        assert 0 <= lo <= hi, name
        assert hi <= config["max_workers"], name
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= config["max_workers"]
    assert any(t.get("resources", {}).get("CPU", 1) > 0 for t in workers.values())


def test_iam_instance_profile_is_documented_not_set(config):
    """The placeholder ARN stays commented: a live placeholder would break `ray up`."""
    text = CLUSTER.read_text()
    assert re.search(r"^\s*#\s*IamInstanceProfile:\s*$", text, re.M)
    assert re.search(r"^\s*#\s*Arn: arn:aws:iam::\d+:instance-profile/", text, re.M)
    for node in config["available_node_types"].values():
        assert "IamInstanceProfile" not in node["node_config"]


def _install_targets(commands: list[str]) -> list[str]:
    """The arguments of every `pip install` in a list of shell commands."""
    targets = []
    for command in commands:
        for part in re.split(r"&&|;|\|\|", command):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                targets += [w for w in words[words.index("install") + 1:]
                            if not w.startswith("-") or w == "-e"]
    return targets


def test_setup_commands_install_this_checkout(config):
    mounts = config["file_mounts"]
    remote = next(r for r, local in mounts.items() if local in (".", "./"))
    targets = _install_targets(config["setup_commands"])
    assert "-e" in targets and targets[targets.index("-e") + 1].rstrip("/") == remote.rstrip("/")
    # the project installed there is this one (its name, and its entry point for `ray job submit`)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^name = "wnsweep"$', pyproject, re.M)
    assert 'wnsweep = "pipeline.cli:main"' in pyproject
    # the autoscaler on the head needs boto3
    assert any(t.startswith("boto3") for t in _install_targets(config["head_setup_commands"]))


def test_file_mounts_refer_to_this_repo(config):
    for remote, local in config["file_mounts"].items():
        # `ray up` resolves local paths against its working directory: the repo top
        assert (REPO / local).resolve().exists(), local
        assert (REPO / local).resolve() == REPO or REPO in (REPO / local).resolve().parents
        assert remote.startswith("~/") or remote.startswith("/"), remote
    for name in config.get("rsync_filter", []):
        assert (REPO / name).is_file(), name
    # the synced checkout leaves out the local virtualenv and results
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".venv/" in ignored and "/results/" in ignored


def test_docker_image_matches_the_installed_ray(config):
    import ray

    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), (
        f"{image}: the cluster's Ray must be the version installed here ({ray.__version__}) "
        "and its Python must satisfy requires-python >= 3.11")


def test_docs_match_the_config_and_the_repo(config):
    text = DOC.read_text()
    for command in ("ray up cluster.yaml", "ray down cluster.yaml", "ray attach cluster.yaml",
                    "ray dashboard cluster.yaml", "ray job submit --address http://127.0.0.1:8265",
                    "--working-dir .", "--address auto", "wnsweep status s3://",
                    "wnsweep report s3://", 'analysis.load("s3://'):
        assert command in text, command
    # every repo path the docs and the config comments mention exists
    mentioned = set(re.findall(r"(?<![\w/.~-])((?:sweeps|docs|tests|pipeline|analysis)/[\w./-]+"
                               r"\.(?:yaml|md|py))", text + CLUSTER.read_text()))
    mentioned |= set(re.findall(r"\b(cluster\.yaml|pyproject\.toml|README\.md)\b", text))
    assert "sweeps/quickstart.yaml" in mentioned or any(m.startswith("sweeps/") for m in mentioned)
    for rel in sorted(mentioned):
        assert (REPO / rel).exists(), f"docs/CLUSTER.md or cluster.yaml mention missing {rel}"
    # the docs' sweep files are real, valid sweeps
    from pipeline.spec import load_spec

    for rel in sorted(m for m in mentioned if m.startswith("sweeps/")):
        load_spec(str(REPO / rel))
