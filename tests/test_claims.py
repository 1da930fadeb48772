"""The seeds' claims at reduced size, on fixed seeds, through the real pipeline (docs/MODEL.md,
"What the seeds report"). docs/REPRODUCTION.md has the full-size numbers."""

from __future__ import annotations

import numpy as np
import pytest

import analysis
from pipeline import sweep

pytestmark = pytest.mark.slow  # sweeps of 60,000-iteration runs

CLAIMS = """\
name: claims
seed: 11
trials: 4
problem: {{M: 40, N: 100, sparsity: 5, sign: {sign}}}
model: {{depth: 2}}
init: {{scheme: constant, alpha: 0.1}}
methods:
  gd: {{eta: 0.05}}
  wn: {{eta: 0.05, eta_ratio: [0.01, 10], schedule: normalized}}
train: {{max_iters: 60000, tol: 1.0e-12, checkpoints: 16}}
"""


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    folder = tmp_path_factory.mktemp("claims")
    frames = {}
    for sign in ("nonneg", "signed"):
        path = folder / f"{sign}.yaml"
        path.write_text(CLAIMS.format(sign=sign))
        sweep.run_sweep(str(path), out=str(folder / sign), executor="serial", progress=False)
        frames[sign] = analysis.load(str(folder / sign))
    return frames


def _median_ratio(runs, eta_ratio):
    ratios = analysis.paired_ratios(runs)
    cell = ratios[np.isclose(ratios.eta_ratio, eta_ratio) & ratios.dropped.isna()]
    assert len(cell) == 4  # one paired ratio per trial
    return float(np.median(cell.ratio))


def test_wn_improves_on_gd_at_alpha_0_1_by_100x(claims):
    assert _median_ratio(claims["nonneg"], 0.01) >= 100


def test_eta_ratio_10_gives_no_gain(claims):
    assert _median_ratio(claims["nonneg"], 10.0) <= 2


def test_wn_recovers_a_signed_ground_truth_at_alpha_0_1(claims):
    runs = claims["signed"]
    wn = runs[(runs.method == "wn") & np.isclose(runs.eta_ratio, 0.01)]
    assert len(wn) == 4 and (wn.loss_final <= 1e-6).all()  # fitted (some still converging)
    assert (wn.rel_error_l1 <= 1e-2).all()
    assert (wn.error_truth <= 1e-2 * np.sqrt(5)).all()  # and that is the ground truth itself
