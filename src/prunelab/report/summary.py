"""``report.md`` of a multi-seed run (or several runs): every figure as mean ± 95 % CI.

Reads the summary only; never touches a model. The tables and sentences here are shared with
the HTML report (``htmlreport.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from prunelab.files import atomic_write
from prunelab.report.markdown import bullet_section
from prunelab.report.plots import PLOTS
from prunelab.study.aggregate import Summary

__all__ = [
    "analysis",
    "comparisons_table",
    "figures_table",
    "fmt",
    "render_summary_report",
    "results_table",
    "title_of",
    "write_summary_report",
]

REPORT = "report.md"
Table = tuple[list[str], list[list[str]]]


def fmt(row: dict[str, Any], prefix: str, scale: float = 1.0, digits: int = 2) -> str:
    """``"85.12 ± 0.34"``: mean ± CI half-width; the mean alone for one seed."""
    mean, low, high = (row.get(f"{prefix}_{s}") for s in ("mean", "ci_low", "ci_high"))
    if mean is None:
        return ""
    if low is None or high is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {(high - low) / 2 * scale:.{digits}f}"


def _cells(r: dict[str, Any]) -> list[str]:
    return [fmt(r, "accuracy", 100), fmt(r, "loss", 1, 4),
            f"{100 * r.get('effective_sparsity', float('nan')):.1f}"]


def results_table(summary: Summary) -> Table:
    """Accuracy (%), loss and effective sparsity per method and k: one line per k with a
    column group per method, or one line per method and k when there are more than three."""
    methods = list(dict.fromkeys(r["method"] for r in summary.rows))
    names = ["acc (%)", "loss", "eff. sparsity (%)"]
    if len(methods) > 3:
        body = [[r["method"], f"{r['sparsity_pct']:g}", *_cells(r)] for r in summary.rows]
        return ["method", "k (%)", *names], body
    by_key = {(r["method"], r["sparsity_pct"]): r for r in summary.rows}
    headers = ["k (%)", *(f"{m} {name}" for m in methods for name in names)]
    body = []
    for k in sorted({r["sparsity_pct"] for r in summary.rows}):
        line = [f"{k:g}"]
        for m in methods:
            r = by_key.get((m, k))
            line += _cells(r) if r else ["", "", ""]
        body.append(line)
    return headers, body


def figures_table(summary: Summary) -> Table:
    """Per method: AUC and the largest k within 1 point of dense."""
    headers = ["method", "AUC (acc. vs sparsity, %)", "largest k within 1 pt of dense (%)",
               "k range over seeds"]
    body = []
    for m in summary.methods:
        span = (f"{m['k_within_1pt_min']:g}–{m['k_within_1pt_max']:g}"
                if "k_within_1pt_min" in m else "")
        body.append([m["method"], fmt(m, "auc", 100), fmt(m, "k_within_1pt", 1, 1), span])
    return headers, body


def comparisons_table(summary: Summary) -> Table:
    """Paired differences a - b over the same seeds, in accuracy points (AUC in %)."""
    headers = ["a", "b", "k (%)", "n", "a - b (points)", "95 % CI", "verdict"]
    body = []
    for c in summary.comparisons:
        low, high = c["diff_ci_low"], c["diff_ci_high"]
        ci = f"[{100 * low:+.2f}, {100 * high:+.2f}]" if low is not None else "n/a"
        k = c["sparsity_pct"] if isinstance(c["sparsity_pct"], str) else f"{c['sparsity_pct']:g}"
        body.append([c["a"], c["b"], k, str(c["diff_n"]), f"{100 * c['diff_mean']:+.2f}", ci,
                     c["verdict"]])
    return headers, body


def _ks(values: Sequence[Any]) -> str:
    return ", ".join(f"{k:g}" for k in values)


def _pair_sentence(a: str, b: str, rows: list[dict[str, Any]]) -> str:
    at_k = [r for r in rows if not isinstance(r["sparsity_pct"], str)]
    above = [r["sparsity_pct"] for r in at_k if r["verdict"] == f"{a} > {b}"]
    below = [r["sparsity_pct"] for r in at_k if r["verdict"] == f"{a} < {b}"]
    parts = [f"- **{a}** vs **{b}** (paired over the same seeds, 95 %):"]
    parts.append(f"{a} is more accurate at k = {_ks(above)};" if above else
                 f"{a} is never significantly more accurate;")
    parts.append(f"{b} is more accurate at k = {_ks(below)};" if below else
                 f"{b} is never significantly more accurate;")
    if at_k:
        big = max(at_k, key=lambda r: abs(r["diff_mean"]))
        parts.append(f"the largest mean gap is {100 * big['diff_mean']:+.2f} points at "
                     f"k = {big['sparsity_pct']:g}.")
    auc = next((r for r in rows if r["sparsity_pct"] == "AUC"), None)
    if auc is not None:
        parts.append(f"AUC difference {100 * auc['diff_mean']:+.2f} points: {auc['verdict']}.")
    return " ".join(parts)


def analysis(summary: Summary) -> list[str]:
    """Sentences that follow from the numbers, one markdown bullet each."""
    lines = []
    for d in summary.dense:
        lines.append(f"- Dense accuracy of {d['label']} over {d['n']} seed(s): "
                     f"{fmt(d, 'accuracy', 100)} %.")
    if max((d["n"] for d in summary.dense), default=1) < 2:
        lines.append("- One seed only: no intervals and no significance statements; run with "
                     "`--seeds 0,1,2,3,4` for them.")
    for m in summary.methods:
        if "k_within_1pt_mean" in m:
            lines.append(f"- **{m['method']}**: AUC {fmt(m, 'auc', 100)} %; the largest k within "
                         f"1 point of dense is {fmt(m, 'k_within_1pt', 1, 1)} % "
                         f"(seeds: {m['k_within_1pt_min']:g}–{m['k_within_1pt_max']:g} %).")
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in summary.comparisons:
        pairs.setdefault((c["a"], c["b"]), []).append(c)
    if max((d["n"] for d in summary.dense), default=1) >= 2:
        lines += [_pair_sentence(a, b, rows) for (a, b), rows in list(pairs.items())[:6]]
    return lines


def _md(table: Table) -> str:
    return tabulate(table[1], table[0], tablefmt="github", disable_numparse=True)


def title_of(summary: Summary) -> str:
    """``prunelab report: <dataset>, seeds 0, 1, 2``, or the compared runs' names."""
    if "runs" in summary.meta:
        return f"prunelab comparison: {', '.join(summary.meta['runs'])}"
    dataset = summary.meta.get("run", {}).get("dataset", "?")
    return f"prunelab report: {dataset}, seeds {', '.join(map(str, summary.seeds))}"


def render_summary_report(summary: Summary, plot_dir: str = "plots") -> str:
    """The markdown text; plots are linked relative to the run folder."""
    meta = summary.meta
    return "\n".join([
        f"# {title_of(summary)}",
        "",
        "Every figure is the mean over seeds ± the half-width of its 95 % Student-t confidence "
        "interval. Interactive version: [report.html](report.html).",
        "",
        *bullet_section("Configuration",
                        {k: v for k, v in meta.items() if k != "environment"}),
        *bullet_section("Environment", meta.get("environment") or {}),
        "## Results",
        "",
        "Test accuracy and loss; *eff. sparsity*: weights that can no longer change the output.",
        "",
        _md(results_table(summary)),
        "",
        *[f"![{name}]({plot_dir}/{name}.png)" for name in PLOTS],
        "",
        "## Summary figures",
        "",
        _md(figures_table(summary)),
        "",
        "## Paired comparisons",
        "",
        "Difference a - b in test accuracy, seed by seed; *a > b* when the whole 95 % interval "
        "is above 0.",
        "",
        _md(comparisons_table(summary)),
        "",
        "## Analysis",
        "",
        *analysis(summary),
        "",
    ])


def write_summary_report(summary: Summary, run_dir: Path) -> Path:
    """Write ``report.md`` into ``run_dir`` atomically."""
    path = Path(run_dir) / REPORT
    atomic_write(path, render_summary_report(summary))
    return path
