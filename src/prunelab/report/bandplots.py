"""Charts of a multi-seed summary: mean curves with 95 % confidence bands (PNG and SVG).

Reads the summary only; never touches a model. File names match ``plots.PLOTS``, so a
report links the same names whether it shows one seed or several.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes

from prunelab.report.plots import Chart, save_charts
from prunelab.study.aggregate import VALID_RANGE, Summary, clipped_interval

__all__ = ["draw_summary", "plot_summary"]


def _by_method(summary: Summary) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in summary.rows:
        out.setdefault(row["method"], []).append(row)
    return {m: sorted(rows, key=lambda r: r["sparsity_pct"]) for m, rows in out.items()}


def _log_floor(summary: Summary, chart: Chart) -> float:
    """Where a band cut at 0 ends on a log axis, which cannot show 0: half the lowest positive
    value drawn (as in report.html); 0 when no band reaches 0 or the axis is linear."""
    bands = [b for r in summary.rows if (b := clipped_interval(r, chart.y)) is not None]
    if chart.axes.get("yscale") != "log" or all(low > 0 for low, _ in bands):
        return 0.0
    values = [r[f"{chart.y}_mean"] for r in summary.rows] + [low for low, _ in bands]
    return min((v for v in values if v > 0), default=0.0) * chart.scale / 2


def _band(ax: Axes, rows: list[dict[str, Any]], chart: Chart, color: str, floor: float) -> None:
    """The interval cut at the quantity's valid range (and at ``floor``); none unless every
    point has one."""
    bands = [clipped_interval(r, chart.y) for r in rows]
    if any(b is None for b in bands):
        return
    band = ax.fill_between([r[chart.x] for r in rows],
                           [max(b[0] * chart.scale, floor) for b in bands],
                           [b[1] * chart.scale for b in bands], color=color, alpha=0.2,
                           linewidth=0)
    # Autoscaling adds no margin past the valid range (no 105 % accuracy on the axis) and
    # none below the floor, so that a band cut there runs to the bottom.
    edges = [v * chart.scale for v in VALID_RANGE[chart.y] if math.isfinite(v)]
    band.sticky_edges.y.extend([*edges, floor] if floor > 0 else edges)


def _caption(summary: Summary) -> str:
    if summary.max_n < 2:
        return "one trained model per curve: no confidence bands"
    n = sorted({r["n"] for r in summary.rows})
    return f"mean of {'/'.join(map(str, n))} seed(s); bands: 95 % CI, cut at the valid range"


def draw_summary(ax: Axes, summary: Summary, chart: Chart) -> None:
    """One chart of ``plots.CHARTS``: a mean curve per method with its band, dense lines."""
    floor = _log_floor(summary, chart)
    for method, rows in _by_method(summary).items():
        (line,) = ax.plot([r[chart.x] for r in rows],
                          [r[f"{chart.y}_mean"] * chart.scale for r in rows], marker="o", ms=3,
                          label=method)
        _band(ax, rows, chart, line.get_color(), floor)
    for dense in summary.dense:
        value = dense[f"{chart.y}_mean"] * chart.scale
        name = "dense" if len(summary.dense) == 1 else f"{dense['label']} dense"
        ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=f"{name} ({value:.4g})")
    ax.text(0.01, 0.01, _caption(summary), transform=ax.transAxes, fontsize=8, color="grey")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_summary(summary: Summary, out_dir: Path) -> list[Path]:
    """Write every chart of ``PLOTS`` with confidence bands as PNG and SVG; returns the paths."""
    if not summary.rows:
        raise ValueError("no summary rows to plot")
    return save_charts(lambda ax, chart: draw_summary(ax, summary, chart), Path(out_dir))
