"""``report.md`` of a summary: one run over one or more seeds, or several runs compared.
With several seeds every figure is a mean ± 95 % CI; with one seed it is that model's value.

Reads the summary only; never touches a model. The tables and sentences here are shared with
the HTML report (``html.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from prunelab.files import atomic_write
from prunelab.report.markdown import bullet_section, model_name
from prunelab.report.plots import PLOTS
from prunelab.study.aggregate import Summary

__all__ = [
    "analysis",
    "comparisons_table",
    "figures_table",
    "fmt",
    "intro",
    "paired_comparisons",
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


def _k_range(m: dict[str, Any]) -> str:
    return f"{m['k_within_1pt_min']:g}–{m['k_within_1pt_max']:g}" if "k_within_1pt_min" in m else ""


def figures_table(summary: Summary) -> Table:
    """Per method: AUC and the largest k within 1 point of dense (and its range over seeds)."""
    headers = ["method", "AUC (acc. vs sparsity, %)", "largest k within 1 pt of dense (%)"]
    body = [[m["method"], fmt(m, "auc", 100), fmt(m, "k_within_1pt", 1, 1)]
            for m in summary.methods]
    if summary.max_n < 2:  # one seed: a range over seeds would repeat the value
        return headers, body
    return [*headers, "k range over seeds"], [
        [*line, _k_range(m)] for line, m in zip(body, summary.methods, strict=True)]


def paired_comparisons(summary: Summary) -> list[dict[str, Any]]:
    """Comparisons with an interval: pairs of curves that share at least two seeds."""
    return [c for c in summary.comparisons if c["diff_ci_low"] is not None]


def comparisons_table(summary: Summary) -> Table:
    """Paired differences a - b over the same seeds, in accuracy points (AUC in %)."""
    headers = ["a", "b", "k (%)", "n", "a - b (points)", "95 % CI", "verdict"]
    body = []
    for c in paired_comparisons(summary):
        ci = f"[{100 * c['diff_ci_low']:+.2f}, {100 * c['diff_ci_high']:+.2f}]"
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


def _dense_sentence(summary: Summary, d: dict[str, Any]) -> str:
    of = f" of {d['label']}" if len(summary.dense) > 1 else ""
    over = (f"over {d['n']} seeds" if d["n"] > 1 else
            f"seed {summary.seeds[0]}" if len(summary.dense) == 1 else "one seed")
    return f"- Dense accuracy{of} ({over}): {fmt(d, 'accuracy', 100)} %."


def _method_sentence(m: dict[str, Any]) -> str:
    spread = (f" (seeds: {_k_range(m)} %)" if m.get("k_within_1pt_n", 1) > 1 else "")
    return (f"- **{m['method']}**: AUC {fmt(m, 'auc', 100)} %; the largest k within 1 point of "
            f"dense is {fmt(m, 'k_within_1pt', 1, 1)} %{spread}.")


def analysis(summary: Summary) -> list[str]:
    """Sentences that follow from the numbers, one markdown bullet each."""
    lines = [_dense_sentence(summary, d) for d in summary.dense]  # intro() tells of one seed
    lines += [_method_sentence(m) for m in summary.methods if "k_within_1pt_mean" in m]
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in paired_comparisons(summary):
        pairs.setdefault((c["a"], c["b"]), []).append(c)
    return lines + [_pair_sentence(a, b, rows) for (a, b), rows in list(pairs.items())[:6]]


def _md(table: Table) -> str:
    return tabulate(table[1], table[0], tablefmt="github", disable_numparse=True)


def _seed_list(seeds: list[int]) -> str:
    """``seed 0`` or ``seeds 0, 1, 2``."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def title_of(summary: Summary) -> str:
    """``prunelab report: <dataset> · MLP 784-32-16-10 · seed 0`` (or ``· seeds 0, 1, 2``),
    or the compared runs' names."""
    if "runs" in summary.meta:
        return f"prunelab comparison: {', '.join(summary.meta['runs'])}"
    run = summary.meta.get("run", {})
    parts = [run.get("dataset", "?"), model_name(run) if run.get("model") else "",
             _seed_list(summary.seeds)]
    return "prunelab report: " + " · ".join(p for p in parts if p)


def intro(summary: Summary) -> str:
    """What the figures are: one trained model's values, or means with 95 % intervals."""
    if summary.max_n < 2:
        what = "one trained model" if len(summary.dense) == 1 else "one trained model per run"
        return (f"Every figure comes from {what} ({_seed_list(summary.seeds)}): single values "
                "without confidence intervals, and no paired comparisons between methods, "
                "which need at least two seeds (run with `--seeds 0,1,2,3,4` for them).")
    text = ("Every figure is the mean over seeds ± the half-width of its 95 % Student-t "
            "confidence interval; the bands on the charts are those intervals, cut at what the "
            "quantity can be (accuracy 0–100 %, loss ≥ 0).")
    if any(d["n"] < 2 for d in summary.dense):
        text += " Runs with one seed show that model's values, without an interval."
    return text


def _comparisons_section(summary: Summary) -> list[str]:
    if not paired_comparisons(summary):
        return []
    return ["## Paired comparisons", "",
            "Difference a - b in test accuracy, seed by seed; *a > b* when the whole 95 % "
            "interval is above 0 (pairs that share fewer than two seeds are left out).", "",
            _md(comparisons_table(summary)), ""]


def render_summary_report(summary: Summary, plot_dir: str = "plots") -> str:
    """The markdown text; plots are linked relative to the run folder."""
    meta = summary.meta
    return "\n".join([
        f"# {title_of(summary)}",
        "",
        f"{intro(summary)} Interactive version: [report.html](report.html).",
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
        *_comparisons_section(summary),
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
