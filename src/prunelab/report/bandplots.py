"""Charts of a multi-seed summary: mean curves with 95 % confidence bands (PNG and SVG).

Reads the summary only; never touches a model. File names match ``plots.PLOTS``, so a
report links the same names whether it shows one seed or several.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes

from prunelab.report.plots import save_charts
from prunelab.study.aggregate import Summary

__all__ = ["plot_summary"]


def _by_method(summary: Summary) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in summary.rows:
        out.setdefault(row["method"], []).append(row)
    return {m: sorted(rows, key=lambda r: r["sparsity_pct"]) for m, rows in out.items()}


def _draw(ax: Axes, summary: Summary, x: str, y: str, scale: float) -> None:
    for method, rows in _by_method(summary).items():
        xs = [r[x] for r in rows]
        (line,) = ax.plot(xs, [r[f"{y}_mean"] * scale for r in rows], marker="o", ms=3,
                          label=method)
        if all(r[f"{y}_ci_low"] is not None for r in rows):
            ax.fill_between(xs, [r[f"{y}_ci_low"] * scale for r in rows],
                            [r[f"{y}_ci_high"] * scale for r in rows],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    for dense in summary.dense:
        value = dense[f"{y}_mean"] * scale
        name = "dense" if len(summary.dense) == 1 else f"{dense['label']} dense"
        ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=f"{name} ({value:.4g})")
    n = sorted({r["n"] for r in summary.rows})
    ax.text(0.01, 0.01, f"mean of {'/'.join(map(str, n))} seed(s); bands: 95 % CI",
            transform=ax.transAxes, fontsize=8, color="grey")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_summary(summary: Summary, out_dir: Path) -> list[Path]:
    """Write every chart of ``PLOTS`` with confidence bands as PNG and SVG; returns the paths."""
    if not summary.rows:
        raise ValueError("no summary rows to plot")
    return save_charts(lambda ax, c: _draw(ax, summary, c.x, c.y, c.scale), Path(out_dir))
