"""Charts of sweep results (PNG and SVG). Reads saved results only; never touches a model."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from prunelab.results import Results, atomic_write  # noqa: E402

__all__ = ["PLOTS", "plot_results"]

PLOTS = ("accuracy_vs_sparsity", "loss_vs_sparsity", "accuracy_vs_params")


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


def _accuracy_vs_sparsity(ax: Axes, results: Results) -> None:
    _draw(ax, results, "sparsity_pct", "accuracy", 100)
    ax.set(xlabel="sparsity k (% pruned per hidden layer)", ylabel="test accuracy (%)",
           title="Test accuracy vs sparsity")


def _loss_vs_sparsity(ax: Axes, results: Results) -> None:
    _draw(ax, results, "sparsity_pct", "loss", 1)
    ax.set(xlabel="sparsity k (% pruned per hidden layer)", ylabel="test cross-entropy",
           title="Test loss vs sparsity", yscale="log")


def _accuracy_vs_params(ax: Axes, results: Results) -> None:
    _draw(ax, results, "params_remaining", "accuracy", 100)
    ax.set(xlabel="parameters that can still change the output (log)",
           ylabel="test accuracy (%)", title="Test accuracy vs remaining parameters",
           xscale="log")


_DRAWERS: dict[str, Callable[[Axes, Results], None]] = {
    "accuracy_vs_sparsity": _accuracy_vs_sparsity,
    "loss_vs_sparsity": _loss_vs_sparsity,
    "accuracy_vs_params": _accuracy_vs_params,
}


def plot_results(results: Results, out_dir: Path) -> list[Path]:
    """Write every chart of ``PLOTS`` as PNG and SVG into ``out_dir``; returns the paths."""
    if not results.rows:
        raise ValueError("no sweep results to plot")
    written = []
    for name in PLOTS:
        fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        try:
            _DRAWERS[name](ax, results)
            for fmt in ("png", "svg"):
                buf = io.BytesIO()
                fig.savefig(buf, format=fmt, dpi=120)
                path = out_dir / f"{name}.{fmt}"
                atomic_write(path, buf.getvalue())
                written.append(path)
        finally:
            plt.close(fig)
    return written
