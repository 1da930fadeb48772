"""The analysis stage on a real (small) sweep: report files, figure axes, and the notebook."""

from __future__ import annotations

import os

import matplotlib
import nbformat
import pytest
from nbclient import NotebookClient

import analysis
from analysis import plots
from pipeline import cli, sweep
from tests.conftest import REPO

matplotlib.use("Agg")

pytestmark = pytest.mark.slow  # every figure of a real sweep, and a notebook kernel


@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    """The tiny sweep (2 s, 2 L, 2 init, 2 alpha, GD + 4 WN variants, 2 trials), run serially."""
    from tests.conftest import TINY_SWEEP

    folder = tmp_path_factory.mktemp("real")
    path = folder / "tiny.yaml"
    path.write_text(TINY_SWEEP.format(name="tiny", trials=2, eta=0.02, max_iters=400)
                    .replace("scheme: [constant, random], alpha: [0.05, 0.3]",
                             "scheme: constant, alpha: {logspace: [-2, 0, 3]}"))
    out = folder / "results"
    sweep.run_sweep(str(path), out=str(out), executor="serial", progress=False)
    return out


def test_report_command_writes_every_supported_figure(real_results, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", str(real_results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "index.html" in printed
    pngs = sorted(p.stem for p in out.glob("*.png"))
    for stem in ("error_vs_alpha", "loss_curves", "phase_alpha_s", "phase_alpha_eta",
                 "recovery_alpha_s", "alpha_eff"):
        assert any(p.startswith(stem) for p in pngs), (stem, pngs)
    assert {p.stem for p in out.glob("*.pdf")} == set(pngs)
    for table in ("summary.csv", "summary.md", "paired_ratios.csv"):
        assert (out / table).stat().st_size > 0
    index = (out / "index.html").read_text()
    assert all(f"{p}.png" in index for p in pngs)


def test_figures_carry_labels_and_log_scales(real_results):
    runs = analysis.load(str(real_results))
    fixed, part = plots.split_by_extra(runs, plots.plot_error_vs_alpha.USES)[0]
    fig = plots.plot_error_vs_alpha(part)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_ylabel()
    assert any("alpha" in a.get_xlabel() for a in fig.axes)
    _, part = plots.split_by_extra(runs, plots.plot_phase_alpha_s.USES)[0]
    fig = plots.plot_phase_alpha_s(part)
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert panels[0].get_xscale() == "log" and any("s" in a.get_ylabel() for a in panels)
    colorbar_labels = " ".join(a.get_ylabel() + a.get_xlabel() for a in fig.axes)
    assert "log_{10}" in colorbar_labels and "GD" in colorbar_labels


def test_notebook_executes_headless(real_results):
    nb = nbformat.read(REPO / "analysis" / "notebooks" / "explore.ipynb", as_version=4)
    env_before = os.environ.get("WNSWEEP_RESULTS")
    os.environ["WNSWEEP_RESULTS"] = str(real_results)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("WNSWEEP_RESULTS")
        else:
            os.environ["WNSWEEP_RESULTS"] = env_before
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
