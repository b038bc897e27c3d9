"""Write everything a summary is shown as: summary.csv/json, band plots, report.md, report.html."""

from __future__ import annotations

from pathlib import Path

from prunelab.aggregate import Summary
from prunelab.bandplots import plot_summary
from prunelab.htmlreport import write_html
from prunelab.multirun import write_summary
from prunelab.seedreport import write_summary_report

__all__ = ["write_all"]


def write_all(summary: Summary, out_dir: Path) -> tuple[Path, Path]:
    """Write the summary and its reports into ``out_dir``; returns (report.md, report.html)."""
    out_dir = Path(out_dir)
    write_summary(out_dir, summary)
    plot_summary(summary, out_dir / "plots")
    return write_summary_report(summary, out_dir), write_html(summary, out_dir)
