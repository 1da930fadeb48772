"""Run one task: problems -> reference -> dynamics -> metrics -> Arrow tables.

A task is pure: the same Task gives the same tables (but for ``seconds`` and ``node``) in any
process, on any worker. Random matrices are generated here from the instance seeds.
"""

from __future__ import annotations

import dataclasses
import io
import socket
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from pipeline import (dynamics, initialization, metrics, models, problems, reference, schema,
                      theory, twolayer)
from pipeline.parameters import INSTANCE_PARAMS, RUN_PARAMS
from pipeline.plan import InstanceKey, Run, Task

@dataclass
class TaskResult:
    """The two shards of one task, as Arrow tables with the shard schemas."""

    task_id: str
    runs: pa.Table
    instances: pa.Table


def load_problem(inst: InstanceKey, problem_bytes: bytes | None = None) -> problems.Instance:
    """The instance's arrays: generated from its seed, or read from its file (or the file's bytes,
    shipped by the executor to workers that do not share the driver's disk)."""
    if inst.problem_file is None:
        return problems.generate_instance(inst.M, inst.N, inst.s, inst.signed, inst.seed)
    source = io.BytesIO(problem_bytes) if problem_bytes is not None else inst.problem_file
    return problems.load_instance(source, inst.signed)


def run_task(task: Task, problem_bytes: bytes | None = None, node: str | None = None) -> TaskResult:
    """Compute every run of the task; ``node`` names the worker in the ``node`` column.

    BLAS runs single-threaded: the batched products are small enough that threads gain little,
    and parallelism comes from running one task per CPU (threads competing with other tasks'
    threads make OpenBLAS several times slower)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _run_task(task, problem_bytes, node or socket.gethostname())


def _run_task(task: Task, problem_bytes: bytes | None, node: str) -> TaskResult:
    """The task's instances go to the engine in calls of one shape and sign (``_engine_calls``);
    the rows come out in the order of ``task.instances``, each instance's runs in task order."""
    runs_by_instance: dict[str, list[Run]] = {}
    for run in task.runs:
        runs_by_instance.setdefault(run.instance_id, []).append(run)
    run_rows: dict[str, list[dict]] = {}
    instance_rows: dict[str, dict] = {}
    for inst in task.instances:  # the two-layer family: its own engine (pipeline.twolayer)
        if inst.family == "twolayer":
            instance_rows[inst.instance_id], run_rows[inst.instance_id] = _run_twolayer(
                task, inst, runs_by_instance[inst.instance_id], node)
    diagonal = tuple(inst for inst in task.instances if inst.family != "twolayer")
    for call in _engine_calls(diagonal, runs_by_instance):
        loaded = [load_problem(inst, problem_bytes) for inst in call]
        bps = [reference.basis_pursuit(problem.A, problem.b, nonneg=not inst.signed,
                                       solver=task.bp_solver)
               for inst, problem in zip(call, loaded)]
        instance_of_run, configs, w0 = [], [], []
        for k, (inst, problem) in enumerate(zip(call, loaded)):
            runs = runs_by_instance[inst.instance_id]
            instance_of_run += [k] * len(runs)
            configs += [_config(inst, r) for r in runs]
            w0 += _initial_weights(inst, problem, runs)
        results = iter(zip(w0, dynamics.run_stack([(p.A, p.b) for p in loaded],
                                                  instance_of_run, configs, w0)))
        for inst, problem, bp in zip(call, loaded, bps):
            instance_rows[inst.instance_id] = _instance_row(inst, problem, bp)
            predict = Predictions(problem, inst.signed)
            rows = run_rows[inst.instance_id] = []
            for run in runs_by_instance[inst.instance_id]:
                w, result = next(results)
                row = _run_row(task, inst, problem, bp, run, result, node)
                row.update(_prediction_columns(predict(run, w, result), result, bp,
                                               task.save_solutions))
                rows.append(row)
    meta = {schema.META_SPEC_HASH: task.spec_hash.encode(), schema.META_TASK: task.task_id.encode()}
    return TaskResult(
        task_id=task.task_id,
        runs=_table([row for inst in task.instances for row in run_rows[inst.instance_id]],
                    schema.RUNS_SCHEMA, meta),
        instances=_table([instance_rows[inst.instance_id] for inst in task.instances],
                         schema.INSTANCES_SCHEMA, meta),
    )


def _engine_calls(instances: tuple[InstanceKey, ...],
                  runs_by_instance: dict[str, list[Run]]) -> list[list[InstanceKey]]:
    """The instances of one engine call each: same (M, N, sign), at most dynamics.CALL_BYTES of
    stacked arrays (large-N instances go fewer per call), in task order within a call. Only one
    call's instances are generated at a time."""
    groups: dict[tuple[int, int, str], list[InstanceKey]] = {}
    for inst in instances:
        groups.setdefault((inst.M, inst.N, inst.sign), []).append(inst)
    calls = []
    for (M, N, sign), members in groups.items():
        counts = [len(runs_by_instance[inst.instance_id]) for inst in members]
        for part in dynamics.split_stacks(counts, M, N, sign == "signed", dynamics.CALL_BYTES):
            calls.append(members[part])
    return calls


def _config(inst: InstanceKey, run: Run) -> dynamics.RunConfig:
    """The engine settings of a run: every parameter with an ``engine`` field (its default where
    it is not the run's method's), the method and the model's sign."""
    settings = {p.engine: p.default if run.params[p.name] is None else run.params[p.name]
                for p in RUN_PARAMS if p.engine is not None}
    return dynamics.RunConfig(method=run.method, signed=inst.signed, **settings)


def _initial_weights(inst: InstanceKey, problem: problems.Instance, runs: list[Run]):
    """w0 per run; the random direction is drawn once per instance (paired design)."""
    n = models.n_trainable(problem.N, inst.signed)
    directions = {scheme: initialization.init_direction(n, scheme, inst.seed)
                  for scheme in {r.init for r in runs}}
    return [initialization.initial_weights(n, r.alpha, directions[r.init]) for r in runs]


def _instance_row(inst: InstanceKey, problem: problems.Instance, bp: reference.BasisPursuit) -> dict:
    x_star = problem.x_star
    return {
        "instance_id": inst.instance_id, "trial": inst.trial, **_instance_columns(inst, problem),
        "seed": inst.seed, "problem_file": inst.problem_file,
        "bp_solver": bp.solver, "bp_status": bp.status, "bp_seconds": bp.seconds,
        "l1_norm_bp": bp.l1_norm,
        "bp_error_truth": None if x_star is None else float(np.linalg.norm(bp.x - x_star)),
        "x_star": None if x_star is None else x_star.tolist(),
        "x_l1": bp.x.tolist(),
    }


def _run_row(task: Task, inst: InstanceKey, problem: problems.Instance,
             bp: reference.BasisPursuit, run: Run, result: dynamics.RunResult, node: str) -> dict:
    row = {
        "run_id": run.run_id, "sweep": task.sweep, "trial": inst.trial,
        "instance_id": inst.instance_id, "method": run.method,
        **_instance_columns(inst, problem),
        **{p.name: run.params[p.name] for p in RUN_PARAMS if p.column},
        "status": result.status, "iterations": result.iterations,
        "loss_final": result.loss_final,
        **metrics.solution_metrics(result.x_final, bp.x, problem.x_star),
        "r0": None, "r_final": None, "c_inf": None, "alpha_eff": None,
        "curve_iter": result.curve_iter.tolist(), "curve_loss": result.curve_loss.tolist(),
        "x_final": result.x_final.tolist() if task.save_solutions else None,
        "seconds": result.seconds, "node": node,
        **{name: None for name in schema.TWOLAYER_RUN_COLUMNS},
    }
    if run.method == "wn":
        row.update(metrics.wn_metrics(run.alpha, run.eta_ratio, result.r0, result.r_final))
    return row


def _instance_columns(inst: InstanceKey, problem: problems.Instance) -> dict:
    """The instance parameters' columns; M, N and s as the instance's arrays have them (for an
    instance file, s counts the nonzeros of its x_star)."""
    return {**{p.name: inst.params[p.name] for p in INSTANCE_PARAMS if p.column},
            "M": problem.M, "N": problem.N, "s": problem.s}


# --------------------------------------------------------------------- the two-layer family

#: The most runs of one two-layer instance per engine call (their initial weights are held at
#: once; ``twolayer.run_batch`` advances them in cache-sized chunks of one width).
TWOLAYER_CALL_RUNS = 256


def _twolayer_config(run: Run) -> twolayer.TwoLayerConfig:
    """The engine settings of a two-layer run: its width, and every parameter with an ``engine``
    field that the two-layer engine takes (eta, max_iters, tol, checkpoints)."""
    takes = {f.name for f in dataclasses.fields(twolayer.TwoLayerConfig)}
    settings = {p.engine: run.params[p.name] for p in RUN_PARAMS
                if p.engine in takes and p.applies_to_family("twolayer")}
    return twolayer.TwoLayerConfig(width=run.width, **settings)


def _twolayer_weights(inst: InstanceKey, A: np.ndarray, K: int,
                      runs: list[Run]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(U0s, V0s): U0 (N, width) and V0 (K, width) per run, from the instance seed, so that the
    runs of one instance and width share one Gaussian draw across alpha, imbalance and scheme
    (paired design; ``twolayer.initial_weights``)."""
    pairs = [twolayer.initial_weights(inst.N, K, r.width, r.alpha, r.init, r.imbalance,
                                      inst.seed, A=A) for r in runs]
    return [U for U, _ in pairs], [V for _, V in pairs]


def _run_twolayer(task: Task, inst: InstanceKey, runs: list[Run],
                  node: str) -> tuple[dict, list[dict]]:
    """The instance row and the run rows of one two-layer instance: the instance from its seed
    (``twolayer.generate_instance``), the reference P* = A^+ Y, every run through the batched
    engine (``twolayer.run_batch``, TWOLAYER_CALL_RUNS runs per call). Diagonal-only columns
    are null."""
    K = inst.params["outputs"]
    problem = twolayer.generate_instance(inst.M, inst.N, K, inst.seed, sparsity=inst.s)
    A, Y, X_star = problem.A, problem.Y, problem.X_star
    P_ref = twolayer.min_norm_solution(A, Y)
    instance_row = {
        "instance_id": inst.instance_id, "trial": inst.trial,
        **_twolayer_instance_columns(inst), "seed": inst.seed, "problem_file": None,
        "bp_solver": None, "bp_status": None, "bp_seconds": None, "l1_norm_bp": None,
        "bp_error_truth": None, "x_star": X_star.ravel().tolist(), "x_l1": None,
    }
    rows: list[dict] = []
    for start in range(0, len(runs), TWOLAYER_CALL_RUNS):
        batch = runs[start:start + TWOLAYER_CALL_RUNS]
        U0s, V0s = _twolayer_weights(inst, A, K, batch)
        results = twolayer.run_batch(A, Y, [_twolayer_config(r) for r in batch], U0s, V0s)
        rows += [_twolayer_row(task, inst, run, result, P_ref, X_star, node)
                 for run, result in zip(batch, results)]
    return instance_row, rows


def _twolayer_instance_columns(inst: InstanceKey) -> dict:
    return {p.name: inst.params[p.name] for p in INSTANCE_PARAMS if p.column}


def _twolayer_row(task: Task, inst: InstanceKey, run: Run, result: twolayer.TwoLayerResult,
                  P_ref: np.ndarray, X_star: np.ndarray, node: str) -> dict:
    """One run row: P = U V^T (N, K) against P* (N, K) and X* (N, K); nulls for diagonal-only
    columns; ``rate`` null where the curve cannot be fitted (diverged, too few points)."""
    P = result.product
    with np.errstate(over="ignore", invalid="ignore"):
        error_min_norm = twolayer.error_min_norm(P, P_ref)
        error_truth = float(np.linalg.norm(P - X_star))
    return {
        "run_id": run.run_id, "sweep": task.sweep, "trial": inst.trial,
        "instance_id": inst.instance_id, "method": run.method,
        **_twolayer_instance_columns(inst),
        **{p.name: run.params[p.name] for p in RUN_PARAMS if p.column},
        "status": result.status, "iterations": result.iterations,
        "loss_final": result.loss_final,
        **{name: None for name in schema.DIAGONAL_RUN_COLUMNS},
        "error_truth": error_truth,
        "curve_iter": result.curve_iter.tolist(), "curve_loss": result.curve_loss.tolist(),
        "x_final": P.ravel().tolist() if task.save_solutions else None,
        "seconds": result.seconds, "node": node,
        "error_min_norm": error_min_norm,
        "rate": result.rate if np.isfinite(result.rate) else None,
        "imbalance_min": result.imbalance.lambda_min,
        "imbalance_max": result.imbalance.lambda_max,
        "imbalance_margin": result.imbalance.margin,
    }


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


def _prediction_columns(pred: theory.Prediction, result: dynamics.RunResult,
                        bp: reference.BasisPursuit, save_solutions: bool) -> dict:
    """The theory overlay's columns of one run (nulls but the status when the solve failed)."""
    row = {"pred_status": pred.status, "pred_error": None, "pred_l1_gap": None,
           "pred_rel_error_l1": None, "x_pred": None}
    if pred.status in theory.USABLE:
        row.update(theory.prediction_metrics(result.x_final, pred.x, bp.x))
        row["pred_rel_error_l1"] = metrics.solution_metrics(pred.x, bp.x, None)["rel_error_l1"]
        row["x_pred"] = pred.x.tolist() if save_solutions else None
    return row


def _table(rows: list[dict], table_schema: pa.Schema, meta: dict[bytes, bytes]) -> pa.Table:
    columns = {name: [row[name] for row in rows] for name in table_schema.names}
    return pa.Table.from_pydict(columns, schema=schema.with_metadata(table_schema, meta))
