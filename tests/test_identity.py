"""Identity is machine-independent (docs/SWEEP_FILES.md, "Run identity" and "Axes"): every sweep
file in the repository gives the pinned run ids, instance ids, spec hash and axis values (as
float hex, to the bit) on every CPU, and a folder whose spec an earlier version hashed from other
last bits still resumes as the same sweep.

``test_identities_hold_on_numpy_other_simd_path`` runs this module's fast tests again in a
subprocess with numpy's AVX-512 code paths disabled (``NPY_DISABLE_CPU_FEATURES``); on a machine
without AVX-512 the variable changes nothing, which is why the axis values themselves are pinned.
Regenerate the pins only for a deliberate identity change:
``python tests/test_identity.py --write`` (then review the diff of tests/data/identities.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import mpmath
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import axes
from pipeline.parameters import PARAMS, identity_value
from pipeline.plan import make_plan
from pipeline.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / "tests" / "data" / "identities.json"
SWEEP_FILES = sorted(str(p.relative_to(REPO)) for p in
                     [*REPO.glob("sweeps/*.yaml"), *REPO.glob("tests/data/sweeps/*.yaml")])
OTHER_SIMD_PATH = "X86_V4 AVX512_ICL"  # numpy's AVX-512 dispatch targets, disabled


def identity(path: str) -> dict:
    """What must not depend on the machine: ids, hash and every axis value, floats as hex."""
    spec = load_spec(REPO / path)
    plan = make_plan(spec)
    runs = sorted(r.run_id for r in plan.runs)
    instances = sorted(i.instance_id for i in plan.instances)
    values = {}
    for p in PARAMS:
        if p.name in spec.axes and spec.axes[p.name] != (None,):
            values[p.field()] = spec.axes[p.name]
    for method in spec.methods:
        for name, vals in method.axes.items():
            if vals != (None,):  # (None,): not a parameter of the sweep's family
                values[next(p for p in PARAMS if p.name == name).field(method.name)] = vals
    return {
        "runs": len(runs),
        "run_ids_sha256": hashlib.sha256("\n".join(runs).encode()).hexdigest(),
        "instance_ids_sha256": hashlib.sha256("\n".join(instances).encode()).hexdigest(),
        "spec_hash": spec.spec_hash,
        "axis_values": {field: [v.hex() if isinstance(v, float) else v for v in vals]
                        for field, vals in sorted(values.items())},
    }


def test_every_repository_sweep_file_is_pinned():
    assert sorted(json.loads(PINS.read_text())) == SWEEP_FILES


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: Path(p).name)
def test_identity_of_repository_sweeps_is_pinned(path):
    assert identity(path) == json.loads(PINS.read_text())[path]


def test_numpy_runs_the_simd_path_asked_for():
    """In the subprocess of the test below, the AVX-512 paths are really off (where the CPU has
    them): otherwise that test would compare this machine with itself."""
    from numpy._core._multiarray_umath import __cpu_features__ as features

    if os.environ.get("NPY_DISABLE_CPU_FEATURES") == OTHER_SIMD_PATH:
        assert not features.get("X86_V4") and not features.get("AVX512_ICL")


@pytest.mark.slow
def test_identities_hold_on_numpy_other_simd_path():
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": OTHER_SIMD_PATH}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         str(Path(__file__))], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


# --- generated values against independent implementations ----------------------------------------

def test_powers_of_ten_are_correctly_rounded():
    """``axes.power_of_ten`` against mpmath at 50 digits, rounded once to float64."""
    mpmath.mp.dps = 50
    rng = random.Random(5)
    exponents = [k / d for d in (1, 2, 3, 4, 7, 9, 12, 100) for k in range(-40 * d, 40 * d + 1, 7)]
    exponents += [rng.uniform(-300, 300) for _ in range(300)] + [-1.25, 0.0, -0.0, 2.0, 308.0]
    for e in exponents:
        assert axes.power_of_ten(e) == float(mpmath.power(10, mpmath.mpf(e))), e


def test_powers_beyond_the_float_range():
    assert axes.power_of_ten(400.0) == float("inf") and axes.power_of_ten(308.5) == float("inf")
    assert axes.power_of_ten(-400.0) == 0.0 and axes.power_of_ten(-330.5) == 0.0


def test_linspace_is_numpys_formula():
    """Basic IEEE operations round the same on every machine: numpy's linspace is portable, and
    ``axes.linspace`` follows it to the bit (also the branch for a step that underflows)."""
    rng = random.Random(7)
    cases = [(-3.0, 0.0, 13), (0.25, 1.0, 4), (0.1, 0.7, 7), (2.0, 3.0, 3), (5.0, 5.0, 1),
             (0.0, 5e-324, 4), (-1.0, 1.0, 2)]
    cases += [(rng.uniform(-50, 50), rng.uniform(-50, 50), rng.randint(1, 40)) for _ in range(200)]
    for lo, hi, n in cases:
        assert axes.linspace(lo, hi, n) == [x + 0.0 for x in np.linspace(lo, hi, n).tolist()]


def test_logspace_powers_numpys_exponents():
    for lo, hi, n in [(-3, 0, 13), (-3, 0, 10), (-2, 1, 7), (2, 4, 3), (-1, -1, 1)]:
        assert axes.logspace(lo, hi, n) == [axes.power_of_ten(e) for e in np.linspace(lo, hi, n)]


def test_integer_axes_from_logspace_are_exact():
    spec = parse_spec("""
name: t
problem: {M: 4, N: 8, sparsity: 2, sign: nonneg}
model: {depth: 2}
init: {scheme: constant, alpha: 0.1}
methods: {gd: {eta: 0.05}}
train: {max_iters: {logspace: [2, 6, 5]}}
""")
    assert spec.axes["max_iters"] == (100, 1000, 10000, 100000, 1000000)


# --- a folder hashed by an earlier version ---------------------------------------------------------

LEGACY = REPO / "tests" / "data" / "folders" / "legacy-avx512"
LEGACY_SWEEP = REPO / "tests" / "data" / "sweeps" / "legacy-avx512.yaml"


def test_legacy_folder_holds_the_other_last_bits():
    """tests/data/folders/legacy-avx512 was written by wnsweep 0.3 on an AVX-512 machine: its
    alpha 10^-1.25 is numpy's AVX-512 value, one ulp from today's, and its spec hash differs."""
    stored = sorted(set(pq.read_table(next((LEGACY / "runs").glob("*.parquet")),
                                      columns=["alpha"]).column("alpha").to_pylist()))
    spec = load_spec(LEGACY_SWEEP)
    now = sorted(spec.axes["alpha"])
    assert stored != now and [identity_value(a) for a in stored] == [identity_value(a) for a in now]
    manifest = json.loads((LEGACY / "manifest.json").read_text())
    assert manifest["spec_hash"] != spec.spec_hash and spec.same_runs(manifest["spec"])


def test_same_runs_compares_at_the_precision_of_run_ids():
    spec = load_spec(LEGACY_SWEEP)
    canonical = spec.to_dict()
    canonical["init"]["alpha"][3] *= 1 + 1e-15
    assert spec.same_runs(canonical)
    canonical["init"]["alpha"][3] *= 1 + 1e-9
    assert not spec.same_runs(canonical)


def test_a_folder_hashed_by_an_earlier_version_resumes_with_nothing_recomputed(tmp_path):
    from pipeline import sweep

    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    outcome = sweep.run_sweep(str(LEGACY_SWEEP), out=str(folder), executor="serial",
                              progress=False)
    assert (outcome.computed, outcome.already, outcome.planned) == (0, 26, 26)
    manifest = json.loads((folder / "manifest.json").read_text())
    old = json.loads((LEGACY / "manifest.json").read_text())["spec_hash"]
    assert manifest["spec_hash"] == load_spec(LEGACY_SWEEP).spec_hash
    assert manifest["equivalent_spec_hashes"] == [old]
    text, healthy = sweep.status_text(str(folder))
    assert healthy and "done 26 / 26 runs, missing 0" in text


def _write_pins() -> None:
    PINS.write_text(json.dumps({path: identity(path) for path in SWEEP_FILES}, indent=1,
                               sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write_pins()
