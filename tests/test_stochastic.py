"""Mini-batch SGD, label-noise GD, noisy measurements, early stopping and GD's effective
initialization (docs/MODEL.md, "Stochastic steps", "Noisy measurements and early stopping",
"GD's effective initialization"), against an independent slow loop and the full-batch engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import analysis
from pipeline import plan, spec, sweep
from pipeline.families.diagonal import dynamics, effective, problems, theory
from pipeline.families.diagonal.run import stream_seed

M, N, S = 20, 50, 3


def _instance(signed: bool, seed: int = 7, noise: float = 0.0) -> problems.Instance:
    return problems.generate_instance(M, N, S, signed, seed, noise=noise)


def slow_run(A, b, cfg: dynamics.RunConfig, w0: np.ndarray, signed: bool):
    """GD written out step by step: the documented batches and label noise drawn from the run's
    stream one step at a time, and the log-shrink l = log(w_eff / w0) summed per step: for L = 2
    as log|1 -/+ rho_k| +/- rho_k, for L > 2 from the per-step remainders delta_k of w^(2-L)
    (docs/MODEL.md, "GD's effective initialization"). Returns (w_T, l, iterations)."""
    M_, N_ = A.shape
    L = cfg.depth
    q = 2.0 - L
    w = w0.copy()
    sums = np.zeros_like(w)  # L = 2: the log-shrink; L > 2: sum_k delta_k
    shuffle = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0,)))
    labels = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(1,)))
    batch = min(cfg.batch or M_, M_)
    epoch = M_ // batch
    sign = np.concatenate((np.ones(N_), -np.ones(N_))) if signed else np.ones(N_)
    for k in range(cfg.max_iters + 1):
        x = w[:N_] ** L - w[N_:] ** L if signed else w ** L
        e = A @ x - b
        if 0.5 * (e @ e) <= cfg.tol or k >= cfg.max_iters:
            shrink = sums if L == 2 else np.log((w0 ** q + sums) / w0 ** q) / q
            return w, shrink, k
        if batch < M_ and k % epoch == 0:
            order = shuffle.permutation(M_)
        if cfg.label_noise > 0:
            e = e - cfg.label_noise * labels.standard_normal(M_)
        if batch < M_:
            chosen = order[(k % epoch) * batch:(k % epoch + 1) * batch]
            weight = np.zeros(M_)
            weight[chosen] = M_ / batch
            e = e * weight
        c = np.tile(A.T @ (cfg.eta * L * e), 2 if signed else 1)
        y = sign * w ** (L - 2) * c  # w_{k+1} = w_k (1 - y): u entries -, v entries +
        if L == 2:
            sums += np.log(np.abs(1 - y)) + y
        else:
            sums += w ** q * (np.expm1(q * np.log1p(-y)) - (L - 2) * y)
        w = w * (1 - y)
    raise AssertionError("unreachable")


def _fields(result: dynamics.RunResult) -> dict:
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
            if f.name != "seconds"}


def assert_same_result(a: dynamics.RunResult, b: dynamics.RunResult) -> None:
    fa, fb = _fields(a), _fields(b)
    for name in fa:
        x, y = fa[name], fb[name]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None, name
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert x == y or (x != x and y != y), name


# --- defaults are today's method, to the bit ----------------------------------------------------


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("method", ["gd", "wn"])
def test_batch_M_and_label_noise_0_are_full_batch_to_the_bit(signed, method):
    problem = _instance(signed)
    n = 2 * N if signed else N
    base = dynamics.RunConfig(method, signed, 2, 0.05, schedule="normalized", max_iters=3000)
    variants = [dataclasses.replace(base, batch=M, seed=11),
                dataclasses.replace(base, label_noise=0.0, seed=11),
                dataclasses.replace(base, batch=M, label_noise=0.0, seed=12)]
    w0 = np.full(n, 0.1)
    [reference] = dynamics.run_batch(problem.A, problem.b, [base], [w0], x_star=problem.x_star)
    for result in dynamics.run_batch(problem.A, problem.b, variants, [w0] * 3,
                                     x_star=problem.x_star):
        assert_same_result(result, reference)


def test_noise_0_leaves_instances_unchanged_and_noise_shares_A_x_star_and_xi():
    for signed in (False, True):
        plain = problems.generate_instance(M, N, S, signed, 3)
        zero = problems.generate_instance(M, N, S, signed, 3, noise=0.0)
        small = problems.generate_instance(M, N, S, signed, 3, noise=0.01)
        large = problems.generate_instance(M, N, S, signed, 3, noise=0.1)
        assert np.array_equal(zero.b, plain.b) and np.array_equal(zero.b, plain.A @ plain.x_star)
        for other in (small, large):
            assert np.array_equal(other.A, plain.A) and np.array_equal(other.x_star, plain.x_star)
        xi_small, xi_large = (small.b - plain.b) / 0.01, (large.b - plain.b) / 0.1
        np.testing.assert_allclose(xi_small, xi_large, rtol=1e-12, atol=1e-12)
        assert 0.5 < np.std(xi_large) < 2.0


SWEEP = """
name: noisy
seed: 4
trials: 2
problem: {{M: 10, N: 24, sparsity: 2{noise}}}
model: {{depth: 2}}
init: {{alpha: [0.01, 0.1]}}
methods:
  gd: {{eta: 0.05{gd}}}
  wn: {{eta: 0.05, schedule: normalized{wn}}}
train: {{max_iters: 2000}}
"""


def _sweep(noise: str = "", gd: str = "", wn: str = "") -> spec.SweepSpec:
    return spec.parse_spec(SWEEP.format(noise=noise, gd=gd, wn=wn))


def test_default_values_written_out_keep_run_ids_and_hash():
    base = _sweep()
    explicit = _sweep(noise=", noise: 0", gd=", label_noise: 0", wn=", label_noise: 0.0")
    assert explicit.spec_hash == base.spec_hash
    assert plan.make_plan(explicit).run_ids == plan.make_plan(base).run_ids
    extended = plan.make_plan(_sweep(noise=", noise: [0, 0.1]", gd=", label_noise: [0, 0.1]"))
    assert plan.make_plan(base).run_ids < extended.run_ids  # new values add runs, keep the rest


@pytest.mark.parametrize("field, text, words", [
    ("methods.gd.batch", dict(gd=", batch: 11"), "batch must be <= M"),
    ("methods.wn.batch", dict(wn=", batch: 0"), ">= 1"),
    ("methods.gd.batch", dict(gd=", batch: 2.5"), "integer"),
    ("methods.gd.label_noise", dict(gd=", label_noise: -0.1"), ">= 0"),
    ("problem.noise", dict(noise=", noise: -1"), ">= 0"),
])
def test_bad_values_name_their_field(field, text, words):
    with pytest.raises(spec.SpecError) as info:
        _sweep(**text)
    assert info.value.field == field and words in str(info.value)


# --- a run's stream is its own ------------------------------------------------------------------


def test_a_runs_batches_and_label_noise_are_the_same_alone_and_in_a_stack_of_24():
    """Each run computed alone equals the same run inside a stack of 24 instances holding GD,
    SGD, label-noise and WN-GD runs of several depths that stop at different iterations."""
    rng = np.random.default_rng(0)
    instances = [_instance(signed=False, seed=100 + k) for k in range(24)]
    configs, w0, which = [], [], []
    for k in range(24):
        for j, (method, batch, delta) in enumerate([("gd", None, 0.0), ("gd", 4, 0.0),
                                                    ("gd", 1, 0.05), ("wn", 5, 0.02),
                                                    ("gd", None, 0.1)]):
            configs.append(dynamics.RunConfig(method, False, 2 + (k + j) % 2, 0.02,
                                              schedule="normalized", batch=batch,
                                              label_noise=delta, max_iters=int(rng.integers(50, 400)),
                                              seed=1000 * k + j))
            w0.append(np.full(N, rng.uniform(0.05, 0.3)))
            which.append(k)
    problems_ = [(p.A, p.b) for p in instances]
    truths = [p.x_star for p in instances]
    stacked = dynamics.run_stack(problems_, which, configs, w0, truths=truths)
    assert len({r.iterations for r in stacked}) > 10
    for i in range(0, len(configs), 7):
        p = instances[which[i]]
        [alone] = dynamics.run_batch(p.A, p.b, [configs[i]], [w0[i]], x_star=p.x_star)
        assert_same_result(alone, stacked[i])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("depth, batch, delta", [(2, None, 0.0), (2, 5, 0.0), (2, 1, 0.0),
                                                 (2, None, 0.05), (2, 4, 0.02), (3, None, 0.0),
                                                 (3, 4, 0.02), (4, 5, 0.0)])
def test_engine_follows_the_documented_batches_and_label_noise(signed, depth, batch, delta):
    """The engine against the slow loop, which draws one permutation per epoch and one noise
    vector per step: the same iterates (to the rounding of the products) prove the same
    batches and labels; the log-shrink recovered from R equals the per-step sum."""
    problem = _instance(signed)
    n = 2 * N if signed else N
    cfg = dynamics.RunConfig("gd", signed, depth, 0.02, batch=batch, label_noise=delta,
                             max_iters=1500, seed=77)
    w0 = np.full(n, 0.2 if depth == 2 else 0.5)
    [result] = dynamics.run_batch(problem.A, problem.b, [cfg], [w0], x_star=problem.x_star)
    w_slow, shrink_slow, k = slow_run(problem.A, problem.b, cfg, w0, signed)
    assert result.iterations == k
    np.testing.assert_allclose(result.w_final, w_slow, rtol=1e-11, atol=1e-14)
    shrink = effective.log_shrink(problem.A, w0, result.w_final, result.residual_sum, signed,
                                  depth)
    # both sums are of |rho_k| <= ~1 terms over 1500 steps: float64 rounding, not the method
    np.testing.assert_allclose(shrink, shrink_slow, rtol=0, atol=1e-11)
    assert np.all(shrink_slow <= 1e-12)  # every step shrinks (no step flips a sign here)


# --- GD's effective initialization --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("depth, batch", [(2, None), (2, 5), (2, 1), (3, None), (3, 5)])
def test_pred_discrete_error_is_rounding_on_converged_runs(signed, depth, batch):
    """A converged GD or SGD run is the flow's limit from its effective initialization:
    pred_discrete_error <= 1e-8 (measured ~2e-13 at L = 2, tol 1e-26), while the flow from the
    actual initialization (pred_error) misses by 1e-3 to 1e-1. Checked against the slow loop's
    w_eff."""
    problem = _instance(signed)
    n = 2 * N if signed else N
    eta = {None: 0.1, 5: 0.02, 1: 0.01}[batch]
    cfg = dynamics.RunConfig("gd", signed, depth, eta, batch=batch, max_iters=600_000,
                             tol=1e-26 if depth == 2 else 1e-22, seed=5)
    w0 = np.full(n, 0.1 if depth == 2 else 0.3)
    [result] = dynamics.run_batch(problem.A, problem.b, [cfg], [w0], x_star=problem.x_star)
    assert result.status == "converged"
    shrink = effective.log_shrink(problem.A, w0, result.w_final, result.residual_sum, signed,
                                  depth)
    if result.iterations <= 100_000:  # the slow loop at ~15 us per step
        _, shrink_slow, _ = slow_run(problem.A, problem.b, cfg, w0, signed)
        np.testing.assert_allclose(shrink, shrink_slow, rtol=0, atol=1e-10)
    x_eff = theory.predicted_limit(problem.A, problem.b, w0 * np.exp(shrink), depth, signed).x
    x_flow = theory.predicted_limit(problem.A, problem.b, w0, depth, signed).x
    discrete = np.linalg.norm(result.x_final - x_eff) / np.linalg.norm(x_eff)
    flow = np.linalg.norm(result.x_final - x_flow) / np.linalg.norm(x_flow)
    assert discrete <= 1e-8 and flow > 1e-4, (discrete, flow, result.iterations)
    summary = effective.summary(shrink)
    assert summary["shrink_factor"] < 1 and summary["log_shrink_l1"] > 0


def test_log_shrink_is_unknown_for_flushed_entries_and_odd_depth_sign_flips():
    A = np.eye(2, 3)
    assert effective.log_shrink(A, np.ones(3), np.array([1.0, 0.0, 1.0]), np.zeros(2),
                                False) is None
    flipped = np.array([0.5, -0.5, 0.5])
    assert effective.log_shrink(A, np.ones(3), flipped, np.zeros(2), False, 3) is None
    # at even depth the forms use |w|: a flip is exact (here w_eff = |w_T| with R = 0)
    np.testing.assert_allclose(effective.log_shrink(A, np.ones(3), flipped, np.zeros(2), False),
                               np.log(0.5))
    np.testing.assert_allclose(effective.log_shrink(A, np.ones(3), flipped, np.zeros(2), False, 4),
                               np.log(0.5))


# --- through a sweep: columns, early stopping, serial and Ray -----------------------------------


STOCHASTIC = """
name: stochastic
seed: 5
trials: 2
problem: {M: 12, N: 30, sparsity: 2, noise: [0, 0.05]}
model: {depth: [2, 3]}
init: {alpha: [0.05, 0.2]}
methods:
  gd: {eta: 0.02, batch: [3, 12], label_noise: [0, 0.05]}
  wn: {eta: 0.02, schedule: normalized, batch: [4]}
train: {max_iters: 3000, checkpoints: 16}
output: {save_solutions: true}
"""


@pytest.mark.slow
def test_stochastic_sweep_columns_and_serial_equals_ray(ray_local, tmp_path):
    path = tmp_path / "stochastic.yaml"
    path.write_text(STOCHASTIC)
    serial = sweep.run_sweep(str(path), out=str(tmp_path / "serial"), executor="serial",
                             progress=False, task_seconds=0.05)
    on_ray = sweep.run_sweep(str(path), out=str(tmp_path / "ray"), executor="ray",
                             progress=False, task_seconds=0.05)
    assert serial.tasks > 1 and on_ray.tasks > 1
    a = analysis.load(str(tmp_path / "serial")).sort_values("run_id").reset_index(drop=True)
    b = analysis.load(str(tmp_path / "ray")).sort_values("run_id").reset_index(drop=True)
    columns = ["status", "iterations", "loss_final", "rel_error_l1", "error_truth", "curve_loss",
               "curve_error_truth", "error_truth_min", "iter_at_error_truth_min",
               "log_shrink_l1", "shrink_factor", "w_eff", "pred_discrete_error", "x_final"]
    for column in columns:
        for x, y in zip(a[column], b[column]):
            assert np.array_equal(np.asarray(x, dtype=float), np.asarray(y, dtype=float),
                                  equal_nan=True) if column != "status" else x == y, column
    gd = a[a.method == "gd"]
    assert set(gd.batch) == {3, 12}  # 12 = M: full batch (bit for bit: the engine test above)
    # effective initialization: every GD row that did not diverge, at L = 2 and 3
    has = a.shrink_factor.notna()
    assert (a[has].method == "gd").all() and set(a[has].L) == {2, 3}
    assert has.sum() == ((a.method == "gd") & (a.status != "diverged")).sum()
    assert all(len(w) == 30 for w in a[has].w_eff)
    # early stopping: the minimum of the curve, found at one of its iterations
    for row in a.itertuples():
        curve = np.asarray(row.curve_error_truth)
        assert len(curve) == len(row.curve_iter) and curve[-1] == pytest.approx(row.error_truth)
        assert row.error_truth_min == curve.min()
        assert row.iter_at_error_truth_min in list(row.curve_iter)
    # measurement noise moves b, so the noisy instances' basis pursuit differs
    noisy = a[a.noise > 0]
    assert len(noisy) == len(a) / 2 and (noisy.bp_error_truth > 0).all()


def test_stream_seed_is_the_run_ids_hash():
    run_id = "r-" + "0123456789abcdef0123"
    assert stream_seed(run_id) == int("0123456789abcdef0123", 16)


def test_folders_written_before_the_keys_read_them_as_defaults():
    """A 0.3 folder has no noise, batch or label_noise columns: its runs ran noiseless and full
    batch, so analysis.load gives noise = label_noise = 0 where they apply, batch null (full)."""
    from pathlib import Path

    folders = Path(__file__).parent / "data" / "folders"
    diagonal = analysis.load(str(folders / "legacy-avx512"))
    assert (diagonal.noise == 0).all() and (diagonal.label_noise == 0).all()
    assert diagonal.batch.isna().all() and diagonal.shrink_factor.isna().all()
    mixed = analysis.load(str(folders / "legacy-mixed"))
    twolayer = mixed.family == "twolayer"
    assert twolayer.any() and (~twolayer).any()
    assert mixed.loc[twolayer, ["noise", "label_noise"]].isna().all().all()
    assert (mixed.loc[~twolayer, ["noise", "label_noise"]] == 0).all().all()


def test_an_instance_files_runs_keep_noise_null(tmp_path):
    """``problem.noise`` is a generated problem's key: an instance file's runs store and read it
    as null (analysis.load fills the default only where the key applies)."""
    problem = _instance(signed=False)
    np.savez(tmp_path / "inst.npz", A=problem.A, b=problem.b, x_star=problem.x_star)
    path = tmp_path / "file.yaml"
    path.write_text("name: file\nproblem: {file: inst.npz}\nmodel: {depth: 2}\n"
                    "init: {alpha: 0.1}\nmethods: {gd: {eta: 0.05, label_noise: [0, 0.01]}}\n"
                    "train: {max_iters: 50}\n")
    sweep.run_sweep(str(path), out=str(tmp_path / "out"), executor="serial", progress=False)
    runs = analysis.load(str(tmp_path / "out"))
    assert len(runs) == 2 and runs.noise.isna().all() and set(runs.label_noise) == {0.0, 0.01}
