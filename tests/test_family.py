"""The two-layer family through the pipeline (docs/MODEL.md, "The two-layer family").

Validation per family (pipeline/spec.py), planning per family (pipeline/plan.py), the batched
two-layer path of the task (pipeline/task.py) against ``engine.run_batch`` called one run at a
time, the paper's claims on small sweeps, and a results folder holding both families that loads
and reports. The numerical core itself is tested in tests/test_twolayer.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import analysis
from pipeline.cli import main
from pipeline.families.twolayer import engine, model
from pipeline.parameters import BY_NAME
from pipeline.plan import make_plan
from pipeline.spec import SpecError, parse_spec
from pipeline.task import run_task

TWOLAYER = {
    "name": "two",
    "problem": {"M": 6, "N": 15},
    "model": {"family": "twolayer", "width": 4},
    "init": {"alpha": 0.3},
    "methods": {"gd": {"eta": 0.02}},
    "train": {"max_iters": 20000, "tol": 1e-24},
}
DIAGONAL = {
    "name": "diag",
    "problem": {"M": 6, "N": 15, "sparsity": 2},
    "model": {"depth": 2},
    "init": {"alpha": 0.1},
    "methods": {"gd": {"eta": 0.05}, "wn": {"eta": 0.05, "schedule": "constant"}},
    "train": {"max_iters": 200},
}


def _doc(base: dict, **sections) -> dict:
    """A copy of ``base`` with ``sections`` merged in (None deletes a key)."""
    doc = json.loads(json.dumps(base))
    for section, values in sections.items():
        if values is None:
            doc.pop(section, None)
            continue
        target = doc.setdefault(section, {})
        for key, value in values.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return doc


def _spec(doc: dict):
    return parse_spec(yaml.safe_dump(doc), source="family.yaml")


MIXED = _doc(DIAGONAL, model={"family": ["diagonal", "twolayer"], "width": 4})

BAD = [
    # (base, changes, field, message fragment)
    (TWOLAYER, {"methods": {"wn": {"eta": 0.1, "schedule": "constant"}}}, "methods.wn",
     "WN-GD is defined for the diagonal family only; the twolayer family takes gd"),
    (TWOLAYER, {"model": {"width": None}}, "model.width", "required for the twolayer family"),
    (MIXED, {"model": {"depth": None}}, "model.depth", "required for the diagonal family"),
    (MIXED, {"model": {"width": None}}, "model.width", "required for the twolayer family"),
    (TWOLAYER, {"model": {"depth": 2}}, "model.depth", "of the diagonal family only"),
    (TWOLAYER, {"problem": {"sign": "signed"}}, "problem.sign", "of the diagonal family only"),
    (DIAGONAL, {"model": {"width": 5}}, "model.width", "of the twolayer family only"),
    (DIAGONAL, {"problem": {"outputs": 2}}, "problem.outputs", "of the twolayer family only"),
    (DIAGONAL, {"init": {"imbalance": 1.0}}, "init.imbalance", "of the twolayer family only"),
    (DIAGONAL, {"init": {"scheme": "range"}}, "init.scheme", "allowed: diagonal: constant, random"),
    (TWOLAYER, {"init": {"scheme": "constant"}}, "init.scheme",
     "allowed: twolayer: random, range"),
    (MIXED, {"init": {"scheme": "constant"}}, "init.scheme",
     "the twolayer family takes random, range"),
    (DIAGONAL, {"problem": {"sparsity": None}}, "problem.sparsity", "required"),
    (TWOLAYER, {"model": {"family": "deep"}}, "model.family", "diagonal, twolayer"),
    (TWOLAYER, {"model": {"width": 0}}, "model.width", ">= 1"),
    (TWOLAYER, {"model": {"width": 2.5}}, "model.width", "integer"),
    (TWOLAYER, {"problem": {"outputs": 0}}, "problem.outputs", ">= 1"),
    (TWOLAYER, {"init": {"imbalance": "big"}}, "init.imbalance", "number"),
    (TWOLAYER, {"problem": {"sparsity": 16}}, "problem.sparsity", "s must be <= N"),
    (TWOLAYER, {"problem": {"M": None, "N": None, "file": "x.npz"}}, "problem.file",
     "the twolayer family takes a generated problem"),
]


@pytest.mark.parametrize("base, changes, field, fragment", BAD,
                         ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_validation_names_the_field(base, changes, field, fragment):
    with pytest.raises(SpecError) as info:
        _spec(_doc(base, **changes))
    assert info.value.field == field, str(info.value)
    assert fragment in info.value.message, str(info.value)
    assert str(info.value).startswith("family.yaml: " + field)


def test_cli_refuses_wn_for_the_twolayer_family(tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_doc(TWOLAYER, methods={"wn": {"eta": 0.1, "schedule": "constant"}})))
    out = tmp_path / "out"
    code = main(["run", str(path), "--executor", "serial", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}: methods.wn: WN-GD is defined for the diagonal family" in err
    assert not out.exists()


def test_defaults_and_families_in_the_spec():
    spec = _spec(TWOLAYER)
    assert spec.axes["family"] == ("twolayer",) and spec.axes["init"] == ("random",)
    assert spec.axes["outputs"] == (1,) and spec.axes["imbalance"] == (0.0,)
    assert spec.axes["L"] == spec.axes["sign"] == spec.axes["s"] == (None,)
    canonical = spec.to_dict()
    assert "depth" not in canonical["model"] and "sign" not in canonical["problem"]
    mixed = _spec(MIXED)  # init omitted: each family gets its own default scheme
    assert mixed.by_family["diagonal"]["init"] == ("constant",)
    assert mixed.by_family["twolayer"]["init"] == ("random",)
    given = _spec(_doc(MIXED, init={"scheme": ["constant", "random", "range"]}))
    assert given.by_family["diagonal"]["init"] == ("constant", "random")
    assert given.by_family["twolayer"]["init"] == ("random", "range")


def test_mixed_plan_keeps_the_diagonal_run_ids_and_makes_wn_for_diagonal_only():
    diagonal = make_plan(_spec(DIAGONAL))
    mixed = make_plan(_spec(_doc(MIXED, model={"width": [4, 8]})))
    by_family: dict[str, list] = {}
    families = {i.instance_id: i.family for i in mixed.instances}
    for run in mixed.runs:
        by_family.setdefault(families[run.instance_id], []).append(run)
    # the diagonal runs of a mixed sweep are exactly the runs of the diagonal sweep
    assert {r.run_id for r in by_family["diagonal"]} == diagonal.run_ids
    assert {i.instance_id for i in mixed.instances if i.family == "diagonal"} == \
        {i.instance_id for i in diagonal.instances}
    assert {r.method for r in by_family["twolayer"]} == {"gd"}
    assert sorted(r.width for r in by_family["twolayer"]) == [4, 8]
    assert all(r.L is None and r.eta_ratio is None for r in by_family["twolayer"])
    assert all(r.width is None and r.imbalance is None for r in by_family["diagonal"])
    # a twolayer instance never shares an id (or a seed) with a diagonal one
    twolayer_ids = {i.instance_id for i in mixed.instances if i.family == "twolayer"}
    assert len(twolayer_ids) == 1 and not twolayer_ids & {i.instance_id for i in diagonal.instances}
    seeds = {i.family: i.seed for i in mixed.instances}
    assert seeds["twolayer"] != seeds["diagonal"]


def _rows(doc: dict) -> tuple:
    """(plan, runs, instances) of a sweep computed in this process, every task of it."""
    plan = make_plan(_spec(doc))
    results = [run_task(task) for task in plan.tasks()]
    runs = pd.concat([r.runs.to_pandas() for r in results], ignore_index=True)
    instances = pd.concat([r.instances.to_pandas() for r in results], ignore_index=True)
    return plan, runs, instances


def test_batched_task_matches_one_run_at_a_time():
    doc = _doc(TWOLAYER, model={"width": [3, 7]}, problem={"outputs": 2},
               init={"alpha": [0.2, 0.5], "scheme": ["random", "range"], "imbalance": [0, 1.5]},
               methods={"gd": {"eta": [0.01, 0.02]}}, train={"max_iters": 400},
               output={"save_solutions": True})
    plan, runs, instances = _rows(doc)
    assert len(runs) == 2 * 2 * 2 * 2 * 2 and runs.run_id.is_unique
    inst = plan.instances[0]
    problem = model.generate_instance(6, 15, 2, inst.seed)
    P_ref = model.min_norm_solution(problem.A, problem.Y)
    assert np.array_equal(np.asarray(instances.x_star[0]), problem.X_star.ravel())
    by_id = {r.run_id: r for r in plan.runs}
    for row in runs.itertuples():
        run = by_id[row.run_id]
        U0, V0 = model.initial_weights(15, 2, run.width, run.alpha, run.init, run.imbalance,
                                          inst.seed, A=problem.A)
        config = engine.TwoLayerConfig(width=run.width, eta=run.eta, max_iters=400,
                                         tol=1e-24, checkpoints=64)
        [alone] = engine.run_batch(problem.A, problem.Y, [config], [U0], [V0])
        assert row.status == alone.status and row.iterations == alone.iterations
        np.testing.assert_allclose(np.asarray(row.x_final).reshape(15, 2), alone.product,
                                   rtol=0, atol=1e-10)
        np.testing.assert_allclose(row.curve_loss, alone.curve_loss, rtol=1e-10, atol=1e-14)
        assert list(row.curve_iter) == alone.curve_iter.tolist()
        assert row.error_min_norm == pytest.approx(model.error_min_norm(alone.product, P_ref),
                                                   rel=1e-9)
        assert row.imbalance_min == pytest.approx(alone.imbalance.lambda_min, rel=1e-9)
        assert row.imbalance_max == pytest.approx(alone.imbalance.lambda_max, rel=1e-9)
        assert row.error_truth == pytest.approx(np.linalg.norm(alone.product - problem.X_star))
    # diagonal-only columns are null; the family's parameters are set
    for col in ("error_l1", "rel_error_l1", "l1_norm", "l1_gap", "r0", "c_inf", "alpha_eff",
                "pred_status", "pred_error", "L", "sign", "eta_ratio", "schedule"):
        assert runs[col].isna().all(), col
    assert (runs.family == "twolayer").all() and (runs.outputs == 2).all()
    for col in ("bp_status", "bp_solver", "l1_norm_bp", "x_l1"):
        assert instances[col].isna().all(), col


def test_range_init_ends_at_the_minimum_norm_solution():
    doc = _doc(TWOLAYER, init={"scheme": "range", "alpha": [0.1, 0.5]},
               model={"width": [4, 40]}, output={"save_solutions": True})
    plan, runs, _ = _rows(doc)
    assert (runs.status == "converged").all()
    inst = plan.instances[0]
    problem = model.generate_instance(6, 15, 1, inst.seed)
    P_ref = np.linalg.pinv(problem.A) @ problem.Y
    for row in runs.itertuples():
        P = np.asarray(row.x_final).reshape(15, 1)
        assert np.linalg.norm(P - P_ref) / np.linalg.norm(P_ref) < 1e-6
        assert row.error_min_norm < 1e-6


def test_random_init_distance_falls_with_width():
    doc = _doc(TWOLAYER, model={"width": [5, 500]}, init={"alpha": 0.5}, trials=None)
    doc["trials"] = 5
    _, runs, _ = _rows(doc)
    assert (runs.status == "converged").all()
    median = runs.groupby("width").error_min_norm.median()
    assert median[500] < 0.3 * median[5], median  # ~ (5 / 500)^{1/2} = 0.1


def test_rate_is_higher_at_large_imbalance_than_at_zero():
    # width >= N, so that both signs of the imbalance give a positive margin
    doc = _doc(TWOLAYER, model={"width": 20}, problem={"N": 12},
               init={"imbalance": [-4, 0, 4]}, methods={"gd": {"eta": 0.005}})
    doc["trials"] = 3
    _, runs, _ = _rows(doc)
    assert (runs.status == "converged").all() and runs.rate.notna().all()
    rate = runs.groupby("imbalance").rate.median()
    assert rate[-4.0] > 1.2 * rate[0.0] and rate[4.0] > 1.2 * rate[0.0], rate
    margin = runs.groupby("imbalance").imbalance_margin.median()
    assert margin[-4.0] > margin[0.0] and margin[4.0] > margin[0.0]


@pytest.mark.slow
def test_a_mixed_folder_loads_and_reports(tmp_path: Path):
    doc = _doc(MIXED, model={"width": [4, 40]}, init={"alpha": [0.1, 0.3],
                                                      "scheme": ["constant", "random", "range"]},
               methods={"gd": {"eta": 0.02}, "wn": {"eta": 0.02, "schedule": "constant"}},
               train={"max_iters": 3000, "tol": 1e-20})
    doc["trials"] = 2
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "results"
    assert main(["run", str(path), "--executor", "serial", "--out", str(out),
                 "--no-progress"]) == 0
    runs = analysis.load(out)
    diag, two = runs[runs.family == "diagonal"], runs[runs.family == "twolayer"]
    assert len(diag) == 2 * 2 * 2 * 2 and len(two) == 2 * 2 * 2 * 2
    assert set(diag.init) == {"constant", "random"} and set(two.init) == {"random", "range"}
    assert diag.error_l1.notna().all() and diag.error_min_norm.isna().all()
    assert diag.width.isna().all() and diag.rate.isna().all() and diag.imbalance.isna().all()
    assert two.error_min_norm.notna().all() and two.error_l1.isna().all()
    assert two.L.isna().all() and two.bp_status.isna().all() and two.x_l1.isna().all()
    assert (two.outputs == 1).all() and diag.outputs.isna().all()
    report = analysis.write_report(str(out), out_dir=str(tmp_path / "report"))
    names = {p.name for p in report.figures}
    assert any(n.startswith("error_vs_alpha") for n in names)  # diagonal rows
    assert any(n.startswith("minnorm_vs_width") for n in names)  # twolayer rows
    summary = pd.read_csv(report.tables["summary_csv"])
    assert set(summary.family) == {"diagonal", "twolayer"}
    assert summary.loc[summary.family == "twolayer", "error_min_norm_median"].notna().all()
    assert BY_NAME["width"].name in summary.columns


def test_spec_hash_tells_given_schemes_from_per_family_defaults():
    omitted = _spec(MIXED)
    given = _spec(_doc(MIXED, init={"scheme": ["constant", "random"]}))
    assert omitted.axes["init"] == given.axes["init"] == ("constant", "random")
    assert omitted.by_family["diagonal"]["init"] != given.by_family["diagonal"]["init"]
    assert omitted.spec_hash != given.spec_hash
    assert make_plan(omitted).run_ids < make_plan(given).run_ids
    # one family: an omitted scheme is that family's default, the same content as giving it
    assert _spec(TWOLAYER).spec_hash == _spec(_doc(TWOLAYER, init={"scheme": "random"})).spec_hash


def test_an_instance_file_sweep_is_diagonal_with_null_twolayer_columns(tmp_path: Path):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((5, 12)) / np.sqrt(5)
    x_star = np.zeros(12)
    x_star[[1, 7]] = [1.0, 0.5]
    np.savez(tmp_path / "inst.npz", A=A, b=A @ x_star, x_star=x_star)
    doc = _doc(DIAGONAL, problem={"M": None, "N": None, "sparsity": None, "file": "inst.npz"})
    spec = parse_spec(yaml.safe_dump(doc), source="file.yaml", base_dir=str(tmp_path))
    plan = make_plan(spec)
    assert all(i.params["outputs"] is None and i.family == "diagonal" for i in plan.instances)
    runs = pd.concat([run_task(t).runs.to_pandas() for t in plan.tasks()])
    assert len(runs) == 2 and (runs.family == "diagonal").all() and runs.outputs.isna().all()
    assert runs.width.isna().all() and runs.error_min_norm.isna().all()
    assert runs.error_l1.notna().all()
