"""Build a results folder from plain dict rows, so analysis tests know every value.

Shards are real Parquet files written with ``pipeline.results.schema``'s schemas (spec hash in the
metadata), split over ``n_shards`` files; instance rows are duplicated across shards the way a
resumed run leaves them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.results.schema import (
    INSTANCES_SCHEMA,
    META_SPEC_HASH,
    META_TASK,
    META_VERSION,
    RUNS_SCHEMA,
    with_metadata,
)

SPEC_HASH = "synthhash0123"

RUN_DEFAULTS: dict[str, Any] = {
    "sweep": "synth",
    "trial": 0,
    "method": "gd",
    "sign": "nonneg",
    "M": 10,
    "N": 20,
    "s": 2,
    "L": 2,
    "init": "constant",
    "alpha": 0.1,
    "eta": 0.01,
    "max_iters": 1000,
    "tol": 1e-12,
    "status": "converged",
    "iterations": 100,
    "loss_final": 1e-13,
    "error_l1": 1e-2,
    "l1_norm": 1.0,
    "l1_gap": 0.0,
    "curve_iter": [0, 1, 10, 100],
    "curve_loss": [1.0, 0.1, 1e-3, 1e-13],
    "seconds": 0.01,
    "node": "testhost",
}


def run_row(**kw: Any) -> dict[str, Any]:
    """A runs row: ``RUN_DEFAULTS`` overridden by ``kw``.

    Defaults: ``instance_id = "i<trial>-s<s>"``; ``rel_error_l1 = error_l1`` (||x_l1|| = 1);
    WN rows get ``eta_ratio = 1``, ``schedule = "constant"``; ``run_id`` hashes the parameters.
    """
    row = {**RUN_DEFAULTS, **kw}
    row.setdefault("instance_id", f"i{row['trial']}-s{row['s']}")
    row.setdefault("rel_error_l1", row["error_l1"])
    if row["method"] == "wn":
        row.setdefault("eta_ratio", 1.0)
        row.setdefault("schedule", "constant")
    if "run_id" not in row:
        key = json.dumps({k: row[k] for k in sorted(row) if "curve" not in k}, default=str)
        row["run_id"] = hashlib.sha1(key.encode()).hexdigest()[:16]
    return row


def instance_row(instance_id: str, trial: int = 0, **kw: Any) -> dict[str, Any]:
    """An instances row with known reference values (``l1_norm_bp = 1``)."""
    row = {
        "instance_id": instance_id,
        "trial": trial,
        "M": 10,
        "N": 20,
        "s": 2,
        "sign": "nonneg",
        "seed": 1000 + trial,
        "problem_file": None,
        "bp_solver": "HIGHS",
        "bp_status": "optimal",
        "bp_seconds": 0.5,
        "l1_norm_bp": 1.0,
        "bp_error_truth": 1e-9,
        "x_star": [1.0, 0.0],
        "x_l1": [1.0, 0.0],
    }
    row.update(kw)
    return row


def instances_for(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One instance row per distinct instance_id of ``runs``."""
    seen: dict[str, dict] = {}
    for r in runs:
        if r["instance_id"] not in seen:
            seen[r["instance_id"]] = instance_row(r["instance_id"], r["trial"], s=r["s"])
    return list(seen.values())


def _chunks(rows: list, n: int) -> list[list]:
    """``rows`` split into ``min(n, len(rows))`` contiguous, nearly equal, non-empty chunks."""
    n = max(1, min(n, len(rows)))
    bounds = [round(i * len(rows) / n) for i in range(n + 1)]
    return [rows[a:b] for a, b in zip(bounds, bounds[1:])]


def _write(path: Path, rows: list[dict], schema: pa.Schema, task: int) -> None:
    meta = {META_SPEC_HASH: SPEC_HASH.encode(), META_VERSION: b"0.1.0", META_TASK: str(task).encode()}
    table = pa.Table.from_pylist(rows, schema=with_metadata(schema, meta))
    pq.write_table(table, path)


def write_results(
    root: str | Path,
    runs: list[dict[str, Any]],
    instances: list[dict[str, Any]] | None = None,
    n_shards: int = 2,
    duplicate_instances: bool = True,
    manifest: dict | None = None,
    sweep_yaml: str | None = "name: synth\n",
) -> Path:
    """Write ``<root>/runs/part-*.parquet`` and ``<root>/instances/part-*.parquet`` (+ manifest).

    ``instances`` defaults to ``instances_for(runs)``. With ``duplicate_instances`` every instance
    shard after the first also repeats the first instance row.
    """
    root = Path(root)
    (root / "runs").mkdir(parents=True, exist_ok=True)
    (root / "instances").mkdir(parents=True, exist_ok=True)
    instances = instances_for(runs) if instances is None else instances
    for t, chunk in enumerate(_chunks(list(runs), n_shards)):
        _write(root / "runs" / f"part-{t:05d}.parquet", chunk, RUNS_SCHEMA, t)
    for t, chunk in enumerate(_chunks(list(instances), n_shards)):
        if duplicate_instances and t > 0 and instances:
            chunk = [instances[0], *chunk]
        _write(root / "instances" / f"part-{t:05d}.parquet", chunk, INSTANCES_SCHEMA, t)
    manifest = {
        "spec_hash": SPEC_HASH,
        "version": "0.1.0",
        "git_commit": "deadbeef",
        "host": "testhost",
    } if manifest is None else manifest
    (root / "manifest.json").write_text(json.dumps(manifest))
    if sweep_yaml is not None:
        (root / "sweep.yaml").write_text(sweep_yaml)
    return root


def grid_runs(
    alphas: Iterable[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    s_values: Iterable[int] = (2, 4),
    Ls: Iterable[int] = (2, 3),
    eta_ratios: Iterable[float] = (0.1, 1.0),
    trials: int = 2,
) -> list[dict[str, Any]]:
    """A full paired grid with closed-form errors (``rel_error_l1 = error_l1``):

    GD:  error = alpha * s * 1e-2 * (1 + 0.1 * trial)
    WN:  error = GD error * eta_ratio      (so the paired ratio is 1 / eta_ratio)
         alpha_eff = alpha * eta_ratio
    Theory overlay (both): pred_status ok, pred_rel_error_l1 = error / 2, pred_error = alpha / 10,
         pred_l1_gap = 0.
    Loss curves: [1, 0.1, 1e-3, 1e-13] at iterations [0, 1, 10, 100] (WN: at [0, 1, 5, 50]).
    """
    rows = []
    for L in Ls:
        for s in s_values:
            for a in alphas:
                for t in range(trials):
                    e = a * s * 1e-2 * (1 + 0.1 * t)
                    pred = {"pred_status": "ok", "pred_error": a / 10, "pred_l1_gap": 0.0}
                    rows.append(run_row(method="gd", L=L, s=s, alpha=a, trial=t, error_l1=e,
                                        pred_rel_error_l1=e / 2, **pred))
                    for r in eta_ratios:
                        rows.append(
                            run_row(
                                method="wn", L=L, s=s, alpha=a, trial=t, eta_ratio=r,
                                error_l1=e * r, alpha_eff=a * r, r0=1.0, r_final=2.0,
                                c_inf=-math.log(r), curve_iter=[0, 1, 5, 50],
                                pred_rel_error_l1=e * r / 2, **pred,
                            )
                        )
    return rows
