"""Write everything a summary is shown as: summary.csv/json, band plots, report.md, report.html."""

from __future__ import annotations

from pathlib import Path

from prunelab.aggregate import Summary
from prunelab.bandplots import plot_summary
from prunelab.htmlreport import write_html
from prunelab.multirun import seed_dirs, summarize_run, write_summary
from prunelab.plots import plot_results
from prunelab.report import write_report
from prunelab.results import load_results
from prunelab.seedreport import write_summary_report

__all__ = ["write_all", "write_run_reports"]


def write_all(summary: Summary, out_dir: Path) -> tuple[Path, Path]:
    """Write the summary and its reports into ``out_dir``; returns (report.md, report.html)."""
    out_dir = Path(out_dir)
    write_summary(out_dir, summary)
    plot_summary(summary, out_dir / "plots")
    return write_summary_report(summary, out_dir), write_html(summary, out_dir)


def write_run_reports(run_dir: Path, seeds: tuple[int, ...] | None = None) -> tuple[Path, Path]:
    """All reports of a run folder from its saved results; returns (report.md, report.html).

    A multi-seed folder (``seed<k>/`` inside) gets the summary over ``seeds`` (default: all).
    """
    run_dir = Path(run_dir)
    if seed_dirs(run_dir):
        return write_all(summarize_run(run_dir, seeds), run_dir)
    results = load_results(run_dir)
    plot_results(results, run_dir / "plots")
    return write_report(results, run_dir), write_html(summarize_run(run_dir), run_dir)
