"""The diagonal family's computation: instances and runs in, rows out (``Family.run``).

Per engine call (instances of one shape and sign, ``engine_calls``): the instances' arrays from
their seeds (or the instance file), one basis-pursuit solve each, every run of the call through
the stacked engine (``dynamics.run_stack``), then each run's metrics against the basis-pursuit
solution and its predicted gradient-flow limit (``theory``). Only one call's instances are held
at a time. Random matrices are generated here, from the instance seeds.
"""

from __future__ import annotations

import io
from typing import Iterator

import numpy as np

from pipeline.families.base import RunContext
from pipeline.families.diagonal import (
    dynamics,
    effective,
    initialization,
    metrics,
    models,
    problems,
    reference,
    theory,
)
from pipeline.parameters import RUN_PARAMS
from pipeline.plan import InstanceKey, Run


def is_signed(inst: InstanceKey) -> bool:
    return inst.params["sign"] == "signed"


def load_problem(inst: InstanceKey, problem_bytes: bytes | None = None) -> problems.Instance:
    """The instance's arrays: generated from its seed, or read from its file (or the file's bytes,
    shipped by the executor to workers that do not share the driver's disk)."""
    if inst.problem_file is None:
        return problems.generate_instance(inst.M, inst.N, inst.s, is_signed(inst), inst.seed,
                                          noise=inst.params.get("noise") or 0.0)
    source = io.BytesIO(problem_bytes) if problem_bytes is not None else inst.problem_file
    return problems.load_instance(source, is_signed(inst))


def run_instances(context: RunContext, instances: list[InstanceKey],
                  runs_by_instance: dict[str, list[Run]]) -> Iterator[tuple[str, dict, list[dict]]]:
    """``Family.run`` of the diagonal family (module docstring)."""
    for call in engine_calls(instances, runs_by_instance):
        loaded = [load_problem(inst, context.problem_bytes) for inst in call]
        bps = [reference.basis_pursuit(problem.A, problem.b, nonneg=not is_signed(inst),
                                       solver=context.reference_solver)
               for inst, problem in zip(call, loaded)]
        instance_of_run, configs, w0 = [], [], []
        for k, (inst, problem) in enumerate(zip(call, loaded)):
            runs = runs_by_instance[inst.instance_id]
            instance_of_run += [k] * len(runs)
            configs += [engine_config(inst, r) for r in runs]
            w0 += initial_weights(inst, problem, runs)
        results = iter(zip(w0, dynamics.run_stack([(p.A, p.b) for p in loaded],
                                                  instance_of_run, configs, w0,
                                                  truths=[p.x_star for p in loaded])))
        for inst, problem, bp in zip(call, loaded, bps):
            predict = Predictions(problem, is_signed(inst))
            rows = []
            for run in runs_by_instance[inst.instance_id]:
                w, result = next(results)
                row = run_row(problem, bp, run, result, context.save_solutions)
                row.update(prediction_columns(predict(run, w, result), result, bp,
                                              context.save_solutions))
                row.update(discrete_columns(problem, run, w, result, is_signed(inst),
                                            context.save_solutions))
                rows.append(row)
            yield inst.instance_id, instance_row(problem, bp), rows


def engine_calls(instances: list[InstanceKey],
                 runs_by_instance: dict[str, list[Run]]) -> list[list[InstanceKey]]:
    """The instances of one engine call each: same (M, N, sign), at most dynamics.CALL_BYTES of
    stacked arrays (large-N instances go fewer per call), in task order within a call."""
    groups: dict[tuple[int, int, str], list[InstanceKey]] = {}
    for inst in instances:
        groups.setdefault((inst.M, inst.N, inst.sign), []).append(inst)
    calls = []
    for (M, N, sign), members in groups.items():
        counts = [len(runs_by_instance[inst.instance_id]) for inst in members]
        for part in dynamics.split_stacks(counts, M, N, sign == "signed", dynamics.CALL_BYTES):
            calls.append(members[part])
    return calls


def engine_config(inst: InstanceKey, run: Run) -> dynamics.RunConfig:
    """The engine settings of a run: its method, the model's sign, and every run parameter that
    names an ``engine`` field and has a value (a WN-GD parameter is null for a GD run: the
    engine's own default stands in, unused)."""
    settings = {p.engine: run.params[p.name] for p in RUN_PARAMS
                if p.engine is not None and p.applies_to_family("diagonal")
                and run.params[p.name] is not None}
    return dynamics.RunConfig(method=run.method, signed=is_signed(inst),
                              seed=stream_seed(run.run_id), **settings)


def stream_seed(run_id: str) -> int:
    """The seed of a run's own stream (mini-batches, label noise): the hash its id ends with, so
    the stream depends on the run's identity alone."""
    return int(run_id[-20:], 16)


def initial_weights(inst: InstanceKey, problem: problems.Instance, runs: list[Run]):
    """w0 per run; the random direction is drawn once per instance (paired design)."""
    n = models.n_trainable(problem.N, is_signed(inst))
    directions = {scheme: initialization.init_direction(n, scheme, inst.seed)
                  for scheme in {r.init for r in runs}}
    return [initialization.initial_weights(n, r.alpha, directions[r.init]) for r in runs]


def instance_row(problem: problems.Instance, bp: reference.BasisPursuit) -> dict:
    """The instance's columns: M, N and s as its arrays have them (for an instance file, s counts
    the nonzeros of its x_star), the reference and x*."""
    x_star = problem.x_star
    return {
        "M": problem.M, "N": problem.N, "s": problem.s,
        "bp_solver": bp.solver, "bp_status": bp.status, "bp_seconds": bp.seconds,
        "l1_norm_bp": bp.l1_norm,
        "bp_error_truth": None if x_star is None else float(np.linalg.norm(bp.x - x_star)),
        "x_star": None if x_star is None else x_star.tolist(),
        "x_l1": bp.x.tolist(),
    }


def run_row(problem: problems.Instance, bp: reference.BasisPursuit, run: Run,
            result: dynamics.RunResult, save_solutions: bool) -> dict:
    row = {
        "M": problem.M, "N": problem.N, "s": problem.s,
        "status": result.status, "iterations": result.iterations,
        "loss_final": result.loss_final,
        **metrics.solution_metrics(result.x_final, bp.x, problem.x_star),
        "curve_iter": result.curve_iter.tolist(), "curve_loss": result.curve_loss.tolist(),
        **early_stopping(result),
        "x_final": result.x_final.tolist() if save_solutions else None,
        "seconds": result.seconds,
    }
    if run.method == "wn":
        row.update(metrics.wn_metrics(run.alpha, run.eta_ratio, result.r0, result.r_final))
    return row


class Predictions:
    """Predicted gradient-flow limits of the runs of one instance (docs/MODEL.md, "Predicted
    gradient-flow limits"). A GD run's limit depends on its initial weights alone: one solve per
    distinct (L, init, alpha), shared by runs that differ only in eta. A WN-GD run's is the plain
    flow's from w0 e^{-C_inf}: one solve per run, from its own r_0, r_T and eta~."""

    def __init__(self, problem: problems.Instance, signed: bool):
        self.problem, self.signed = problem, signed
        self._shared: dict[tuple, theory.Prediction] = {}

    def __call__(self, run: Run, w0: np.ndarray, result: dynamics.RunResult) -> theory.Prediction:
        A, b = self.problem.A, self.problem.b
        if run.method == "wn":
            log_scale = theory.wn_log_scale(result.r0, result.r_final, run.eta_ratio)
            return theory.predicted_limit(A, b, w0, run.L, self.signed, log_scale=log_scale)
        key = (run.L, run.init, run.alpha)
        if key not in self._shared:
            self._shared[key] = theory.predicted_limit(A, b, w0, run.L, self.signed)
        return self._shared[key]


def prediction_columns(pred: theory.Prediction, result: dynamics.RunResult,
                       bp: reference.BasisPursuit, save_solutions: bool) -> dict:
    """The theory overlay's columns of one run (nulls but the status when the solve failed)."""
    row = {"pred_status": pred.status, "pred_error": None, "pred_l1_gap": None,
           "pred_rel_error_l1": None, "x_pred": None}
    if pred.status in theory.USABLE:
        row.update(theory.prediction_metrics(result.x_final, pred.x, bp.x))
        row["pred_rel_error_l1"] = metrics.solution_metrics(pred.x, bp.x, None)["rel_error_l1"]
        row["x_pred"] = pred.x.tolist() if save_solutions else None
    return row


def early_stopping(result: dynamics.RunResult) -> dict:
    """The error to x* along the loss curve's checkpoints, its minimum (the error of the run
    stopped at the best checkpoint) and where it occurs; nulls without x*."""
    curve = result.curve_error_truth
    finite = None if curve is None else np.flatnonzero(np.isfinite(curve))
    if curve is None or finite.size == 0:
        return {"curve_error_truth": None if curve is None else curve.tolist(),
                "error_truth_min": None, "iter_at_error_truth_min": None}
    best = finite[np.argmin(curve[finite])]
    return {"curve_error_truth": curve.tolist(), "error_truth_min": float(curve[best]),
            "iter_at_error_truth_min": int(result.curve_iter[best])}


def discrete_columns(problem: problems.Instance, run: Run, w0: np.ndarray,
                     result: dynamics.RunResult, signed: bool, save_solutions: bool) -> dict:
    """GD's effective initialization (``effective``) and ``pred_discrete_error``, the distance
    of x_T to the flow's limit from it: GD runs that did not diverge; else nulls."""
    row = {"log_shrink_l1": None, "shrink_factor": None, "w_eff": None,
           "pred_discrete_error": None}
    if result.residual_sum is None or result.status == "diverged":
        return row
    shrink = effective.log_shrink(problem.A, w0, result.w_final, result.residual_sum, signed,
                                  run.L)
    if shrink is None:
        return row
    w_eff = w0 * np.exp(shrink)
    row.update(effective.summary(shrink))
    row["w_eff"] = w_eff.tolist() if save_solutions else None
    pred = theory.predicted_limit(problem.A, problem.b, w_eff, run.L, signed)
    if pred.status in theory.USABLE:
        norm = float(np.linalg.norm(pred.x))
        if norm > 0:
            row["pred_discrete_error"] = float(np.linalg.norm(result.x_final - pred.x)) / norm
    return row
