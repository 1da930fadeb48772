"""The two-layer family's computation: instances and runs in, rows out (``Family.run``).

Per instance: (A, Y, X*) from its seed (``model.generate_instance``), the reference P* = A^+ Y,
then its runs through the batched engine (``engine.run_batch``), ``CALL_RUNS`` runs per call.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from pipeline.families.base import RunContext
from pipeline.families.twolayer import engine, model
from pipeline.parameters import RUN_PARAMS
from pipeline.plan import InstanceKey, Run

#: The most runs of one instance per engine call (their initial weights are held at once;
#: ``engine.run_batch`` advances them in cache-sized chunks of one width).
CALL_RUNS = 256


def run_instances(context: RunContext, instances: list[InstanceKey],
                  runs_by_instance: dict[str, list[Run]]) -> Iterator[tuple[str, dict, list[dict]]]:
    """``Family.run`` of the two-layer family (module docstring)."""
    for inst in instances:
        runs = runs_by_instance[inst.instance_id]
        K = inst.params["outputs"]
        problem = model.generate_instance(inst.M, inst.N, K, inst.seed, sparsity=inst.s)
        A, Y, X_star = problem.A, problem.Y, problem.X_star
        P_ref = model.min_norm_solution(A, Y)
        rows: list[dict] = []
        for start in range(0, len(runs), CALL_RUNS):
            batch = runs[start:start + CALL_RUNS]
            U0s, V0s = initial_weights(inst, A, K, batch)
            results = engine.run_batch(A, Y, [engine_config(r) for r in batch], U0s, V0s)
            rows += [run_row(result, P_ref, X_star, context.save_solutions) for result in results]
        yield inst.instance_id, {"x_star": X_star.ravel().tolist()}, rows


def engine_config(run: Run) -> engine.TwoLayerConfig:
    """The engine settings of a run: its width, and every run parameter of this family that
    names an ``engine`` field (eta, max_iters, tol, checkpoints)."""
    takes = {f.name for f in dataclasses.fields(engine.TwoLayerConfig)}
    settings = {p.engine: run.params[p.name] for p in RUN_PARAMS
                if p.engine in takes and p.applies_to_family("twolayer")}
    return engine.TwoLayerConfig(width=run.width, **settings)


def initial_weights(inst: InstanceKey, A: np.ndarray, K: int,
                    runs: list[Run]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(U0s, V0s): U0 (N, width) and V0 (K, width) per run, from the instance seed, so that the
    runs of one instance and width share one Gaussian draw across alpha, imbalance and scheme
    (paired design; ``model.initial_weights``)."""
    pairs = [model.initial_weights(inst.N, K, r.width, r.alpha, r.init, r.imbalance,
                                   inst.seed, A=A) for r in runs]
    return [U for U, _ in pairs], [V for _, V in pairs]


def run_row(result: engine.TwoLayerResult, P_ref: np.ndarray, X_star: np.ndarray,
            save_solutions: bool) -> dict:
    """One run's columns: P = U V^T (N, K) against P* (N, K) and X* (N, K); ``rate`` null where
    the curve cannot be fitted (diverged, too few points)."""
    P = result.product
    with np.errstate(over="ignore", invalid="ignore"):
        error_min_norm = model.error_min_norm(P, P_ref)
        error_truth = float(np.linalg.norm(P - X_star))
    return {
        "status": result.status, "iterations": result.iterations,
        "loss_final": result.loss_final, "error_truth": error_truth,
        "curve_iter": result.curve_iter.tolist(), "curve_loss": result.curve_loss.tolist(),
        "x_final": P.ravel().tolist() if save_solutions else None,
        "seconds": result.seconds,
        "error_min_norm": error_min_norm,
        "rate": result.rate if np.isfinite(result.rate) else None,
        "imbalance_min": result.imbalance.lambda_min,
        "imbalance_max": result.imbalance.lambda_max,
        "imbalance_margin": result.imbalance.margin,
    }
