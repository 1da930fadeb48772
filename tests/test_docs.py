"""The docs stay true to the code: docs/SWEEP_FILES.md's sweeps parse, its keys exist and its column
tables equal pipeline/results/schema.py; every repository path, section and anchor that the docs and
docstrings name exists; nothing tracked points to documents outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import spec as spec_mod
from pipeline.parameters import PARAMS
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
  wn: {eta: 0.05, schedule: constant}
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


def _listed(sentence_start: str, sentence_end: str) -> set[str]:
    """The backquoted names between the two strings of the doc."""
    start = TEXT.index(sentence_start)
    return set(re.findall(r"`([\w.]+)`", TEXT[start:TEXT.index(sentence_end, start)]))


def test_axis_integer_and_word_key_lists_are_the_parameters():
    """docs/SWEEP_FILES.md, "Axes": its lists of axes, integer keys and word-valued axes are
    those of pipeline/parameters.py (plus the top-level integers seed and trials)."""
    axes = {p.field(m) for p in PARAMS if p.axis for m in (p.methods or (None,))}
    assert _listed("The following keys are axes:", "An axis can be") == axes
    integers = {p.key for p in PARAMS if p.kind == "int"} | {"seed", "trials"}
    assert _listed("- Integer keys (", ") accept") == integers
    words = {p.key for p in PARAMS if p.kind == "str" and p.axis}
    assert _listed("- Word-valued axes (", ") take") == words


def test_mentioned_paths_exist():
    paths = set(re.findall(r"(?<![\w/.~-])((?:sweeps|docs|tests)/[\w./-]*[\w/])", TEXT))
    assert any(p.startswith("sweeps/") for p in paths)
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"{DOC.name} mentions paths that do not exist: {missing}"


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_repository_sweeps_parse(path):
    load_spec(path)


# --- the column tables of "What lands on disk" against pipeline/results/schema.py -----------------------


def _type_name(t) -> str:
    """An Arrow type as the doc writes it: int64, float64, string, list<float64>."""
    import pyarrow as pa

    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return {"double": "float64"}.get(str(t), str(t))


def column_table(text: str, heading: str) -> list[tuple[str, str]]:
    """(column, type) rows of the first | Column | Type | ... table under ``heading``."""
    section = re.search(rf"^#+ {re.escape(heading)}[ \t]*\n(.*?)(?=^#)", text + "\n#",
                        flags=re.S | re.M)
    assert section, f"{DOC.name} has no section {heading!r}"
    table = re.search(r"^\| Column \| Type \|.*?\n((?:\|.*\n?)+)", section.group(1), flags=re.M)
    assert table, f"{DOC.name}: no | Column | Type | table under {heading!r}"
    rows = []
    for row in table.group(1).splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        if not cells or set(cells[0]) <= {"-", ":"}:
            continue
        rows.append((cells[0].strip("`"), cells[1].replace("\\", "")))
    return rows


def schema_rows(schema) -> list[tuple[str, str]]:
    return [(f.name, _type_name(f.type)) for f in schema]


@pytest.mark.parametrize("kind", ["runs", "instances"])
def test_column_tables_match_schema(kind):
    from pipeline.results import schema

    expected = schema_rows(schema.RUNS_SCHEMA if kind == "runs" else schema.INSTANCES_SCHEMA)
    documented = column_table(TEXT, f"Columns of `{kind}`")
    missing = [r for r in expected if r not in documented]
    extra = [r for r in documented if r not in expected]
    assert not missing and not extra, (
        f"{DOC.name}, columns of {kind}: undocumented or mistyped {missing}; "
        f"documented but not in pipeline/results/schema.py {extra}")
    assert documented == expected, f"{DOC.name}: columns of {kind} not in schema order"


def test_column_table_check_bites():
    """A table missing a row, or with a wrong type, no longer equals the schema."""
    from pipeline.results import schema

    expected = schema_rows(schema.RUNS_SCHEMA)
    dropped = re.sub(r"^\| `alpha_eff` \|.*\n", "", TEXT, flags=re.M)
    assert column_table(dropped, "Columns of `runs`") != expected
    retyped = re.sub(r"^(\| `iterations` \| )int64", r"\1float64", TEXT, flags=re.M)
    assert column_table(retyped, "Columns of `runs`") != expected


# --- the repository is self-contained: its paths exist, nothing points outside it ---------------


def tracked_files() -> list[Path]:
    """The repository's tracked files (skips when this is not a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    files = [REPO / p for p in out.decode().split("\0") if p]
    if not files:
        pytest.skip("not a git checkout")
    return [p for p in files if p.is_file()]


DOC_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}
#: A repository path as docstrings and docs name them (docs/MODEL.md, pipeline/families/diagonal/dynamics.py, ...).
REPO_PATH = re.compile(
    r"(?<![\w/.~<>-])((?:docs|pipeline|analysis|tests|sweeps|benchmarks)/[\w./-]*"
    r"\.(?:md|py|yaml|ipynb|png))(?![\w/])")
#: A reference to a section: docs/X.md, "Heading" (and "Other heading").
SECTION_REF = re.compile(r"(docs/[\w/-]+\.md),\s*((?:\"[^\"\n]+\"(?:\s+and\s+|,\s*)?)+)")


def docstrings(source: str) -> str:
    """The module, class and function docstrings of a Python source, one after the other."""
    import ast

    nodes = [n for n in ast.walk(ast.parse(source))
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return "\n".join(d for d in (ast.get_docstring(n, clean=False) for n in nodes) if d)


def _text_files() -> list[tuple[Path, str]]:
    """(path, text) of the docs and sweep files, and the docstrings of every Python file: the
    places a reader follows a path from (test code may name made-up paths on purpose)."""
    out = []
    for path in tracked_files():
        if path.suffix not in DOC_SUFFIXES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        out.append((path, docstrings(text) if path.suffix == ".py" else text))
    return out


def named_paths(text: str) -> set[str]:
    return set(REPO_PATH.findall(text))


def headings(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    return [h.replace("`", "").strip()
            for h in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M),
                                flags=re.M)]


def test_named_paths_check_bites():
    source = '"""See docs/MODEL.md and pipeline/nowhere.py."""\ndef f():\n    "tests/gone.py"\n'
    assert named_paths(docstrings(source)) == {"docs/MODEL.md", "pipeline/nowhere.py",
                                                "tests/gone.py"}
    assert not named_paths("results/<name>/runs/part-<task>.parquet and ../docs/x.mdx")


def test_every_named_path_exists():
    missing = sorted(f"{path.relative_to(REPO)}: {p}" for path, text in _text_files()
                     for p in named_paths(text) if not (REPO / p).exists())
    assert not missing, f"files name repository paths that do not exist: {missing}"


def test_every_named_section_exists():
    checked, missing = 0, []
    for path, text in _text_files():
        for doc, names in SECTION_REF.findall(text):
            if not (REPO / doc).exists():
                continue  # test_every_named_path_exists reports it
            found = headings(REPO / doc)
            for name in re.findall(r"\"([^\"]+)\"", names):
                name = " ".join(name.split())
                checked += 1
                if not any(h.startswith(name) for h in found):
                    missing.append(f"{path.relative_to(REPO)}: {doc}, {name!r}")
    assert checked >= 5, "expected the module docstrings' section references"
    assert not missing, f"references to sections that do not exist: {missing}"


#: Paths of the planning documents that live outside the repository (built so that this file does
#: not contain them itself).
OUTSIDE = ("../" + "shared", "shared" + "/spec", "SWEEPS" + ".md")


def outside_references(text: str) -> list[str]:
    return [s for s in OUTSIDE if s in text]


def test_outside_reference_check_bites():
    assert outside_references("see " + "SWEEPS" + ".md") == ["SWEEPS" + ".md"]
    assert outside_references("docs/SWEEP_FILES.md and docs/MODEL.md") == []


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for path in tracked_files():
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            continue
        found = outside_references(text)
        if found:
            offenders.append(f"{path.relative_to(REPO)}: {found}")
    assert not offenders, f"tracked files refer to documents outside the repository: {offenders}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_matches_github():
    assert _slug("Run identity: what changes run_ids") == "run-identity-what-changes-run_ids"
    assert _slug("Predicted gradient-flow limits (the theory overlay)") == \
        "predicted-gradient-flow-limits-the-theory-overlay"


@pytest.mark.parametrize("doc", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_anchors_resolve(doc):
    """Every [text](#anchor) link of a doc leads to one of its own headings."""
    text = doc.read_text(encoding="utf-8")
    slugs = {_slug(h) for h in headings(doc)}
    broken = sorted(set(re.findall(r"\]\(#([^)]+)\)", text)) - slugs)
    assert not broken, f"{doc.name}: links to missing headings {broken}"
