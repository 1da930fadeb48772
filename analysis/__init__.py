"""wnsweep's analysis stage: results folder -> tidy DataFrame -> statistics, figures, report.

    import analysis
    runs = analysis.load("results/fig1-alpha")     # one row per run, instances joined in
    stats = analysis.cell_stats(runs)              # per grid cell, over trials
    ratios = analysis.paired_ratios(runs)          # per WN run: error(GD) / error(WN-GD)
    crossings = analysis.contours(runs)            # the success contour per column, with CIs
    analysis.write_report("results/fig1-alpha")    # figures + tables + index.html

``analysis.plots`` and ``analysis.report`` import matplotlib lazily (only when used).
"""

from analysis.aggregate import cell_stats, paired_ratios, ratio_stats, summary_table
from analysis.contours import contours
from analysis.load import ResultsNotFoundError, ShardError, load, load_provenance

__all__ = [
    "ResultsNotFoundError",
    "ShardError",
    "cell_stats",
    "contours",
    "load",
    "load_provenance",
    "paired_ratios",
    "ratio_stats",
    "summary_table",
    "write_report",
]


def write_report(*args, **kwargs):  # noqa: D401 - thin lazy wrapper
    """See ``analysis.report.write_report`` (imported on first use: it pulls in matplotlib)."""
    from analysis.report import write_report as _write_report

    return _write_report(*args, **kwargs)
