"""Model families as plug-ins (pipeline/families/): the registry, the contract each family keeps,
and a new family added by its folder and one registry line alone, in a copy of the package."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import families
from pipeline.families.base import COLUMN_KINDS, Family
from pipeline.parameters import PARAMS
from pipeline.plan import make_plan
from pipeline.spec import SpecError, parse_spec
from pipeline.task import run_task
from tests.conftest import copy_package, run_in

REPO = Path(__file__).resolve().parents[1]


def test_the_registry_lists_each_family_once_with_disjoint_seed_codes():
    assert families.FAMILIES == ("diagonal", "twolayer")
    assert families.DEFAULT_FAMILY == "diagonal"
    codes = [code for f in families.REGISTRY.values() for code in f.seed_codes]
    assert len(codes) == len(set(codes))
    assert families.METHOD_FAMILIES == {"gd": ("diagonal", "twolayer"), "wn": ("diagonal",)}


def test_every_family_declares_its_columns_by_kind_and_owns_its_parameters():
    for f in families.REGISTRY.values():
        assert isinstance(f, Family)
        for _, kind in (*f.run_columns, *f.instance_columns):
            assert kind in COLUMN_KINDS
        for p in f.params:
            assert next(q for q in PARAMS if q.name == p.name).families == (f.name,)


def test_an_unknown_family_reaches_no_engine():
    with pytest.raises(KeyError, match="unknown model family 'matrix'"):
        families.family("matrix")
    spec = parse_spec("""
name: t
problem: {M: 4, N: 8, sparsity: 2}
model: {depth: 2}
init: {alpha: 0.1}
methods: {gd: {eta: 0.05}}
train: {max_iters: 5}
""")
    task = make_plan(spec).tasks()[0]
    forged = type(task)(**{**task.__dict__, "instances": tuple(
        type(i)(**{**i.__dict__, "params": {**i.params, "family": "matrix"}})
        for i in task.instances)})
    with pytest.raises(KeyError, match="unknown model family"):
        run_task(forged)


def test_an_unknown_family_in_a_sweep_file_names_model_family():
    with pytest.raises(SpecError) as err:
        parse_spec("""
name: t
problem: {M: 4, N: 8, sparsity: 2}
model: {family: matrix, depth: 2}
init: {alpha: 0.1}
methods: {gd: {eta: 0.05}}
train: {max_iters: 5}
""")
    assert err.value.field == "model.family" and "diagonal, twolayer" in err.value.message


# --------------------------------------------------------------------- adding a family

#: A small family, written as a user would: least squares x = w, GD from alpha * ones, against
#: the minimum-norm solution; its own parameter (a ridge damping), columns and seed code.
TOY_INIT = '''
"""A toy family: min 1/2 ||A w - b||^2 + damping/2 ||w||^2 by GD, against A^+ b."""

from __future__ import annotations

import time

import numpy as np

from pipeline.families.base import Family
from pipeline.families.training import DIVERGENCE_FACTOR, checkpoint_iterations
from pipeline.parameter import Param

PARAMS = (Param("damping", "model", "damping", "float", "the ridge damping", default=0.0, ge=0,
                identity="unless_default"),)


def _spawn_key(params, trial, file_code):
    return (7, params["M"], params["N"], trial)


def _cost(inst, runs):
    return sum(r.max_iters for r in runs) * 4.0 * inst.M * inst.N / 1e9


def _run_one(A, b, w, eta, damping, max_iters, tol, checkpoints):
    marks = set(checkpoint_iterations(max_iters, checkpoints).tolist())
    curve_iter, curve_loss, status, k = [], [], "max_iters", 0
    start = time.perf_counter()
    loss0 = None
    while True:
        r = A @ w - b
        loss = 0.5 * float(r @ r) + 0.5 * damping * float(w @ w)
        loss0 = loss if loss0 is None else loss0
        if k in marks or not np.isfinite(loss):
            curve_iter.append(k)
            curve_loss.append(loss)
        if not np.isfinite(loss) or loss > DIVERGENCE_FACTOR * loss0:
            status = "diverged"
            break
        if loss <= tol:
            status = "converged"
            break
        if k == max_iters:
            break
        w = w - eta * (A.T @ r + damping * w)
        k += 1
    return w, status, k, loss, curve_iter, curve_loss, time.perf_counter() - start


def _run(context, instances, runs_by_instance):
    for inst in instances:
        rng = np.random.default_rng(np.random.SeedSequence(inst.seed))
        A = rng.standard_normal((inst.M, inst.N)) / np.sqrt(inst.M)
        b = rng.standard_normal(inst.M)
        x_ref = np.linalg.pinv(A) @ b
        rows = []
        for run in runs_by_instance[inst.instance_id]:
            w, status, k, loss, its, losses, seconds = _run_one(
                A, b, np.full(inst.N, run.alpha), run.eta, run.damping, run.max_iters, run.tol,
                run.checkpoints)
            rows.append({"status": status, "iterations": k, "loss_final": loss,
                         "curve_iter": its, "curve_loss": losses, "seconds": seconds,
                         "toy_error": float(np.linalg.norm(w - x_ref) / np.linalg.norm(x_ref))})
        yield inst.instance_id, {"toy_ref_norm": float(np.linalg.norm(x_ref))}, rows


FAMILY = Family(
    name="toy", summary="least squares by GD, against A^+ b", reference="one pseudo-inverse each",
    params=PARAMS, overrides=(("init", ("constant",), "constant"), ("s", (), None)),
    methods={"gd": "GD"}, seed_codes=(7,), spawn_key=_spawn_key,
    run_columns=(("toy_error", "float"),), instance_columns=(("toy_ref_norm", "float"),),
    summary_columns=("toy_error",), cost=_cost, run=_run,
)
'''

TOY_SWEEP = """\
name: toy-sweep
seed: 4
trials: 2
problem: {M: 5, N: 9}
model: {family: toy, damping: %s}
init: {alpha: [0.1, 1.0]}
methods: {gd: {eta: 0.2}}
train: {max_iters: 5000, tol: 1.0e-20}
"""


def _copy_with_toy_family(tmp_path: Path) -> Path:
    """The package copied, with the toy family's folder and one registry line: nothing else."""
    root = copy_package(tmp_path)
    folder = root / "pipeline" / "families" / "toy"
    folder.mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent(TOY_INIT))
    registry = root / "pipeline" / "families" / "__init__.py"
    text = registry.read_text()
    line = "    twolayer.FAMILY,\n"
    assert text.count(line) == 1
    text = text.replace(line, line + "    toy.FAMILY,\n")
    text = text.replace("from pipeline.families import diagonal, twolayer",
                        "from pipeline.families import diagonal, toy, twolayer")
    registry.write_text(text)
    changed = subprocess.run(["diff", "-r", "-q", "-x", "__pycache__", str(REPO / "pipeline"),
                              str(root / "pipeline")], capture_output=True, text=True).stdout
    assert sorted(changed.splitlines()) == sorted([
        f"Files {REPO}/pipeline/families/__init__.py and {root}/pipeline/families/__init__.py "
        "differ", f"Only in {root}/pipeline/families: toy"])
    return root


@pytest.mark.slow
def test_adding_a_family_touches_only_its_folder(tmp_path: Path):
    root = _copy_with_toy_family(tmp_path)
    sweep = tmp_path / "toy.yaml"
    sweep.write_text(TOY_SWEEP % "[0.0, 0.5]")

    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY_SWEEP % "-1")
    refused = run_in(root, "run", str(bad), "--executor", "serial", "--out", str(tmp_path / "b"))
    assert refused.returncode == 2 and "model.damping" in refused.stderr, refused.stderr
    assert ">= 0" in refused.stderr and not (tmp_path / "b").exists()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(TOY_SWEEP.replace("family: toy", "family: matrix") % "0.0")
    refused = run_in(root, "run", str(unknown), "--executor", "serial", "--out",
                       str(tmp_path / "u"))
    assert refused.returncode == 2 and "model.family" in refused.stderr
    assert "diagonal, twolayer, toy" in refused.stderr and not (tmp_path / "u").exists()

    serial = run_in(root, "run", str(sweep), "--executor", "serial", "--out",
                      str(tmp_path / "serial"))
    assert serial.returncode == 0, serial.stderr
    ray = run_in(root, "run", str(sweep), "--num-cpus", "2", "--no-progress", "--out",
                   str(tmp_path / "ray"))
    assert ray.returncode == 0, ray.stderr
    runs = {name: pq.read_table(tmp_path / name / "runs").to_pandas().sort_values("run_id")
            for name in ("serial", "ray")}
    assert len(runs["serial"]) == 2 * 2 * 2 and set(runs["serial"].family) == {"toy"}
    for column in ("run_id", "status", "iterations", "loss_final", "toy_error", "damping"):
        assert list(runs["serial"][column]) == list(runs["ray"][column]), column
    assert runs["serial"].toy_error.notna().all() and runs["serial"].error_l1.isna().all()
    # without damping GD ends at A^+ b + (I - A^+ A) w0: the error is linear in alpha
    plain = runs["serial"][runs["serial"].damping == 0.0].set_index(["trial", "alpha"]).toy_error
    for trial in (0, 1):
        assert plain[(trial, 1.0)] / plain[(trial, 0.1)] == pytest.approx(10.0, rel=1e-6)
    instances = pq.read_table(tmp_path / "serial" / "instances").to_pandas()
    assert instances.toy_ref_norm.notna().all() and instances.x_l1.isna().all()

    loaded = run_in(root, "-c", "import analysis; df = analysis.load(%r); "
                      "print(len(df), sorted(set(df.family)), df.toy_ref_norm.notna().all())"
                      % str(tmp_path / "serial"), python=True)
    assert loaded.stdout.split() == ["8", "['toy']", "True"], loaded.stderr
    report = run_in(root, "report", str(tmp_path / "serial"))
    assert report.returncode == 0, report.stderr
    summary = (tmp_path / "serial" / "report" / "summary.csv").read_text()
    assert "toy_error_median" in summary.splitlines()[0]

    # every diagonal and two-layer identity is as pinned
    code = ("import json, sys; sys.path.insert(0, %r); from test_identity import SWEEP_FILES, "
            "identity; print(json.dumps({p: identity(p) for p in SWEEP_FILES}))"
            % str(REPO / "tests"))
    ids = run_in(root, "-c", code, python=True)
    assert ids.returncode == 0, ids.stderr
    assert json.loads(ids.stdout) == json.loads((REPO / "tests/data/identities.json").read_text())


# --------------------------------------------------------------------- folders written before

@pytest.mark.parametrize("name, runs", [("legacy-twolayer", 16), ("legacy-mixed", 12)])
def test_a_folder_written_before_the_families_resumes_with_nothing_recomputed(tmp_path, name,
                                                                              runs):
    """tests/data/folders/legacy-{twolayer,mixed}: written by wnsweep 0.3 (before families were
    plug-ins) from tests/data/sweeps/ of the same name."""
    from pipeline import sweep

    folder = tmp_path / name
    shutil.copytree(REPO / "tests" / "data" / "folders" / name, folder)
    outcome = sweep.run_sweep(str(REPO / "tests" / "data" / "sweeps" / f"{name}.yaml"),
                              out=str(folder), executor="serial", progress=False)
    assert (outcome.computed, outcome.already, outcome.planned) == (0, runs, runs)
    text, healthy = sweep.status_text(str(folder))
    assert healthy and f"done {runs} / {runs} runs, missing 0" in text
