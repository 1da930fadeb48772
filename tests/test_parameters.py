"""The table of run parameters (pipeline/parameters.py) and every place derived from it.

Each test walks ``PARAMS`` and checks one derived place against it: validation, the canonical
spec, run identity, the engine configuration, the result row, the shard schema and the
statistics' cell keys. ``test_adding_a_parameter_touches_only_the_table`` adds parameters to a
copy of the package by editing nothing but the table, and runs a sweep with them. The run ids of
every sweep file in the repository are pinned (tests/data/identities.json, written by wnsweep
0.1), so a change that would orphan stored results fails here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from analysis.aggregate import cell_stats
from pipeline import parameters
from pipeline.families.diagonal.dynamics import RunConfig
from pipeline.families.diagonal.run import engine_config as _config, stream_seed
from pipeline.families.twolayer.engine import TwoLayerConfig
from pipeline.families.twolayer.run import engine_config as _twolayer_config
from pipeline.parameters import PARAMS, RUN_PARAMS, Param
from pipeline.plan import make_plan
from pipeline.results import schema
from pipeline.spec import SpecError, load_spec, parse_spec
from pipeline.task import run_task
from tests.conftest import copy_package, run_in

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "table",
    "problem": {"M": 4, "N": 8, "sparsity": 2},
    "model": {"depth": 2},
    "init": {"alpha": 0.1},
    "methods": {"gd": {"eta": 0.05}, "wn": {"eta": 0.05, "schedule": "constant"}},
    "train": {"max_iters": 20},
}

#: The base of the two-layer family's parameters.
TWOLAYER = {
    "name": "table",
    "problem": {"M": 4, "N": 8},
    "model": {"family": "twolayer", "width": 3},
    "init": {"alpha": 0.1},
    "methods": {"gd": {"eta": 0.05}},
    "train": {"max_iters": 20},
}

#: A valid value of each parameter other than the one BASE gives (or its default).
OTHER = {"sign": "signed", "M": 5, "N": 9, "s": 3, "L": 3, "init": "random", "alpha": 0.2,
         "eta": 0.02, "eta_ratio": 0.5, "schedule": "normalized", "max_iters": 30, "tol": 1e-9,
         "checkpoints": 8, "family": "twolayer", "outputs": 2, "width": 7, "imbalance": 1.5,
         "noise": 0.1, "batch": 2, "label_noise": 0.05}


def _method(p: Param) -> str | None:
    return None if p.methods is None else p.methods[-1]


def _base(p: Param) -> dict:
    """The sweep a parameter's test starts from: TWOLAYER for the two-layer family's own."""
    return TWOLAYER if p.families == ("twolayer",) else BASE


def _with(p: Param, value, method: str | None = None) -> dict:
    """The base sweep with parameter ``p`` set to ``value`` (for ``method`` if it is a method's
    own); setting ``model.family`` also adds the width a twolayer family needs and drops what
    the diagonal family alone takes when it is no longer among the families."""
    doc = json.loads(json.dumps(_base(p)))
    section = doc["methods"][method or _method(p)] if p.methods else doc.setdefault(p.section, {})
    section[p.key] = value
    if p.name == "family" and isinstance(value, (str, list)):
        families = value if isinstance(value, list) else [value]
        if "twolayer" in families:
            doc["model"]["width"] = 3
        if "diagonal" not in families:
            doc["model"].pop("depth")
            doc["methods"].pop("wn")
    return doc


def _spec(doc: dict):
    return parse_spec(yaml.safe_dump(doc), source="table.yaml")


def _bad_values(p: Param) -> list:
    """Values the table's constraint forbids."""
    if p.choices:
        return ["bogus", 1]
    bad: list = ["text", True]
    if p.kind == "int":
        bad.append(2.5)
    if p.gt is not None:
        bad.append(p.gt)
    if p.ge is not None:
        bad.append(p.ge - 1)
    if not p.axis:
        bad.append([OTHER[p.name], OTHER[p.name] + 1])
    return bad


def test_every_parameter_has_a_test_value():
    assert set(OTHER) == {p.name for p in PARAMS}


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: p.name)
def test_validation_follows_the_table(p: Param):
    for method in p.methods or (None,):
        for bad in _bad_values(p):
            with pytest.raises(SpecError) as info:
                _spec(_with(p, bad, method))
            assert info.value.field == p.field(method), (bad, str(info.value))
    if p.methods is not None:  # a method's own key is refused under the other methods
        for other in set(parameters.METHODS) - set(p.methods):
            with pytest.raises(SpecError, match="unknown key") as info:
                _spec(_with(p, OTHER[p.name], other))
            assert info.value.field == f"methods.{other}.{p.key}"
    doc = json.loads(json.dumps(_base(p)))
    section = doc["methods"][_method(p)] if p.methods else doc.setdefault(p.section, {})
    section.pop(p.key, None)
    if p.required:
        with pytest.raises(SpecError, match="required") as info:
            _spec(doc)
        assert info.value.field == p.field(_method(p))
    else:
        spec = _spec(doc)
        axes = spec.methods[-1].axes if p.methods else spec.axes
        assert axes[p.name] == (p.default,)


@pytest.mark.parametrize("p", [p for p in PARAMS if p.axis], ids=lambda p: p.name)
def test_identity_and_canonical_spec_follow_the_table(p: Param):
    base = _spec(_base(p))
    base_value = (base.methods[-1].axes if p.methods else base.axes)[p.name][0]
    if base_value is None:  # a default that is "omitted" (batch: all M): a second given value
        base_value = 1
    one = _spec(_with(p, OTHER[p.name]))
    both = _spec(_with(p, [OTHER[p.name], base_value]))
    canonical = both.to_dict()
    section = canonical["methods"][_method(p)] if p.methods else canonical[p.section]
    assert len(section[p.key]) == 2
    plan_one, plan_both = make_plan(one), make_plan(both)
    assert len(plan_both.runs) > len(plan_one.runs)
    assert plan_one.run_ids < plan_both.run_ids  # a second value adds runs, keeps the others
    values = {r.params[p.name] if p.scope == "run" else
              next(i for i in plan_both.instances if i.instance_id == r.instance_id).params[p.name]
              for r in plan_both.runs if r.method == (_method(p) or r.method)}
    assert len(values) == 2


def test_run_id_is_the_documented_hash():
    """docs/SWEEP_FILES.md, "Run identity": the sha256 of the canonical JSON of the resolved
    parameters, floats to 12 significant digits, GD's WN-only parameters as nulls."""
    spec = _spec(BASE)
    plan = make_plan(spec)
    inst = plan.instances[0]
    for run in plan.runs[:2]:
        identity = {"seed": 0, "trial": 0, "sign": "nonneg", "M": 4, "N": 8, "s": 2,
                    "method": run.method, "L": 2, "init": "constant", "alpha": "0.1",
                    "eta": "0.05", "eta_ratio": None if run.method == "gd" else "1",
                    "schedule": None if run.method == "gd" else "constant", "max_iters": 20,
                    "tol": "1e-12", "checkpoints": 64}
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        assert run.run_id == "r-" + hashlib.sha256(text.encode()).hexdigest()[:20]
        assert run.instance_id == inst.instance_id


def _run_id(identity: dict) -> str:
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "r-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def test_run_identity_of_each_family_holds_the_other_familys_parameters_as_documented():
    """docs/SWEEP_FILES.md, "Run identity": parameters of wnsweep 0.1 that do not apply to a run
    are null in its identity; those added since (family, outputs, width, imbalance) are absent
    unless they apply and differ from their default. Checked on the runs of a sweep with both
    families against identities written out here, and against the doc's example."""
    doc = {"name": "table", "problem": {"M": 4, "N": 8, "sparsity": 2, "outputs": 2},
           "model": {"family": ["diagonal", "twolayer"], "depth": 2, "width": 3},
           "init": {"alpha": 0.1, "imbalance": [0, 1.5]},
           "methods": {"gd": {"eta": 0.05}}, "train": {"max_iters": 20}}
    common = {"seed": 0, "trial": 0, "M": 4, "N": 8, "s": 2, "method": "gd", "alpha": "0.1",
              "eta": "0.05", "eta_ratio": None, "schedule": None, "max_iters": 20,
              "tol": "1e-12", "checkpoints": 64}
    diagonal = {**common, "sign": "nonneg", "L": 2, "init": "constant"}
    twolayer = {**common, "sign": None, "L": None, "init": "random", "family": "twolayer",
                "outputs": 2, "width": 3}
    expected = {_run_id(diagonal): diagonal, _run_id(twolayer): twolayer,
                _run_id({**twolayer, "imbalance": "1.5"}): {**twolayer, "imbalance": "1.5"}}
    assert {r.run_id for r in make_plan(_spec(doc)).runs} == set(expected)
    # the diagonal run is the one a diagonal-only sweep makes
    alone = {**doc, "problem": {"M": 4, "N": 8, "sparsity": 2}, "model": {"depth": 2},
             "init": {"alpha": 0.1}}
    assert [r.run_id for r in make_plan(_spec(alone)).runs] == [_run_id(diagonal)]
    # the doc's example is the twolayer run at imbalance 0
    text = (REPO / "docs" / "SWEEP_FILES.md").read_text(encoding="utf-8")
    section = text[text.index("## Run identity"):text.index("## What lands on disk")]
    [example] = re.findall(r"^```json\n(.*?)\n```", section, flags=re.S | re.M)
    assert json.loads(example) == twolayer
    assert example == json.dumps(twolayer, sort_keys=True, separators=(",", ":"))


def test_engine_config_and_rows_follow_the_table():
    doc = json.loads(json.dumps(BASE))
    doc["problem"]["sign"] = "signed"
    doc["methods"]["wn"].update(eta_ratio=0.5, schedule="normalized")
    doc["train"].update(tol=1e-9, checkpoints=8)
    plan = make_plan(_spec(doc))
    [task] = plan.tasks()
    result = run_task(task)
    rows = result.runs.to_pylist()
    assert len(rows) == len(plan.runs) == 2
    by_id = {r.run_id: r for r in plan.runs}
    inst = plan.instances[0]
    # written out from the sweep above; GD gets the WN-only settings' defaults (it ignores them)
    expected = {
        "gd": RunConfig(method="gd", signed=True, depth=2, eta=0.05, eta_ratio=1.0,
                        schedule="constant", max_iters=20, tol=1e-9, checkpoints=8),
        "wn": RunConfig(method="wn", signed=True, depth=2, eta=0.05, eta_ratio=0.5,
                        schedule="normalized", max_iters=20, tol=1e-9, checkpoints=8),
    }
    for row in rows:
        run = by_id[row["run_id"]]
        assert _config(inst, run) == dataclasses.replace(expected[run.method],
                                                         seed=stream_seed(run.run_id))
        for p in RUN_PARAMS:
            value = run.params[p.name]
            if p.column:
                assert row[p.name] == value, p.name
            if not p.applies_to(run.method):
                assert value is None and (not p.column or row[p.name] is None)
        for p in parameters.INSTANCE_PARAMS:
            assert row[p.name] == inst.params[p.name]
        for p in PARAMS:  # the two-layer family's own parameters are null for diagonal rows
            if p.column and not p.applies_to_family("diagonal"):
                assert row[p.name] is None, p.name
    instance_row = result.instances.to_pylist()[0]
    assert all(instance_row[p.name] == inst.params[p.name] for p in parameters.INSTANCE_PARAMS
               if p.name in schema.INSTANCES_SCHEMA.names)


def test_twolayer_config_and_rows_follow_the_table():
    doc = json.loads(json.dumps(TWOLAYER))
    doc["init"].update(imbalance=1.0, scheme=["random", "range"])
    doc["train"].update(tol=1e-9, checkpoints=8)
    doc["problem"]["outputs"] = 2
    plan = make_plan(_spec(doc))
    [task] = plan.tasks()
    rows = run_task(task).runs.to_pylist()
    assert len(rows) == len(plan.runs) == 2
    by_id = {r.run_id: r for r in plan.runs}
    inst = plan.instances[0]
    # written out from the sweep above (the runs differ in init.scheme, which no config holds)
    expected = TwoLayerConfig(width=3, eta=0.05, max_iters=20, tol=1e-9, checkpoints=8)
    for row in rows:
        run = by_id[row["run_id"]]
        assert _twolayer_config(run) == expected
        for p in RUN_PARAMS:
            value = run.params[p.name]
            if p.column:
                assert row[p.name] == value, p.name
            if not p.applies_to_family("twolayer"):
                assert value is None, p.name
        for p in parameters.INSTANCE_PARAMS:
            assert row[p.name] == inst.params[p.name]
        assert row["family"] == "twolayer" and row["outputs"] == 2 and row["sign"] is None


#: The engine configuration of each family's runs.
ENGINE_CONFIGS = {"diagonal": RunConfig, "twolayer": TwoLayerConfig}


@pytest.mark.parametrize("p", [p for p in PARAMS if p.engine is not None], ids=lambda p: p.name)
def test_every_engine_parameter_is_a_field_of_its_families_engine_config(p: Param):
    """A parameter with an ``engine`` field reaches the engine of every (family, method) it
    applies to: a field of that family's config, not dropped on the way."""
    assert set(ENGINE_CONFIGS) == set(parameters.FAMILIES)
    applies = [(family, method) for family in parameters.FAMILIES
               for method in parameters.METHODS
               if family in parameters.METHOD_FAMILIES[method]
               and p.applies_to_family(family) and p.applies_to(method)]
    assert applies, f"{p.name} applies to no family and method"
    for family, _ in applies:
        fields = {f.name for f in dataclasses.fields(ENGINE_CONFIGS[family])}
        assert p.engine in fields, f"{p.name}: {family} runs take it, {family}'s config lacks it"


def test_schema_follows_the_table():
    for p in PARAMS:
        if not p.column:
            assert p.name not in schema.RUNS_SCHEMA.names
            continue
        assert schema.RUNS_SCHEMA.field(p.name).type == schema.ARROW_TYPES[p.kind]
        if p.scope == "instance" and p.identity == "always":
            assert schema.INSTANCES_SCHEMA.field(p.name).type == schema.ARROW_TYPES[p.kind]
        elif p.scope == "instance":  # added since 0.1: in the runs shard only (see schema.py)
            assert p.name not in schema.INSTANCES_SCHEMA.names


@pytest.mark.parametrize("p", [p for p in PARAMS if p.column], ids=lambda p: p.name)
def test_runs_differing_in_one_parameter_are_different_cells(p: Param):
    row = {"run_id": "r", "trial": 0, "instance_id": "i", "method": "wn", "sign": "nonneg",
           "M": 4, "N": 8, "s": 2, "L": 2, "init": "constant", "alpha": 0.1, "eta": 0.05,
           "eta_ratio": 1.0, "schedule": "constant", "max_iters": 20, "tol": 1e-12,
           "family": "diagonal", "outputs": None, "width": None, "imbalance": None,
           "noise": 0.0, "batch": None, "label_noise": 0.0, "status": "converged", "iterations": 3, "error_l1": 1.0, "rel_error_l1": 0.5}
    other = {**row, "run_id": "r2", p.name: OTHER[p.name]}
    assert set(row) >= set(parameters.COLUMNS)
    stats = cell_stats(pd.DataFrame([row, other]))
    assert len(stats) == 2 and p.name in stats.columns


# --------------------------------------------------------------------- adding a parameter

#: Appended to PARAMS in a copy of the package: one shared axis, one WN-only axis. Neither
#: feeds the engine, so runs that differ only in them compute the same numbers.
NEW_PARAMS = """
    Param("label", "train", "label", "int", "a tag", default=0, ge=0,
          identity="unless_default"),
    Param("wn_note", "methods", "note", "str", "a WN-only word", default="plain",
          choices=("plain", "fancy"), methods=("wn",), identity="unless_default"),
"""

SWEEP = """\
name: added
seed: 2
problem: {M: 6, N: 12, sparsity: 2}
model: {depth: 2}
init: {alpha: 0.1}
methods: {gd: {eta: 0.05}, wn: {eta: 0.05, schedule: constant%s}}
train: {max_iters: 50%s}
"""


def _copy_with_new_params(tmp_path: Path) -> Path:
    root = copy_package(tmp_path)
    source = root / "pipeline" / "parameters.py"
    text = source.read_text()
    anchor = "SHARED: tuple[Param, ...] = ("
    assert text.count(anchor) == 1
    end = text.index("\n)\n", text.index(anchor))
    source.write_text(text[:end] + textwrap.indent(textwrap.dedent(NEW_PARAMS), "    ").rstrip()
                      + text[end:])
    return root


def _wnsweep(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_in(root, *args, timeout=300)


@pytest.mark.slow
def test_adding_a_parameter_touches_only_the_table(tmp_path: Path):
    root = _copy_with_new_params(tmp_path)
    plain, extended = tmp_path / "plain.yaml", tmp_path / "extended.yaml"
    plain.write_text(SWEEP % ("", ""))
    extended.write_text(SWEEP % (", note: [plain, fancy]", ", label: [0, 3]"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(SWEEP % (", note: weird", ""))

    refused = _wnsweep(root, "run", str(bad), "--executor", "serial", "--out",
                       str(tmp_path / "bad-out"))
    assert refused.returncode == 2 and "methods.wn.note" in refused.stderr
    assert "plain, fancy" in refused.stderr and not (tmp_path / "bad-out").exists()

    # a folder written before the parameters existed resumes with nothing computed again
    before = _wnsweep(REPO, "run", str(plain), "--executor", "serial", "--out",
                      str(tmp_path / "plain"))
    after = _wnsweep(root, "run", str(plain), "--executor", "serial", "--out",
                     str(tmp_path / "plain"))
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert after.stdout.startswith("0 runs computed") and "2 already stored" in after.stdout
    status = _wnsweep(root, "status", str(tmp_path / "plain"))
    assert status.returncode == 0 and "done 2 / 2 runs, missing 0" in status.stdout

    done = _wnsweep(root, "run", str(extended), "--executor", "serial", "--out",
                    str(tmp_path / "extended"))
    assert done.returncode == 0, done.stderr
    old = pq.read_table(tmp_path / "plain" / "runs").to_pandas()
    new = pq.read_table(tmp_path / "extended" / "runs").to_pandas()

    # the new columns exist, with the default where a run does not set them
    assert set(new["label"]) == {0, 3} and "label" not in old.columns
    assert set(new.loc[new.method == "wn", "wn_note"]) == {"plain", "fancy"}
    assert new.loc[new.method == "gd", "wn_note"].isna().all()
    # runs at the defaults keep the run_ids they had before the parameters existed ...
    assert set(old.run_id) == set(load_ids_without_new_params(plain))
    at_defaults = new[(new.label == 0) & ((new.method == "gd") | (new.wn_note == "plain"))]
    assert set(at_defaults.run_id) == set(old.run_id)
    # ... and every other value is a new run, with the same numbers (they feed no engine)
    assert len(new) == 2 * (1 + 2) and new.run_id.is_unique
    fancy = new[(new.wn_note == "fancy") & (new.label == 0)]
    base = new[(new.wn_note == "plain") & (new.label == 0)]
    assert np.array_equal(np.stack(fancy.curve_loss.tolist()), np.stack(base.curve_loss.tolist()))
    # the spec hash of a sweep that leaves them at their defaults is unchanged
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert manifest["spec_hash"] == load_spec(plain).spec_hash
    # and the statistics keep the cells apart
    code = ("import pandas as pd; from analysis.aggregate import cell_stats; "
            "print(len(cell_stats(pd.read_parquet(%r))))" % str(tmp_path / "extended" / "runs"))
    cells = run_in(root, "-c", code, python=True, timeout=300)
    assert cells.stdout.strip() == str(len(new)), cells.stderr


def load_ids_without_new_params(path: Path) -> list[str]:
    """Run ids of the sweep file as the unmodified package plans them."""
    return [r.run_id for r in make_plan(load_spec(path)).runs]
