"""docs/SWEEP_FILES.md stays true to the parser: its sweeps parse, its keys exist, its paths exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import spec as spec_mod
from pipeline.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "SWEEP_FILES.md"
TEXT = DOC.read_text(encoding="utf-8")

MINIMAL = """\
name: docs-check
problem: {M: 4, N: 8, sparsity: 2}
model: {depth: 2}
init: {alpha: 0.1}
methods:
  gd: {eta: 0.05}
  wn: {eta: 0.05}
train: {max_iters: 10}
"""


def yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml[ \t]*\n(.*?)^```", TEXT, flags=re.S | re.M)


def sweep_blocks() -> list[str]:
    """The yaml blocks that are complete sweeps (a top-level ``name:`` key)."""
    return [b for b in yaml_blocks() if re.search(r"^name:", b, flags=re.M)]


def table_keys() -> list[str]:
    """Keys named in the first cell of the doc's key tables (| Key | Required | ...)."""
    keys: list[str] = []
    for table in re.findall(r"^\| Key \|.*?\n((?:\|.*\n?)+)", TEXT, flags=re.M):
        for row in table.splitlines():
            m = re.match(r"\|\s*`([A-Za-z_][\w.]*)`\s*\|", row)
            if m:
                keys.append(m.group(1))
    return keys


def _with_key(path: str, value: object) -> str:
    """MINIMAL with the mapping entry at dotted ``path`` set to ``value`` (as YAML flow)."""
    import yaml

    doc = yaml.safe_load(MINIMAL)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value
    return yaml.safe_dump(doc, sort_keys=False)


def _rejected_as_unknown(path: str) -> bool:
    """Whether the parser refuses ``path`` as an unknown key or method (any value)."""
    try:
        parse_spec(_with_key(path, {"zz": 1} if path.count(".") < 2 else 1), source="docs-check")
    except SpecError as e:
        return e.field == path and e.message.startswith(("unknown key", "unknown method"))
    return False


def test_doc_has_sweeps_and_tables():
    assert len(sweep_blocks()) >= 2, "expected at least the minimal and the full example"
    assert len(table_keys()) >= 20


@pytest.mark.parametrize("index", range(len(sweep_blocks())))
def test_yaml_sweep_blocks_parse(index):
    parse_spec(sweep_blocks()[index], source=f"{DOC.name} sweep block {index + 1}",
               base_dir=str(REPO / "docs"))


def test_full_example_is_tests_example():
    example = load_spec(REPO / "tests" / "data" / "sweeps" / "example.yaml")
    parsed = [parse_spec(b, base_dir=str(REPO / "docs")).canonical_json for b in sweep_blocks()]
    assert example.canonical_json in parsed


def test_minimal_is_valid():
    parse_spec(MINIMAL)


def test_unknown_key_check_works():
    assert _rejected_as_unknown("bogus")
    assert _rejected_as_unknown("problem.bogus")
    assert _rejected_as_unknown("methods.gd.eta_ratio")
    assert _rejected_as_unknown("methods.sgd")


@pytest.mark.parametrize("key", sorted(set(table_keys())))
def test_documented_key_is_accepted(key):
    assert not _rejected_as_unknown(key), f"{DOC.name} documents {key}, which the parser refuses"


def test_top_level_and_method_keys_are_documented():
    documented = set(table_keys())
    expected = set(spec_mod._TOP_KEYS)
    for method, keys in spec_mod.METHOD_KEYS.items():
        expected |= {f"methods.{method}"} | {f"methods.{method}.{k}" for k in keys}
    assert expected <= documented, f"undocumented: {sorted(expected - documented)}"


def test_mentioned_paths_exist():
    paths = set(re.findall(r"(?<![\w/.~-])((?:sweeps|docs|tests)/[\w./-]*[\w/])", TEXT))
    assert any(p.startswith("sweeps/") for p in paths)
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"{DOC.name} mentions paths that do not exist: {missing}"


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_repository_sweeps_parse(path):
    load_spec(path)
