"""Print the numbers docs/REPRODUCTION.md quotes, from the results of the claim sweeps, and copy
small versions of their figures to docs/figures/.

    for s in quickstart claim1-alpha claim2-loss claim3-eta-ratio claim4-depth claim5-signed \
             robustness minnorm-width minnorm-imbalance; do
        wnsweep run sweeps/$s.yaml && wnsweep report results/$s; done
    python docs/reproduction_numbers.py            # reads results/<name>, writes docs/figures/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import analysis  # noqa: E402

RESULTS, FIGURES = ROOT / "results", ROOT / "docs" / "figures"
RECOVERED = 1e-3  # rel_error_l1 threshold, as in the report


def load(name: str) -> pd.DataFrame:
    return analysis.load(str(RESULTS / name))


def ratio_table(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Median and geometric mean of the paired ratio error(GD)/error(WN-GD) per cell of ``by``."""
    r = analysis.paired_ratios(runs)
    r = r[r.dropped.isna()]
    return r.groupby(by).ratio.agg(
        n="size", median="median", gmean=lambda x: float(np.exp(np.log(x).mean()))).reset_index()


def recovery_table(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    runs = runs.assign(recovered=(runs.rel_error_l1 <= RECOVERED) & (runs.status != "diverged"),
                       eta_ratio=runs.eta_ratio.fillna(0.0))
    return runs.groupby(by).agg(
        n=("run_id", "size"), median_rel_error=("rel_error_l1", "median"),
        recovery=("recovered", "mean"), diverged=("status", lambda s: (s == "diverged").mean()),
    ).reset_index()


def overlay_table(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Measured against predicted (the theory overlay) per cell of ``by``: the median distance to
    the minimum-l1 solution of the runs and of their gradient-flow limits, and the median distance
    of the runs to those limits (pred_error)."""
    runs = runs.assign(eta_ratio=runs.eta_ratio.fillna(0.0))
    return runs.groupby(by).agg(
        n=("run_id", "size"), ok=("pred_status", lambda s: (s == "ok").mean()),
        measured=("rel_error_l1", "median"), predicted=("pred_rel_error_l1", "median"),
        pred_error=("pred_error", "median"),
    ).reset_index()


def show(title: str, frame: pd.DataFrame) -> None:
    print(f"\n## {title}\n")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def copy_figures(name: str, stems: list[str], max_side: int = 800) -> None:
    """Small copies (at most ``max_side`` pixels a side) of a report's PNGs, for the docs."""
    from PIL import Image

    FIGURES.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        for png in sorted((RESULTS / name / "report").glob(f"{stem}*.png")):
            with Image.open(png) as image:
                image.thumbnail((max_side, max_side))
                small = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
                small.save(FIGURES / f"{name}__{png.name}", optimize=True)


#: Sweeps whose numbers are a recovery table and a paired-ratio table over the same parameters
#: (grouped by ``by``; GD has no eta~), and the report figures the doc shows.
STANDARD = {
    "claim1-alpha": (["eta_ratio", "alpha"], ["error_vs_alpha"]),
    "claim3-eta-ratio": (["alpha", "eta_ratio"], ["phase_alpha_eta"]),
    "claim4-depth": (["L", "eta_ratio", "alpha"], ["error_vs_alpha"]),
    "claim5-signed": (["eta_ratio", "alpha"], ["error_vs_alpha"]),
}


def main() -> None:
    done = [n for n in ("quickstart", "claim1-alpha", "claim2-loss", "claim3-eta-ratio",
                        "claim4-depth", "claim5-signed", "robustness", "minnorm-width",
                        "minnorm-imbalance")
            if (RESULTS / n / "manifest.json").exists()]
    print("results found:", ", ".join(done))
    if "quickstart" in done:
        q = load("quickstart")
        show("quickstart: paired ratio GD/WN by alpha and eta~",
             ratio_table(q, ["eta_ratio", "alpha"]))
        copy_figures("quickstart", ["error_vs_alpha", "phase_alpha_eta"])
    if "claim2-loss" in done:
        c = load("claim2-loss")
        c = c.assign(eta_ratio=c.eta_ratio.fillna(0.0), schedule=c.schedule.fillna("-"))
        table = c.groupby(["alpha", "method", "schedule", "eta_ratio"]).agg(
            n=("run_id", "size"), converged=("status", lambda s: (s == "converged").mean()),
            median_iterations=("iterations", "median"), median_loss=("loss_final", "median"),
            median_rel_error=("rel_error_l1", "median")).reset_index()
        show("claim 2: convergence to tol = 1e-12 (max 200,000 iterations)", table)
        copy_figures("claim2-loss", ["loss_curves"])
    for name, (by, figures) in STANDARD.items():
        if name in done:
            c = load(name)
            show(f"{name}: recovery (rel_error_l1 <= 1e-3) by method and {', '.join(by)}",
                 recovery_table(c, ["method", *by]))
            show(f"{name}: paired ratio GD/WN by {', '.join(by)}", ratio_table(c, by))
            if "pred_status" in c and c.pred_status.notna().any():
                show(f"{name}: theory overlay (rel. error to x_l1 measured and predicted by the "
                     "flow; pred_error) by method and " + ", ".join(by),
                     overlay_table(c, ["method", *by]))
                figures = [*figures, "theory_error_vs_alpha", "theory_pred_error"]
            copy_figures(name, figures)
    if "robustness" in done:
        c = load("robustness")
        rec = recovery_table(c, ["L", "method", "eta_ratio", "s", "alpha"])
        cells = rec.assign(recovers=rec.recovery >= 0.5).groupby(
            ["L", "method", "eta_ratio"]).recovers.agg(cells="size", recovering="sum")
        show("robustness: (s, alpha) cells where >= 50% of trials recover", cells.reset_index())
        show("robustness: median paired ratio by L and eta~ (all s, alpha)",
             ratio_table(c, ["L", "eta_ratio"]))
        copy_figures("robustness", ["phase_alpha_s", "recovery_alpha_s"])
    if "minnorm-width" in done:
        minnorm_width(load("minnorm-width"))
        copy_figures("minnorm-width", ["minnorm_vs_width"])
    if "minnorm-imbalance" in done:
        minnorm_imbalance(load("minnorm-imbalance"))
        copy_figures("minnorm-imbalance", ["rate_vs_imbalance"])


def minnorm_width(c: pd.DataFrame) -> None:
    """The two-layer family: error_min_norm against width (random: fitted log-log slope of the
    medians per alpha; range: the largest distance of a converged run), and the rate at
    lambda = 0."""
    from analysis.plots import loglog_slope

    conv = c[c.status == "converged"]
    table = c.groupby(["init", "alpha", "width"]).agg(
        n=("run_id", "size"), converged=("status", lambda s: (s == "converged").mean()),
        median=("error_min_norm", "median"), q25=("error_min_norm", lambda x: x.quantile(0.25)),
        q75=("error_min_norm", lambda x: x.quantile(0.75)), rate=("rate", "median")).reset_index()
    show("minnorm-width: error_min_norm by init, alpha, width", table)
    rand = table[table.init == "random"]
    slopes = rand.groupby("alpha").apply(
        lambda d: loglog_slope(d.width, d["median"]), include_groups=False)
    show("minnorm-width: fitted log-log slope of the median (random init)",
         slopes.rename("slope").reset_index())
    rng = conv[conv.init == "range"]
    print(f"minnorm-width: range init: {len(rng)} of {(c.init == 'range').sum()} runs converged, "
          f"max error_min_norm {rng.error_min_norm.max():.2e}, "
          f"median {rng.error_min_norm.median():.2e}\n")


def minnorm_imbalance(c: pd.DataFrame) -> None:
    """The two-layer family: the fitted rate against the imbalance, per alpha and width."""
    table = c.groupby(["alpha", "width", "imbalance"]).agg(
        n=("run_id", "size"), converged=("status", lambda s: (s == "converged").mean()),
        diverged=("status", lambda s: (s == "diverged").mean()), rate=("rate", "median"),
        margin=("imbalance_margin", "median"), iterations=("iterations", "median")).reset_index()
    show("minnorm-imbalance: median fitted rate per step by alpha, width, imbalance", table)
    base = table[table.imbalance == 0].set_index(["alpha", "width"]).rate
    ratio = table.assign(vs_zero=[r / base[(a, w)] for a, w, r in
                                  zip(table.alpha, table.width, table.rate)])
    show("minnorm-imbalance: rate / rate at imbalance 0",
         ratio.pivot_table(index=["alpha", "width"], columns="imbalance", values="vs_zero")
         .rename(columns=lambda x: f"lambda={x:g}").reset_index())


if __name__ == "__main__":
    main()
