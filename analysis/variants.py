"""Each run's *variant*: its method with the gradient's kind of noise, as one label for a figure's
hue. An SGD run is a GD run with ``batch`` set (the rows of A per step), a label-noise GD run one
with ``label_noise`` > 0 (the labels' noise per step); WN-GD takes both keys too.

Labels: ``GD``, ``SGD (batch 4)``, ``label-noise GD (delta 0.1)``, ``label-noise SGD (batch 4,
delta 0.1)``, ``WN-GD``, ``WN-GD, batch 4``, ``WN-GD, label noise 0.1``, ``WN-GD, batch 4, label
noise 0.1``. Their order (``variant_order``): method (GD first), then increasing label noise, then the full
batch before mini-batches by increasing batch. A missing or null ``batch`` is the full batch and
a missing or null ``label_noise`` is no label noise (folders written before these keys); a
``batch`` of M rows (the instance's M) is the full batch too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import families

def _column(runs: pd.DataFrame, name: str, fill: float) -> pd.Series:
    """``runs[name]`` as float, ``fill`` where missing or null."""
    if name not in runs:
        return pd.Series(fill, index=runs.index, dtype=float)
    return pd.to_numeric(runs[name], errors="coerce").astype(float).fillna(fill)


def _label(method: str, batch: float, delta: float) -> str:
    name = families.METHOD_NAMES.get(method, str(method))
    full, clean = np.isinf(batch), delta == 0
    if method == "gd":
        if clean:
            return name if full else f"SGD (batch {batch:g})"
        return (f"label-noise GD (delta {delta:g})" if full
                else f"label-noise SGD (batch {batch:g}, delta {delta:g})")
    parts = [name] + ([] if full else [f"batch {batch:g}"])
    return ", ".join(parts + ([] if clean else [f"label noise {delta:g}"]))


def gradient_keys(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: ``batch`` (inf = full batch: null, or at least the instance's M) and ``delta``
    (the label noise; 0 = none), the two keys that make a gradient stochastic."""
    batch = _column(runs, "batch", np.inf)
    if "M" in runs:
        batch = batch.where(batch < pd.to_numeric(runs["M"], errors="coerce"), np.inf)
    return pd.DataFrame({"batch": batch, "delta": _column(runs, "label_noise", 0.0)},
                        index=runs.index)


def _keys(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: method, batch (inf = full batch) and label noise (0 = none)."""
    return gradient_keys(runs).assign(method=runs["method"].astype(object))


def variant_order(runs: pd.DataFrame) -> list[str]:
    """The distinct variants of ``runs``, in the stable order described above."""
    methods = list(families.METHOD_NAMES)
    combos = _keys(runs).drop_duplicates()
    rank = combos["method"].map(lambda m: methods.index(m) if m in methods else len(methods))
    combos = combos.assign(rank=rank, mini=np.isfinite(combos["batch"]))
    combos = combos.sort_values(["rank", "method", "delta", "mini", "batch"])
    return list(dict.fromkeys(_label(m, b, d) for m, b, d in
                              zip(combos["method"], combos["batch"], combos["delta"])))


def variants(runs: pd.DataFrame) -> pd.Series:
    """Each run's variant label, an ordered categorical (categories: ``variant_order``)."""
    keys = _keys(runs)
    labels = [_label(m, b, d) for m, b, d in zip(keys["method"], keys["batch"], keys["delta"])]
    dtype = pd.CategoricalDtype(variant_order(runs), ordered=True)
    return pd.Series(labels, index=runs.index, dtype=dtype, name="variant")


def with_variant(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``variant`` column (a copy)."""
    return runs.assign(variant=variants(runs))


def is_noisy_gradient(runs: pd.DataFrame) -> pd.Series:
    """True for the runs with a mini-batch or label noise (SGD, label-noise GD, and WN-GD so)."""
    keys = _keys(runs)
    return np.isfinite(keys["batch"]) | (keys["delta"] > 0)
