"""``write_report``: every figure the data supports, summary tables and an index.html.

Output folder (local)::

    <out_dir>/index.html                 figures, tables, skipped figures with reasons, provenance
    <out_dir>/<figure>[__<k>-<v>...].png / .pdf   one pair per figure and slice
    <out_dir>/summary.csv, summary.md    cell_stats + ratio_stats (``aggregate.summary_table``)
    <out_dir>/paired_ratios.csv          one row per WN-GD run (``aggregate.paired_ratios``)

Each figure draws the rows of one model family (``analysis.figures``, one module per family): a
folder holding several families reports each. A figure whose parameters the sweep lacks (e.g. a
single ``s``) is skipped with a reason; a
figure draws one slice of the sweep, so when other parameters vary (e.g. ``init``) one file per
slice is written (``plots.split_by_extra``). Corrupt shards are skipped with a warning and listed.
"""

from __future__ import annotations

import html
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from analysis import plots
from analysis.aggregate import paired_ratios, summary_table
from analysis.figures import all_figures
from analysis.figures.common import FIGURES as COMMON_FIGURES
from analysis.load import load, load_provenance, resolve
from pipeline import families


@dataclass
class ReportResult:
    """What ``write_report`` wrote. Paths are absolute."""

    out_dir: Path
    figures: list[Path] = field(default_factory=list)  # PNG and PDF files
    skipped: dict[str, str] = field(default_factory=dict)  # figure title -> reason
    tables: dict[str, Path] = field(default_factory=dict)  # name -> file
    index: Path | None = None
    n_runs: int = 0
    n_cells: int = 0
    skipped_shards: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the command line."""
        n_fig = sum(1 for p in self.figures if p.suffix == ".png")
        lines = [
            f"report: {self.index or self.out_dir}",
            f"  {self.n_runs} runs in {self.n_cells} cells; {n_fig} figure(s) written "
            f"(PNG + PDF), {len(self.skipped)} skipped",
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines.append("  tables: " + ", ".join(p.name for p in self.tables.values()))
        if self.skipped_shards:
            lines.append(f"  WARNING: {len(self.skipped_shards)} corrupt shard(s) skipped")
        return "\n".join(lines)


COMMON_NAMES = {fig.name for fig in COMMON_FIGURES}


def family_rows(runs: pd.DataFrame, family: str) -> pd.DataFrame:
    """The rows of one model family (a null ``family`` is a run of the default family written
    before the column existed)."""
    if "family" not in runs.columns:
        return runs if family == families.DEFAULT_FAMILY else runs.iloc[:0]
    return runs[runs["family"].astype(object).map(families.family_name) == family]


# ----------------------------------------------------------------------------- writing
def _slug(fixed: dict) -> str:
    parts = [f"{k}-{plots._fmt(v)}" for k, v in fixed.items()]
    return "".join("__" + re.sub(r"[^A-Za-z0-9.+-]", "_", p) for p in parts)


def _slice_label(fixed: dict) -> str:
    return ", ".join(f"{k}={plots._fmt(v)}" for k, v in fixed.items())


def _markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 significant digits, nulls blank)."""

    def cell(v: Any) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}"
        return str(v).replace("|", r"\|")

    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def _default_out_dir(results: str, runs: pd.DataFrame) -> Path:
    loc = resolve(results)
    if loc.is_local:
        return Path(loc.root) / "report"
    names = runs["sweep"].dropna().unique() if "sweep" in runs else []
    name = names[0] if len(names) == 1 else loc.root.rstrip("/").rsplit("/", 1)[-1]
    return Path.cwd() / f"report-{name}"


def write_report(
    results: str, out_dir: str | None = None, threshold: float = 1e-3
) -> ReportResult:
    """Write the report of the results folder ``results`` (path or URI) and return what was written.

    ``out_dir`` defaults to ``<results>/report`` for a local folder, else ``./report-<sweep>``.
    ``threshold``: recovery threshold on rel_error_l1 (tables and recovery heatmaps).
    """
    runs = load(results, on_corrupt="skip")
    out = Path(out_dir) if out_dir is not None else _default_out_dir(results, runs)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    res = ReportResult(out_dir=out, n_runs=len(runs),
                       skipped_shards=list(runs.attrs.get("skipped_shards", [])))

    jobs: list[tuple[str, str, Callable, dict, pd.DataFrame]] = []  # (label, stem, fn, kw, data)
    options = {"threshold": threshold}
    by_family = {name: family_rows(runs, name) for name in families.FAMILIES}
    for fig in all_figures():
        rows = by_family[fig.family]
        if rows.empty or (fig.applies is not None and not fig.applies(rows)):
            continue  # a figure of another family or kind of sweep: not listed as skipped
        kwargs = {key: options[key] for key in fig.options}
        reason = next((r for r in (c(rows) for c in fig.needs) if r), None)
        if reason:
            res.skipped[fig.title] = reason
            continue
        for fixed, part in plots.split_by_extra(rows, fig.columns(rows)):
            label = f"{fig.title} ({_slice_label(fixed)})" if fixed else fig.title
            reason = next((r for r in (c(part) for c in fig.needs) if r), None)
            if reason:
                res.skipped[label] = reason
                continue
            shared = fig.name in COMMON_NAMES and fig.family != families.DEFAULT_FAMILY
            stem = fig.name + (f"__{fig.family}" if shared else "")  # one file per family
            jobs.append((label, stem + _slug(fixed), fig.draw, kwargs, part))

    entries: list[tuple[str, str, str]] = []  # (title, png name, pdf name)
    for (label, stem, *_), error in zip(jobs, _render_all(jobs, out)):
        if error:  # one bad figure must not sink the report
            warnings.warn(f"figure {label!r} failed: {error}", stacklevel=2)
            res.skipped[label] = f"failed: {error}"
            continue
        res.figures += [out / f"{stem}.png", out / f"{stem}.pdf"]
        entries.append((label, f"{stem}.png", f"{stem}.pdf"))

    summary = summary_table(runs, threshold)
    res.n_cells = len(summary)
    res.tables["summary_csv"] = out / "summary.csv"
    summary.to_csv(res.tables["summary_csv"], index=False)
    res.tables["summary_md"] = out / "summary.md"
    res.tables["summary_md"].write_text(_markdown(summary))
    if (runs["method"] == "wn").any():
        res.tables["paired_ratios_csv"] = out / "paired_ratios.csv"
        paired_ratios(runs).to_csv(res.tables["paired_ratios_csv"], index=False)

    res.index = out / "index.html"
    res.index.write_text(_index_html(results, runs, summary, entries, res, threshold))
    return res


# ----------------------------------------------------------------------------- rendering
#: Reports with at least this many figures are drawn by one process per CPU (a figure takes about
#: a second to lay out and save; a worker process takes about two to start).
PARALLEL_FROM = 6


def _render(job: tuple[str, str, Callable, dict, pd.DataFrame], out: Path) -> str | None:
    """Draw one figure and save it as PNG and PDF; returns an error message or None."""
    label, stem, fn, kwargs, part = job
    try:
        fig = fn(part, **kwargs)
        for ext in ("png", "pdf"):
            fig.savefig(out / f"{stem}.{ext}", dpi=150 if ext == "png" else None)
            # the layout is settled by the first save: the second format reuses it
            fig.set_layout_engine("none")
    except Exception as exc:
        return repr(exc)
    return None


def _render_all(jobs: list, out: Path) -> list[str | None]:
    """Render every job, in processes when there are many; results in job order."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(jobs), os.cpu_count() or 1)
    if len(jobs) < PARALLEL_FROM or workers < 2:
        return [_render(job, out) for job in jobs]
    # spawn, not fork: the caller may hold threads (Ray, gRPC) that must not be forked
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_render, jobs, [out] * len(jobs)))


# ----------------------------------------------------------------------------- index.html
_PROVENANCE_KEYS = {
    "spec hash": ("spec_hash", "spec_sha256", "hash"),
    "version": ("version", "package_version", "wnsweep_version"),
    "git commit": ("git_commit", "commit", "git"),
}
_MAX_HTML_ROWS = 500


def _provenance(results: str, runs: pd.DataFrame) -> tuple[list[tuple[str, str]], dict, str | None]:
    prov = load_provenance(results)
    manifest = prov["manifest"] or {}
    rows = [("results", str(resolve(results).uri))]
    for label, keys in _PROVENANCE_KEYS.items():
        val = next((manifest[k] for k in keys if k in manifest and manifest[k] is not None), None)
        if isinstance(val, dict):
            val = val.get("commit") or val.get("sha") or json.dumps(val)
        if val is not None:
            rows.append((label, str(val)))
    hashes = runs.attrs.get("spec_hashes", [])
    if hashes:
        rows.append(("spec hash (shards)", ", ".join(hashes)))
    spent = _adaptive_cost(runs, prov["sweep_yaml"])
    if spent:
        rows.append(("runs spent (adaptive)", spent))
    return rows, manifest, prov["sweep_yaml"]


def _adaptive_cost(runs: pd.DataFrame, sweep_yaml: str | None) -> str | None:
    """For an adaptive sweep: its runs against the full grid at the same finest resolution."""
    if not runs.attrs.get("adaptive") or not sweep_yaml:
        return None
    from pipeline import rounds
    from pipeline.spec import SpecError, parse_spec

    try:
        full = rounds.full_grid_runs(parse_spec(sweep_yaml, source="sweep.yaml"))
    except (SpecError, OSError, ValueError):
        return None
    return (f"{len(runs)} runs, {len(runs) / full:.1%} of the {full} runs of the full grid at "
            "the same finest resolution with the maximum trials per cell")


def _index_html(
    results: str,
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    entries: list[tuple[str, str, str]],
    res: ReportResult,
    threshold: float,
) -> str:
    e = html.escape
    names = runs["sweep"].dropna().unique() if "sweep" in runs else []
    title = f"wnsweep report: {', '.join(map(str, names)) or e(str(results))}"
    prov_rows, manifest, sweep_yaml = _provenance(results, runs)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}figure{margin:1.5em 0}"
        ".warn{color:#a00}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{len(runs)} runs, {len(summary)} cells; recovery threshold rel_error_l1 &le; "
        f"{threshold:g}.</p>",
        "<h2>Provenance</h2><table>",
        *[f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in prov_rows],
        "</table>",
    ]
    if manifest:
        parts.append("<details><summary>manifest.json</summary><pre>"
                     f"{e(json.dumps(manifest, indent=2, default=str))}</pre></details>")
    if sweep_yaml:
        parts.append(f"<details><summary>sweep.yaml</summary><pre>{e(sweep_yaml)}</pre></details>")
    if res.skipped_shards:
        parts.append("<p class='warn'>Corrupt shards skipped:</p><ul>")
        parts += [f"<li class='warn'>{e(p)}</li>" for p in res.skipped_shards]
        parts.append("</ul>")
    parts.append("<h2>Figures</h2>")
    for label, png, pdf in entries:
        parts.append(
            f"<figure><img src='{e(png)}' alt='{e(label)}'><figcaption>{e(label)} "
            f"(<a href='{e(png)}'>PNG</a>, <a href='{e(pdf)}'>PDF</a>)</figcaption></figure>"
        )
    if res.skipped:
        parts.append("<h2>Skipped figures</h2><ul>")
        parts += [f"<li>{e(k)}: {e(v)}</li>" for k, v in res.skipped.items()]
        parts.append("</ul>")
    parts.append("<h2>Tables</h2><ul>")
    parts += [f"<li><a href='{e(p.name)}'>{e(p.name)}</a></li>" for p in res.tables.values()]
    parts.append("</ul>")
    shown = summary.head(_MAX_HTML_ROWS)
    if len(summary) > len(shown):
        parts.append(f"<p>First {len(shown)} of {len(summary)} rows; see summary.csv.</p>")
    parts.append(shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}"))
    parts.append("</body></html>\n")
    return "\n".join(parts)
