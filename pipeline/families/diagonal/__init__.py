"""The diagonal family: diagonal linear networks x~ = w^L (nonneg) or u^L - v^L (signed), trained
by GD and by weight-normalized GD, compared with the basis-pursuit (minimum-l1) solution and with
the predicted gradient-flow limit (docs/MODEL.md). The default family.

The folder holds its numerics, none of which imports Ray or pyarrow: ``problems`` (instances),
``models`` (the product map and its gradient), ``initialization``, ``dynamics`` and ``kernels``
(the stacked engine), ``reference`` (basis pursuit, cvxpy), ``theory`` (predicted limits),
``metrics``; ``run`` ties them into ``Family.run``.
"""

from __future__ import annotations

from pipeline.families.base import (EFFECTIVE_FLOPS, ENTRY_SECONDS, Family, RunContext,
                                    at_most)
from pipeline.families.diagonal.dynamics import SCHEDULES
from pipeline.families.diagonal.initialization import SCHEMES
from pipeline.families.diagonal.models import SIGNS
from pipeline.parameter import Param

#: Planned seconds of one basis-pursuit solve (cvxpy + HiGHS: 3-13 ms at (40, 100), ~1.6 s at
#: (200, 1000) signed): an upper estimate at the shapes sweeps use.
BP_SECONDS = 0.05
#: The sign's part of an instance's seed (seed contract, see ``_spawn_key``).
_SIGN_CODE = {"nonneg": 0, "signed": 1}

PARAMS = (
    Param("sign", "problem", "sign", "str", "the model: nonneg x~ = w^L, signed x~ = u^L - v^L",
          default="nonneg", choices=SIGNS, scope="instance", slot=5),
    Param("L", "model", "depth", "int", "the depth L", ge=2, engine="depth", slot=35),
    Param("eta_ratio", "methods", "eta_ratio", "float", "WN-GD's learning-rate ratio eta_r / eta_u",
          default=1.0, gt=0, methods=("wn",), engine="eta_ratio", slot=65),
    # Required since wnsweep 0.4: its former default, constant, is unstable at small alpha
    # (docs/MODEL.md), and a new default would silently change what an existing file means.
    Param("schedule", "methods", "schedule", "str", "WN-GD's step schedule",
          choices=SCHEDULES, methods=("wn",), engine="schedule", slot=66,
          hint="normalized is stable at every alpha; constant (the default before wnsweep 0.4, "
          "unstable at small alpha) keeps the run ids of sweep files written without the key"),
    # wnsweep 0.5: noisy measurements, mini-batches and label noise (docs/MODEL.md, "Problem
    # instances" and "Stochastic steps"); their defaults are the noiseless full-batch method.
    Param("noise", "problem", "noise", "float", "the standard deviation sigma of the measurement "
          "noise, b = A x* + sigma xi", default=0.0, ge=0, scope="instance", generated=True,
          identity="unless_default"),
    Param("batch", "methods", "batch", "int", "rows of A per step (SGD); omitted: all M",
          default=None, ge=1, methods=("gd", "wn"), engine="batch", identity="unless_default"),
    Param("label_noise", "methods", "label_noise", "float", "the standard deviation delta of the "
          "label noise added to b at every step", default=0.0, ge=0, methods=("gd", "wn"),
          engine="label_noise", identity="unless_default"),
)


def _check(axes: dict[str, tuple]) -> tuple[str, str] | None:
    """s <= M; and, given a method's axes (``method`` among them), its batch <= M."""
    method = axes.get("method", ("gd",))[0]
    return (at_most("s", "M", "problem.sparsity")(axes)
            or at_most("batch", "M", f"methods.{method}.batch")(axes))


def _spawn_key(params: dict, trial: int, file_code: int | None) -> tuple[int, ...]:
    """A generated instance's seed key is (0, M, N, s, sign, trial), a file instance's
    (1, file hash, sign, trial). A contract: changing it changes every stored instance."""
    sign = _SIGN_CODE[params["sign"]]
    if file_code is not None:
        return (1, file_code, sign, trial)
    return (0, params["M"], params["N"], params["s"], sign, trial)


def run_step_seconds(M: int, N: int, signed: bool) -> float:
    """Estimated seconds of one step of one run in a stack (its share of a step's fixed cost
    aside): its two products with A and its element-wise passes. About twice the engine's
    measured time (0.7-0.9 us per run-step at (40, 100)): an upper bound."""
    n = 2 * N if signed else N
    return 4.0 * M * N / EFFECTIVE_FLOPS + n * ENTRY_SECONDS


#: Seconds per normal drawn for label noise (M per step of a run; numpy's ziggurat ~9 ns, with
#: the block's copy; benchmarks/stochastic.py).
NORMAL_SECONDS = 1.5e-8
#: Planned seconds of a GD run's own predicted-limit solve (from its effective initialization,
#: ``pred_discrete_error``; 1-5 ms at (40, 100), benchmarks/theory.py): an upper estimate.
PREDICTION_SECONDS = 0.01


def _cost(inst, runs) -> float:
    """A basis-pursuit solve plus the instance's runs in a stack, each to its max_iters (label
    noise adds its draws; a mini-batch step costs a full step: both products are computed),
    and each GD run's predicted limit from its effective initialization."""
    iterations = sum(r.max_iters for r in runs)
    noisy = sum(r.max_iters for r in runs if (r.params.get("label_noise") or 0) > 0)
    gd_runs = sum(1 for r in runs if r.method == "gd")
    return (BP_SECONDS + iterations * run_step_seconds(inst.M, inst.N, inst.sign == "signed")
            + noisy * inst.M * NORMAL_SECONDS + gd_runs * PREDICTION_SECONDS)


def _quiet() -> None:
    from pipeline.families.diagonal.reference import silence_highs_banner  # cvxpy, highspy

    silence_highs_banner()


def _run(context: RunContext, instances, runs_by_instance):
    from pipeline.families.diagonal.run import run_instances  # the engine: numba, cvxpy

    return run_instances(context, instances, runs_by_instance)


FAMILY = Family(
    name="diagonal",
    summary="diagonal linear networks, GD and WN-GD, against basis pursuit (minimum l1)",
    reference="one basis-pursuit solve each",
    params=PARAMS,
    overrides=(("init", SCHEMES, "constant"),),
    methods={"gd": "GD", "wn": "WN-GD"},
    seed_codes=(0, 1),
    spawn_key=_spawn_key,
    instance_columns=(("bp_solver", "str"), ("bp_status", "str"), ("bp_seconds", "float"),
                      ("l1_norm_bp", "float"), ("bp_error_truth", "float"),
                      ("x_l1", "float_list")),
    run_columns=(("error_l1", "float"), ("rel_error_l1", "float"), ("l1_norm", "float"),
                 ("l1_gap", "float"), ("r0", "float"), ("r_final", "float"), ("c_inf", "float"),
                 ("alpha_eff", "float"), ("pred_status", "str"), ("pred_error", "float"),
                 ("pred_l1_gap", "float"), ("pred_rel_error_l1", "float"),
                 ("x_pred", "float_list"), ("curve_error_truth", "float_list"),
                 ("error_truth_min", "float"), ("iter_at_error_truth_min", "int"),
                 ("log_shrink_l1", "float"), ("shrink_factor", "float"), ("w_eff", "float_list"),
                 ("pred_discrete_error", "float")),
    summary_columns=("pred_error", "pred_rel_error_l1", "pred_l1_gap", "pred_discrete_error",
                     "error_truth_min", "shrink_factor"),
    recovery_column="rel_error_l1",
    takes_file=True,
    check=_check,
    cost=_cost,
    run=_run,
    quiet=_quiet,
)
