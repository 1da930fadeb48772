"""Per-cell statistics and paired GD / WN-GD ratios, as plain pandas.

Input: the tidy run table of ``analysis.load`` (one row per run). A *cell* is one grid point:
the values of ``CELL_KEYS`` (every parameter that is not per-trial); the trials of a cell are
its rows. GD rows have null ``eta_ratio`` / ``schedule``, so grouping keeps nulls as their own
key (``groupby(dropna=False)``).

Conventions (all hand-checkable):
- Quantiles are pandas' default (linear interpolation, same as ``numpy.percentile``).
- Error statistics (median / mean / q25 / q75) use the trials with a *finite* error only;
  ``n_finite`` says how many those are. ``n`` counts every trial of the cell.
- A run *recovers* when its family's recovery column (``Family.recovery_column``; the diagonal
  family: ``rel_error_l1``) is ``<= threshold`` and its status is not ``diverged``;
  ``recovery_rate`` = recovered / n (NaN / inf errors never recover); NaN for cells of a family
  without one (the two-layer family, whose distance is ``error_min_norm``).
- ``iterations_median`` is over converged runs only (NaN when none converged).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.variants import gradient_keys
from pipeline import families, parameters

#: Parameter columns that identify a grid cell (everything but the trial), and the columns on
#: which a WN run and its GD partner must agree (besides eta, see ``paired_ratios``): both are
#: derived from the table of run parameters, ``pipeline.parameters``.
CELL_KEYS = parameters.CELL_KEYS
PAIR_KEYS = parameters.PAIR_KEYS


#: Columns summarized per cell (median and quartiles) when present: each family's
#: ``summary_columns`` (the diagonal family's theory overlay, the two-layer family's distance to
#: A^+ Y and rate; null in other families' rows), in registry order.
SUMMARY_COLUMNS = tuple(dict.fromkeys(
    col for f in families.REGISTRY.values() for col in f.summary_columns))


def cell_keys(df: pd.DataFrame) -> list[str]:
    """The ``CELL_KEYS`` present in ``df`` (in canonical order)."""
    return [k for k in CELL_KEYS if k in df.columns]


def _finite(x: pd.Series) -> pd.Series:
    """``x`` as float with non-finite values replaced by NaN (so pandas reductions skip them)."""
    x = pd.to_numeric(x, errors="coerce").astype(float)
    return x.where(np.isfinite(x))


def _recovered(runs: pd.DataFrame, threshold: float) -> pd.Series:
    """1.0 where a run recovers (its family's ``recovery_column`` <= threshold and not
    diverged), 0.0 where it does not, NaN for a family without a notion of recovery."""
    names = (runs["family"].astype(object).map(families.family_name) if "family" in runs
             else pd.Series(families.DEFAULT_FAMILY, index=runs.index))
    out = pd.Series(np.nan, index=runs.index)
    for name in names.unique():
        column = families.family(name).recovery_column
        if column is None or column not in runs:
            continue
        rows = names == name
        value = _finite(runs.loc[rows, column])
        out[rows] = ((value <= threshold) & (runs.loc[rows, "status"] != "diverged")).astype(float)
    return out


def cell_stats(runs: pd.DataFrame, threshold: float = 1e-3) -> pd.DataFrame:
    """Statistics over the trials of each cell.

    Returns one row per cell: the cell keys, then
    ``n, n_finite, error_l1_{median,mean,q25,q75}, rel_error_l1_{median,mean,q25,q75},
    recovery_rate, iterations_median, convergence_rate, divergence_rate``, and the median and
    quartiles ``<col>_{median,q25,q75}`` of each of ``SUMMARY_COLUMNS`` the table has
    (rates are fractions in [0, 1] of ``n``; errors in the units of x, i.e. l2 distances).
    """
    keys = cell_keys(runs)
    status = runs["status"].astype(object)
    rel = _finite(runs["rel_error_l1"])
    work = pd.DataFrame(
        {
            "error_l1": _finite(runs["error_l1"]),
            "rel_error_l1": rel,
            "finite": np.isfinite(pd.to_numeric(runs["error_l1"], errors="coerce")).astype(float),
            "recovered": _recovered(runs, threshold),
            "converged": (status == "converged").astype(float),
            "diverged": (status == "diverged").astype(float),
            "iters_conv": runs["iterations"].astype(float).where(status == "converged"),
        },
        index=runs.index,
    )
    for k in keys:
        work[k] = runs[k]
    g = work.groupby(keys, dropna=False, sort=True)
    out = pd.DataFrame({"n": g.size(), "n_finite": g["finite"].sum().astype(int)})
    for col in ("error_l1", "rel_error_l1"):
        out[f"{col}_median"] = g[col].median()
        out[f"{col}_mean"] = g[col].mean()
        out[f"{col}_q25"] = g[col].quantile(0.25)
        out[f"{col}_q75"] = g[col].quantile(0.75)
    for col in SUMMARY_COLUMNS:
        if col in runs.columns:  # null in the rows of other families
            values = _finite(runs[col])
            grouped = values.groupby([runs[k] for k in keys], dropna=False, sort=True)
            out[f"{col}_median"] = grouped.median()
            out[f"{col}_q25"] = grouped.quantile(0.25)
            out[f"{col}_q75"] = grouped.quantile(0.75)
    out["recovery_rate"] = g["recovered"].mean()
    out["iterations_median"] = g["iters_conv"].median()
    out["convergence_rate"] = g["converged"].mean()
    out["divergence_rate"] = g["diverged"].mean()
    return out.reset_index()


def paired_ratios(runs: pd.DataFrame) -> pd.DataFrame:
    """Per WN-GD run, the ratio error_l1(GD) / error_l1(WN-GD) against its paired GD run.

    Pairing: the GD run with the same ``PAIR_KEYS`` (same instance, hence same trial and problem;
    same L, init, alpha, max_iters, tol), the same kind of gradient (``variants.gradient_keys``:
    batch, a batch of M being the full batch, and label noise) and the same ``eta``; if no GD
    run has that eta but GD has exactly one eta for those keys, that GD run is used (typical:
    ``gd: {eta: 0.01}`` with a WN eta axis). Otherwise the WN run is unpaired.

    Returns one row per WN run: its cell keys, ``trial``, ``instance_id``, ``run_id``,
    ``gd_run_id``, ``gd_eta``, ``error_gd``, ``error_wn``, ``ratio``, ``log10_ratio`` and
    ``dropped``: None for a valid ratio, else why ``ratio`` is NaN -- ``"unpaired"``,
    ``"non_finite"`` (either error NaN/inf), ``"gd_error_zero"`` or ``"wn_error_zero"``
    (the ratio would be 0 or inf and break the geometric mean).
    """
    runs = runs.assign(**{f"_{k}": v for k, v in gradient_keys(runs).items()})
    keys = [k for k in PAIR_KEYS if k in runs.columns] + ["_batch", "_delta"]
    wn = runs[runs["method"] == "wn"].copy()
    gd = runs[runs["method"] == "gd"]
    keep = [*cell_keys(runs), "trial", "instance_id", "run_id", "error_l1", "_batch", "_delta"]
    wn = wn[list(dict.fromkeys(keep))].rename(columns={"error_l1": "error_wn"})
    wn["_row"] = np.arange(len(wn))
    gd = gd[[*keys, "eta", "run_id", "error_l1"]].rename(
        columns={"run_id": "gd_run_id", "error_l1": "error_gd", "eta": "gd_eta"}
    )
    gd = gd.drop_duplicates([*keys, "gd_eta"], keep="first")

    # 1) exact eta match
    exact = wn.merge(gd, left_on=[*keys, "eta"], right_on=[*keys, "gd_eta"], how="inner")
    # 2) fallback: keys with exactly one GD eta
    rest = wn[~wn["_row"].isin(exact["_row"])]
    n_eta = gd.groupby(keys, dropna=False)["gd_eta"].transform("size")
    single = gd[n_eta == 1]
    fallback = rest.merge(single, on=keys, how="inner")
    paired = pd.concat([exact, fallback], ignore_index=True)
    unpaired = wn[~wn["_row"].isin(paired["_row"])]
    out = pd.concat([paired, unpaired], ignore_index=True).sort_values("_row")
    out = out.drop(columns=["_row", "_batch", "_delta"]).reset_index(drop=True)

    e_gd = pd.to_numeric(out["error_gd"], errors="coerce").astype(float)
    e_wn = pd.to_numeric(out["error_wn"], errors="coerce").astype(float)
    reason = pd.Series(None, index=out.index, dtype=object)
    reason[e_wn == 0] = "wn_error_zero"
    reason[e_gd == 0] = "gd_error_zero"
    reason[~(np.isfinite(e_gd) & np.isfinite(e_wn))] = "non_finite"
    reason[out["gd_run_id"].isna()] = "unpaired"
    valid = reason.isna()
    out["ratio"] = (e_gd / e_wn).where(valid)
    out["log10_ratio"] = np.log10(out["ratio"])
    out["dropped"] = reason
    return out


def ratio_stats(ratios: pd.DataFrame) -> pd.DataFrame:
    """Aggregate ``paired_ratios`` per WN cell.

    Returns one row per WN cell: cell keys, ``n`` (WN runs), ``n_ratio`` (valid ratios),
    ``n_dropped`` (paired but non-finite / zero error), ``n_unpaired``, ``ratio_median``,
    ``ratio_gmean`` (geometric mean = 10 ** mean(log10 ratio) = exp(mean(ln ratio))),
    ``ratio_q25``, ``ratio_q75`` and ``log10_ratio_median`` (= log10 of ``ratio_median``).
    Ratios > 1 mean WN-GD ends closer to the minimum-l1 solution than GD.
    """
    keys = cell_keys(ratios)
    work = ratios[keys].copy()
    work["ratio"] = ratios["ratio"]
    work["log10_ratio"] = ratios["log10_ratio"]
    work["valid"] = ratios["dropped"].isna().astype(int)
    work["unpaired"] = (ratios["dropped"] == "unpaired").astype(int)
    g = work.groupby(keys, dropna=False, sort=True)
    out = pd.DataFrame(
        {
            "n": g.size(),
            "n_ratio": g["valid"].sum(),
            "n_unpaired": g["unpaired"].sum(),
        }
    )
    out["n_dropped"] = out["n"] - out["n_ratio"] - out["n_unpaired"]
    out["ratio_median"] = g["ratio"].median()
    out["ratio_gmean"] = 10.0 ** g["log10_ratio"].mean()
    out["ratio_q25"] = g["ratio"].quantile(0.25)
    out["ratio_q75"] = g["ratio"].quantile(0.75)
    out["log10_ratio_median"] = np.log10(out["ratio_median"])
    return out.reset_index()


def summary_table(runs: pd.DataFrame, threshold: float = 1e-3) -> pd.DataFrame:
    """``cell_stats`` with ``ratio_stats`` columns (prefixed ``paired_``) joined on WN cells.

    GD rows have NaN ratio columns. One row per cell.
    """
    stats = cell_stats(runs, threshold)
    if not (runs["method"] == "wn").any():
        return stats
    rs = ratio_stats(paired_ratios(runs))
    keys = cell_keys(rs)
    rs = rs.rename(columns={c: f"paired_{c}" for c in rs.columns if c not in keys})
    # Null keys must match null keys: merge on a string rendering of the keys.
    left = stats.assign(_key=_key_strings(stats, keys))
    right = rs.assign(_key=_key_strings(rs, keys)).drop(columns=keys)
    return left.merge(right, on="_key", how="left").drop(columns="_key")


def _key_strings(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    def fmt(v: object) -> str:
        if pd.isna(v):
            return "<NA>"
        return repr(float(v)) if isinstance(v, (int, float, np.number)) else str(v)

    parts = [df[k].astype(object).map(fmt) for k in keys]
    return pd.Series(["|".join(t) for t in zip(*parts)], index=df.index, dtype=object)
