"""The stacked engine (pipeline/families/diagonal/dynamics.py, run_stack) against the plain one-run loop of
tests/test_core.py: many instances per call, both signs and two shapes in one call, runs that
stop at different times, and results that do not depend on what else shares the stack."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.families import training
from pipeline.families.diagonal import dynamics, initialization, models, problems
from pipeline.families.diagonal.dynamics import RunConfig
from tests.test_core import assert_close, mixed_batch, plain_run


def _instances():
    """Four instances of shape (20, 50), one nonneg-truth and one signed-truth among them, and
    one of shape (15, 40): different A in one call."""
    out = [problems.generate_instance(20, 50, 3, signed=k == 2, seed=100 + k) for k in range(4)]
    out.append(problems.generate_instance(15, 40, 2, signed=False, seed=200))
    return out


def _check_against_plain(A, b, cfg, w0, res):
    ref = plain_run(A, b, cfg, w0)
    assert res.status == ref["status"], cfg
    assert res.iterations == ref["iterations"], cfg
    assert_close(res.x_final, ref["x"])
    assert_close(res.loss_final, ref["losses"][-1], rtol=1e-8)
    # the curve: the run's own checkpoints before its last iteration, then the last one
    grid = training.checkpoint_iterations(cfg.max_iters, cfg.checkpoints)
    assert np.array_equal(res.curve_iter, np.append(grid[grid < res.iterations], res.iterations))
    assert_close(res.curve_loss, ref["losses"][res.curve_iter], rtol=1e-8)
    if cfg.method == "wn":
        assert_close(res.r_final, ref["r"])
        assert_close(res.w_final / res.r_final, ref["d"])
    else:
        assert res.r0 is None and res.r_final is None


def test_stack_of_several_instances_equals_plain_loop():
    """GD and WN, L 2 and 3, both signs, both schedules, random and constant init, different
    tolerances and budgets, spread over five instances of two shapes: one run_stack call."""
    insts = _instances()
    problems_, instance_of_run, configs, w0 = [(i.A, i.b) for i in insts], [], [], []
    for k, inst in enumerate(insts):
        cfgs, ws = mixed_batch(inst.N, seed=k)
        for j in range(k % 3, len(cfgs), 3):  # a different third of the mixed batch each
            instance_of_run.append(k)
            configs.append(cfgs[j])
            w0.append(ws[j])
    assert {c.signed for c in configs} == {False, True}
    results = dynamics.run_stack(problems_, instance_of_run, configs, w0)
    statuses, iterations = set(), set()
    for k, cfg, w, res in zip(instance_of_run, configs, w0, results):
        _check_against_plain(insts[k].A, insts[k].b, cfg, w, res)
        statuses.add(res.status)
        iterations.add(res.iterations)
    assert {"converged", "max_iters"} <= statuses
    assert len(iterations) > 20  # the runs really stopped at different times


def _focal_runs(N, seed):
    """Seven runs of one instance: GD and WN, L 2 and 3, stopping at different times."""
    rng = np.random.default_rng(seed)
    configs = [
        RunConfig("gd", False, 2, eta=0.02, max_iters=1500, tol=1e-2),
        RunConfig("wn", False, 2, eta=0.02, eta_ratio=0.1, schedule="normalized",
                  max_iters=2500, tol=1e-4),
        RunConfig("wn", False, 2, eta=0.02, eta_ratio=0.01, max_iters=700, tol=0.0),
        RunConfig("gd", False, 3, eta=0.01, max_iters=2000, tol=1e-2),
        RunConfig("wn", False, 3, eta=0.01, eta_ratio=1.0, schedule="normalized",
                  max_iters=1200, tol=1e-8),
        RunConfig("wn", False, 3, eta=0.01, eta_ratio=0.1, max_iters=900, tol=0.0),
    ]
    direction = initialization.init_direction(N, "random", seed=seed)
    w0 = [initialization.initial_weights(N, float(rng.choice([0.1, 0.3])), direction)
          for _ in configs]
    # chaotic (constant schedule, the step grows with r^2): a one-ulp change of w0 changes its
    # x_final by O(1) within 1500 steps, so agreeing to 1e-12 means agreeing to the last bit
    configs.append(RunConfig("wn", False, 2, eta=0.02, eta_ratio=0.01, max_iters=1500, tol=0.0))
    w0.append(np.full(N, 0.03))
    return configs, w0


def _company(N, count, seed):
    """``count`` other instances with 1 to 9 runs each, of every status, so that the stack's
    padding, its repacks and its other rows differ from one call to the next."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        inst = problems.generate_instance(20, N, 3, signed=False, seed=1000 + seed * 100 + k)
        configs, w0 = [], []
        for _ in range(int(rng.integers(1, 10))):
            L = int(rng.choice([2, 3]))
            configs.append(RunConfig(
                str(rng.choice(["gd", "wn"])), False, L,
                eta=float(rng.choice([0.01, 0.02, 60.0])) / (L - 1),
                eta_ratio=float(rng.choice([0.1, 1.0])),
                schedule=str(rng.choice(["constant", "normalized"])),
                max_iters=int(rng.integers(50, 3000)), tol=float(rng.choice([0.0, 1e-3]))))
            w0.append(np.full(N, float(rng.choice([0.05, 0.3]))))
        out.append((inst, configs, w0))
    return out


def _stack(groups):
    """run_stack over [(instance, configs, w0), ...]; results per group."""
    instance_of_run = [k for k, (_, cfgs, _) in enumerate(groups) for _ in cfgs]
    results = dynamics.run_stack([(inst.A, inst.b) for inst, _, _ in groups], instance_of_run,
                                 [c for _, cfgs, _ in groups for c in cfgs],
                                 [w for _, _, ws in groups for w in ws])
    out, start = [], 0
    for _, cfgs, _ in groups:
        out.append(results[start:start + len(cfgs)])
        start += len(cfgs)
    return out


def _assert_same_run(a, b):
    assert (a.status, a.iterations) == (b.status, b.iterations)
    assert_close(a.x_final, b.x_final, rtol=1e-12)
    assert_close(a.w_final, b.w_final, rtol=1e-12)
    assert_close(a.curve_loss, b.curve_loss, rtol=1e-12)
    assert np.array_equal(a.curve_iter, b.curve_iter)
    if a.r_final is not None:
        assert_close(a.r_final, b.r_final, rtol=1e-12)


def test_results_do_not_depend_on_the_stack():
    """The same two instances' runs in a stack of 2 instances, of 24 (in another order, among
    instances with other run counts, statuses and stopping times), one run at a time, and cut
    into several stacks by a small memory budget: the same numbers to 1e-12."""
    focal = []
    for seed in (1, 2):
        inst = problems.generate_instance(20, 50, 3, signed=False, seed=seed)
        focal.append((inst, *_focal_runs(50, seed)))
    small = _stack(focal)
    company = _company(50, 22, seed=3)
    big = _stack(company[:11] + [focal[1]] + company[11:] + [focal[0]])
    big_focal = [big[-1], big[11]]
    statuses = {r.status for group in big for r in group}
    assert statuses == {"converged", "diverged", "max_iters"}
    for (inst, configs, w0), in_small, in_big in zip(focal, small, big_focal):
        for i, (cfg, w) in enumerate(zip(configs, w0)):
            _assert_same_run(in_small[i], in_big[i])
            alone = dynamics.run_batch(inst.A, inst.b, [cfg], [w])[0]
            _assert_same_run(in_small[i], alone)
    # a budget of about three instances per stack: many stacks, same numbers
    groups = company[:5] + focal
    budget = dynamics.stack_bytes(3, 30, 20, 50, False)
    cut = dynamics.run_stack(
        [(inst.A, inst.b) for inst, _, _ in groups],
        [k for k, (_, c, _) in enumerate(groups) for _ in c],
        [c for _, cs, _ in groups for c in cs], [w for _, _, ws in groups for w in ws],
        budget=budget)
    for a, b in zip(cut[-14:], small[0] + small[1]):
        _assert_same_run(a, b)


def test_instances_that_stop_at_different_times(monkeypatch):
    """Per instance, every run converges, diverges, hits max_iters early or runs long: the stack
    re-packs as instances finish, and each run matches the plain loop."""
    takes = []
    original = dynamics._Rows.take
    monkeypatch.setattr(dynamics._Rows, "take",
                        lambda self, index: takes.append(self.live.shape) or original(self, index))
    insts = [problems.generate_instance(20, 50, 3, signed=False, seed=300 + k) for k in range(4)]
    w = np.full(50, 0.2)
    plans = [
        [RunConfig("gd", False, 2, eta=0.02, max_iters=20_000, tol=1e-3),  # converge
         RunConfig("wn", False, 2, eta=0.02, eta_ratio=0.1, max_iters=20_000, tol=1e-3)],
        [RunConfig("gd", False, 2, eta=60.0, max_iters=5000),  # diverge
         RunConfig("wn", False, 2, eta=60.0, max_iters=5000),
         RunConfig("wn", False, 3, eta=30.0, eta_ratio=0.1, max_iters=5000)],
        [RunConfig("gd", False, 3, eta=0.01, max_iters=40, tol=0.0)],  # max_iters, early
        [RunConfig("gd", False, 2, eta=0.01, max_iters=3000, tol=0.0),  # max_iters, late
         RunConfig("wn", False, 3, eta=0.01, eta_ratio=0.1, schedule="normalized",
                   max_iters=2500, tol=0.0)],
    ]
    groups = [(inst, cfgs, [w] * len(cfgs)) for inst, cfgs in zip(insts, plans)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning may escape
        results = _stack(groups)
    assert [{r.status for r in rs} for rs in results] == [
        {"converged"}, {"diverged"}, {"max_iters"}, {"max_iters"}]
    stops = [max(r.iterations for r in rs) for rs in results]
    assert len(set(stops)) == 4 and stops[2] == 40 and stops[3] == 3000
    assert len(takes) >= 2  # the grid shrank at least twice
    for (inst, cfgs, ws), rs in zip(groups, results):
        for cfg, w0, res in zip(cfgs, ws, rs):
            if res.status == "diverged":  # the plain loop agrees on when, not on the blow-up
                ref = plain_run(inst.A, inst.b, cfg, w0)
                assert (res.iterations, ref["status"]) == (ref["iterations"], "diverged")
            else:
                _check_against_plain(inst.A, inst.b, cfg, w0, res)


def test_scaled_wn_step_is_wn_step():
    """wn_scaled_step on (r, v, nu) with d = v / nu takes wn_step's step, for either sign of nu."""
    rng = np.random.default_rng(0)
    d = np.abs(rng.standard_normal((6, 30)))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    p = 0.05 * rng.standard_normal((6, 30))
    r = rng.uniform(0.5, 2.0, 6)
    ratio = np.array([0.01, 0.1, 1.0, 10.0, 0.1, 1.0])
    nu = np.array([1.0, 3.0, 0.2, -1.0, -5.0, 1e-3])
    r_ref, d_ref = dynamics.wn_step(r, d.copy(), p, ratio)
    radial = np.vecdot(d, p)
    r_next, nu_next, v_next = dynamics.wn_scaled_step(
        r, nu, nu[:, None] * d, (nu / (1 + radial))[:, None] * p, radial, ratio)
    assert_close(r_next, r_ref, rtol=1e-15)
    assert_close(v_next / nu_next[:, None], d_ref, rtol=1e-14)


def test_split_stacks_keeps_to_the_budget():
    runs = [6, 6, 24, 1, 6, 6, 6, 6]
    budget = dynamics.stack_bytes(3, 3 * 24, 100, 400, True)
    parts = dynamics.split_stacks(runs, 100, 400, True, budget)
    assert [i for part in parts for i in range(len(runs))[part]] == list(range(len(runs)))
    for part in parts:
        chunk = runs[part]
        width = max(dynamics.padded_rows(n) for n in chunk)
        assert len(chunk) == 1 or dynamics.stack_bytes(
            len(chunk), len(chunk) * width, 100, 400, True) <= budget
    assert len(parts) > 1
    assert dynamics.split_stacks([5] * 10, 40, 100, False) == [slice(0, 10)]
    huge = dynamics.split_stacks([1, 1], 40, 100, False, budget=1)  # each alone, over budget
    assert huge == [slice(0, 1), slice(1, 2)]


def test_run_stack_checks_its_input():
    inst = problems.generate_instance(10, 20, 2, signed=False, seed=0)
    cfg = RunConfig("gd", False, 2, eta=0.01, max_iters=5)
    with pytest.raises(ValueError, match="must match"):
        dynamics.run_stack([(inst.A, inst.b)], [0, 0], [cfg], [np.ones(20)])
    with pytest.raises(ValueError, match="out of range"):
        dynamics.run_stack([(inst.A, inst.b)], [1], [cfg], [np.ones(20)])
    with pytest.raises(ValueError, match=r"shape \(20,\)"):
        dynamics.run_stack([(inst.A, inst.b)], [0], [cfg], [np.ones(40)])
    n = models.n_trainable(20, True)
    signed = RunConfig("wn", True, 2, eta=0.01, max_iters=5)
    with pytest.raises(ValueError, match="positive norm"):
        dynamics.run_stack([(inst.A, inst.b)], [0], [signed], [np.zeros(n)])


SWEEP = """\
name: grouping
seed: 3
trials: {trials}
problem: {{M: 12, N: 30, sparsity: [2, 3], sign: [nonneg, signed]}}
model: {{depth: [2, 3]}}
init: {{scheme: [constant, random], alpha: [0.05, 0.3]}}
methods:
  gd: {{eta: 0.02}}
  wn: {{eta: 0.02, eta_ratio: [0.1, 1.0], schedule: [constant, normalized]}}
train: {{max_iters: 400, tol: 1.0e-8, checkpoints: 16}}
output: {{save_solutions: true}}
"""


def _runs_by_id(tasks) -> dict:
    from pipeline import task as task_module

    out = {}
    for t in tasks:
        for row in task_module.run_task(t).runs.to_pylist():
            out[row["run_id"]] = row
    return out


@pytest.mark.slow
def test_task_grouping_and_trial_count_do_not_change_results():
    """The same run_id in a sweep of 2 trials and of 12 (more instances per engine call), and
    with one task per instance or one task for all: the same x_final to 1e-12 (the sweep has
    chaotic WN runs, so this is agreement to the last bit)."""
    from pipeline import plan, spec

    two = plan.make_plan(spec.parse_spec(SWEEP.format(trials=2)))
    many = plan.make_plan(spec.parse_spec(SWEEP.format(trials=12)))
    one_each = two.tasks(task_seconds=1e-6)
    assert len(one_each) == len(two.instances) == 8
    together = many.tasks(task_seconds=1e9)
    assert len(together) == 1
    a, b = _runs_by_id(one_each), _runs_by_id(together)
    assert set(a) <= set(b) and len(b) == 6 * len(a)
    for run_id, row in a.items():
        other = b[run_id]
        for key in ("status", "iterations", "curve_iter"):
            assert row[key] == other[key], key
        assert_close(other["x_final"], row["x_final"], rtol=1e-12)
        assert_close(other["curve_loss"], row["curve_loss"], rtol=1e-12)


def test_runs_that_stop_at_once_or_after_one_step():
    """tol above the initial loss: converged at iteration 0 with a one-point curve; max_iters = 1:
    one step; in one stack with a run that goes on, and in a stack where every run stops at 0."""
    inst = problems.generate_instance(20, 50, 3, signed=False, seed=9)
    w = np.full(50, 0.2)
    loss0 = float(models.loss(inst.A, inst.b, models.product(w, 2, False)))
    configs = [RunConfig("wn", False, 2, eta=0.02, tol=2 * loss0, checkpoints=8),
               RunConfig("gd", False, 3, eta=0.01, max_iters=1, tol=0.0),
               RunConfig("wn", False, 2, eta=0.02, eta_ratio=0.1, max_iters=300, tol=0.0)]
    at_once, one_step, longer = dynamics.run_batch(inst.A, inst.b, configs, [w] * 3)
    assert (at_once.status, at_once.iterations) == ("converged", 0)
    assert at_once.curve_iter.tolist() == [0] and at_once.curve_loss[0] == at_once.loss_final
    assert_close(at_once.x_final, w**2, rtol=1e-15)
    assert (one_step.status, one_step.iterations, one_step.curve_iter.tolist()) == (
        "max_iters", 1, [0, 1])
    _check_against_plain(inst.A, inst.b, configs[1], w, one_step)
    _check_against_plain(inst.A, inst.b, configs[2], w, longer)
    only = dynamics.run_stack([(inst.A, inst.b)] * 2, [0, 1], [configs[0]] * 2, [w, w])
    assert [(r.status, r.iterations) for r in only] == [("converged", 0)] * 2
