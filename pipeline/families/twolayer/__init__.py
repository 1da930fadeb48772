"""The two-layer family: single-hidden-layer linear networks P = U V^T trained by GD, compared
with the minimum-norm solution A^+ Y (Min et al. 2021; docs/MODEL.md, "The two-layer family").

``model``: instances, initialization, imbalance, the forward and backward passes; ``engine``:
batched GD; ``run`` ties them into ``Family.run``.
"""

from __future__ import annotations

from pipeline.families.base import (EFFECTIVE_FLOPS, ENTRY_SECONDS, STEP_OVERHEAD_SECONDS, Family,
                                    RunContext, at_most)
from pipeline.families.twolayer.model import SCHEMES
from pipeline.parameter import Param

PARAMS = (
    Param("outputs", "problem", "outputs", "int", "outputs K (columns of X* and Y)", default=1,
          ge=1, scope="instance", generated=True, identity="unless_default", slot=110),
    Param("width", "model", "width", "int", "the hidden width h", ge=1,
          identity="unless_default", slot=120),
    Param("imbalance", "init", "imbalance", "float", "the layer imbalance lambda: U0 scaled by "
          "e^{lambda/2}, V0 by e^{-lambda/2}", default=0.0, identity="unless_default", slot=130),
)


def _spawn_key(params: dict, trial: int, file_code: int | None) -> tuple[int, ...]:
    """(2, M, N, s or 0, outputs, trial). A contract: changing it changes every stored instance."""
    return (2, params["M"], params["N"], params["s"] or 0, params["outputs"], trial)


def _cost(inst, runs) -> float:
    """Per run-step: the two GEMMs with A (4 M N K flops), U V^T and the two gradients
    (6 N K h flops) and the element-wise passes over its (N + K) h weights; per step of each
    width's engine call, the fixed overhead."""
    K = inst.params.get("outputs") or 1
    seconds = sum(r.max_iters * ((4.0 * inst.M * inst.N * K + 6.0 * inst.N * K * r.width)
                                 / EFFECTIVE_FLOPS + (inst.N + K) * r.width * ENTRY_SECONDS)
                  for r in runs)
    widths = {r.width for r in runs}
    steps = sum(max(r.max_iters for r in runs if r.width == w) for w in widths)
    return seconds + steps * STEP_OVERHEAD_SECONDS


def _run(context: RunContext, instances, runs_by_instance):
    from pipeline.families.twolayer.run import run_instances

    return run_instances(context, instances, runs_by_instance)


FAMILY = Family(
    name="twolayer",
    summary="single-hidden-layer linear networks, GD, against the minimum-norm solution A^+ Y",
    reference="reference A^+ Y, no basis-pursuit solve",
    params=PARAMS,
    overrides=(("init", SCHEMES, "random"), ("s", (), None)),
    methods={"gd": "GD"},
    seed_codes=(2,),
    spawn_key=_spawn_key,
    run_columns=(("error_min_norm", "float"), ("rate", "float"), ("imbalance_min", "float"),
                 ("imbalance_max", "float"), ("imbalance_margin", "float")),
    summary_columns=("error_min_norm", "rate", "imbalance_margin"),
    check=at_most("s", "N", "problem.sparsity"),
    cost=_cost,
    run=_run,
)
