"""Write every report of a run folder: plots, report.md, report.html (and summary.csv/json)."""

from __future__ import annotations

from pathlib import Path

from prunelab.report.bandplots import plot_summary
from prunelab.report.html import write_html
from prunelab.report.markdown import write_report
from prunelab.report.plots import plot_results
from prunelab.report.speed import plot_bench
from prunelab.report.summary import write_summary_report
from prunelab.study.aggregate import Summary
from prunelab.study.multiseed import seed_dirs, summarize_run, write_summary
from prunelab.study.runfolder import load_results, read_bench

__all__ = ["write_all", "write_run_reports", "write_seed_report"]


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
    bench_rows = read_bench(run_dir)
    if bench_rows:
        plot_bench(bench_rows, run_dir / "plots")
    return write_report(results, run_dir), write_html(summarize_run(run_dir), run_dir)


def write_seed_report(run_dir: Path) -> Path:
    """Plots and report.md of one seed folder of a multi-seed run; returns report.md."""
    results = load_results(run_dir)
    plot_results(results, Path(run_dir) / "plots")
    return write_report(results, Path(run_dir))
