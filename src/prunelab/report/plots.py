"""Charts of sweep results (PNG and SVG). Reads saved results only; never touches a model."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from prunelab.files import atomic_write
from prunelab.study.runfolder import Results  # noqa: E402

__all__ = ["CHARTS", "PLOTS", "Chart", "plot_results", "save_charts"]


def _by_method(results: Results) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in results.rows:
        out.setdefault(row["method"], []).append(row)
    return {m: sorted(rows, key=lambda r: r["sparsity_pct"]) for m, rows in out.items()}


def _draw(ax: Axes, results: Results, x: str, y: str, scale: float) -> None:
    for method, rows in _by_method(results).items():
        ax.plot([r[x] for r in rows], [r[y] * scale for r in rows], marker="o", label=method)
    dense = results.dense[y] * scale
    ax.axhline(dense, color="grey", linestyle="--", label=f"dense ({dense:.4g})")
    ax.grid(alpha=0.3)
    ax.legend()


@dataclass(frozen=True)
class Chart:
    """One chart: which result columns it draws and how its axes read."""

    x: str
    """Result column on the x axis."""
    y: str
    """Result column on the y axis (``accuracy`` or ``loss``)."""
    scale: float
    """Factor applied to y (100 shows accuracy in percent)."""
    axes: dict[str, str]
    """Keyword arguments of ``Axes.set``: labels, title, log scales."""


_K_LABEL = "sparsity k (% pruned per hidden layer)"
CHARTS: dict[str, Chart] = {
    "accuracy_vs_sparsity": Chart("sparsity_pct", "accuracy", 100, {
        "xlabel": _K_LABEL, "ylabel": "test accuracy (%)", "title": "Test accuracy vs sparsity"}),
    "loss_vs_sparsity": Chart("sparsity_pct", "loss", 1, {
        "xlabel": _K_LABEL, "ylabel": "test cross-entropy", "title": "Test loss vs sparsity",
        "yscale": "log"}),
    "accuracy_vs_params": Chart("params_remaining", "accuracy", 100, {
        "xlabel": "parameters that can still change the output (log)",
        "ylabel": "test accuracy (%)", "title": "Test accuracy vs remaining parameters",
        "xscale": "log"}),
}
PLOTS = tuple(CHARTS)


def save_charts(draw: Callable[[Axes, Chart], None], out_dir: Path) -> list[Path]:
    """Draw every chart of ``CHARTS`` with ``draw`` and write it as PNG and SVG atomically."""
    written = []
    for name, chart in CHARTS.items():
        fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        try:
            draw(ax, chart)
            ax.set(**chart.axes)
            for fmt in ("png", "svg"):
                buf = io.BytesIO()
                fig.savefig(buf, format=fmt, dpi=120)
                path = Path(out_dir) / f"{name}.{fmt}"
                atomic_write(path, buf.getvalue())
                written.append(path)
        finally:
            plt.close(fig)
    return written


def plot_results(results: Results, out_dir: Path) -> list[Path]:
    """Write every chart of ``PLOTS`` as PNG and SVG into ``out_dir``; returns the paths."""
    if not results.rows:
        raise ValueError("no sweep results to plot")
    return save_charts(lambda ax, c: _draw(ax, results, c.x, c.y, c.scale), out_dir)
