"""``report.md``: configuration, environment, table, plots and an analysis drawn from the numbers.

Reads the saved results only; never touches a model.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
from tabulate import tabulate

from prunelab.files import atomic_write
from prunelab.report.plots import PLOTS
from prunelab.report.speed import bench_section
from prunelab.study.runfolder import Results

__all__ = ["analysis", "bullet_section", "model_name", "render_report", "write_report"]

REPORT = "report.md"


def _by_method(results: Results) -> dict[str, dict[float, dict]]:
    out: dict[str, dict[float, dict]] = {}
    for row in results.rows:
        out.setdefault(row["method"], {})[row["sparsity_pct"]] = row
    return {m: dict(sorted(rows.items())) for m, rows in out.items()}


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _k(k: float) -> str:
    return f"k = {k:g}"


def _method_summary(method: str, rows: dict[float, dict], dense: float) -> str:
    ks = list(rows)
    within = [k for k in ks if k > 0 and rows[k]["accuracy"] >= dense - 0.01]
    # "Holds up to k": every measured sparsity up to it stays within one point.
    holds = None
    for k in (k for k in ks if k > 0):
        if rows[k]["accuracy"] < dense - 0.01:
            break
        holds = k
    below_half = [k for k in ks if rows[k]["accuracy"] < dense / 2]
    parts = []
    if holds is None:
        first = next((k for k in ks if k > 0), ks[0])
        parts.append(f"is more than 1 point below dense already at {_k(first)} "
                     f"({_pct(rows[first]['accuracy'])})")
    else:
        parts.append(f"stays within 1 point of dense accuracy up to {_k(holds)} "
                     f"({_pct(rows[holds]['accuracy'])})")
        if within and within[-1] != holds:
            parts.append(f"(and again at {', '.join(_k(k) for k in within if k > holds)})")
    if below_half:
        k = below_half[0]
        parts.append(f"falls below half of dense accuracy first at {_k(k)} "
                     f"({_pct(rows[k]['accuracy'])})")
    else:
        parts.append(f"never falls below half of dense accuracy; its lowest is "
                     f"{_pct(min(r['accuracy'] for r in rows.values()))}")
    last = ks[-1]
    parts.append(f"at {_k(last)} it keeps {_pct(rows[last]['accuracy'])} with "
                 f"{rows[last]['params_remaining']:,} effective parameters "
                 f"(effective sparsity {_pct(rows[last]['effective_sparsity'])})")
    return f"- **{method}** " + "; ".join(parts) + "."


def _equal_k(a: str, b: str, ra: dict[float, dict], rb: dict[float, dict]) -> str | None:
    shared = [k for k in ra if k in rb and k > 0]
    if not shared:
        return None
    gaps = {k: ra[k]["accuracy"] - rb[k]["accuracy"] for k in shared}
    wins = sum(g > 0 for g in gaps.values())
    k_max = max(gaps, key=lambda k: abs(gaps[k]))
    lead = a if gaps[k_max] > 0 else b
    return (f"- At equal k, **{a}** is more accurate than **{b}** at {wins} of {len(shared)} "
            f"sparsities above 0; the largest gap is {abs(gaps[k_max]) * 100:.2f} points at "
            f"{_k(k_max)}, in favour of {lead}.")


def _interp_log(rows: dict[float, dict], params: float) -> float | None:
    pts = sorted((math.log(r["params_remaining"]), r["accuracy"]) for r in rows.values()
                 if r["params_remaining"] > 0)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x = math.log(params)
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def _equal_params(a: str, b: str, ra: dict[float, dict], rb: dict[float, dict]) -> str | None:
    # Compare at b's measured parameter counts, interpolating a's curve in log(parameters).
    gaps = []
    for row in rb.values():
        if row["sparsity_pct"] == 0 or row["params_remaining"] <= 0:
            continue
        acc_a = _interp_log(ra, row["params_remaining"])
        if acc_a is not None:
            gaps.append((row["params_remaining"], acc_a - row["accuracy"]))
    if not gaps:
        return None
    wins = sum(g > 0 for _, g in gaps)
    p_max, g_max = max(gaps, key=lambda pg: abs(pg[1]))
    return (f"- At equal remaining parameters (interpolated in log-parameters at {len(gaps)} "
            f"of {b}'s points), **{a}** is more accurate at {wins} of {len(gaps)}; the largest "
            f"gap is {abs(g_max) * 100:.2f} points at {p_max:,} parameters, in favour of "
            f"{a if g_max > 0 else b}.")


def analysis(results: Results) -> list[str]:
    """Sentences that follow from the numbers, one markdown bullet each."""
    dense = results.dense["accuracy"]
    methods = _by_method(results)
    lines = [_method_summary(m, rows, dense) for m, rows in methods.items()]
    for a, b in itertools.combinations(list(methods)[:4], 2):
        for sentence in (_equal_k(a, b, methods[a], methods[b]),
                         _equal_params(a, b, methods[a], methods[b])):
            if sentence:
                lines.append(sentence)
    return lines


_ACCURACY_COLUMNS = (("acc (%)", lambda r: f"{100 * r['accuracy']:.2f}"),
                     ("loss", lambda r: f"{r['loss']:.4f}"))
_SIZE_COLUMNS = (("eff. sparsity (%)", lambda r: f"{100 * r['effective_sparsity']:.1f}"),
                 ("params", lambda r: f"{r['params_remaining']:,}"))


def _pair(r: dict, live: str, compacted: str) -> str:
    return f"{r[live]:,} / {r[compacted]:,}" if compacted in r else f"{r[live]:,} / n/a"


_COMPACT_COLUMNS = (("params live / compacted", lambda r: _pair(r, "params_remaining",
                                                                  "compact_params")),
                    ("MACs live / compacted", lambda r: _pair(r, "macs_per_sample",
                                                              "compact_macs")))


def _table(results: Results, columns) -> str:
    """One row per k; for each method the given (header, format) columns."""
    methods = _by_method(results)
    ks = sorted({k for rows in methods.values() for k in rows})
    headers = ["k (%)"] + [f"{m} {h}" for m in methods for h, _ in columns]
    body = []
    for k in ks:
        line = [f"{k:g}"]
        for rows in methods.values():
            r = rows.get(k)
            line += [fmt(r) if r else "" for _, fmt in columns]
        body.append(line)
    return tabulate(body, headers, tablefmt="github", disable_numparse=True)


def _history(results: Results) -> list[str]:
    history = results.meta.get("history") or []
    if not history:
        return []
    last = history[-1]
    secs = [h["seconds"] for h in history]
    return [
        "## Training",
        "",
        f"{len(history)} epoch{'s' if len(history) > 1 else ''}; "
        f"final train accuracy {_pct(last['train_accuracy'])}, "
        f"test accuracy {_pct(last['test_accuracy'])}; median {np.median(secs):.2f} s "
        "per epoch of optimisation steps.",
        "",
    ]


def _cost(results: Results) -> list[str]:
    """Per method: pruning wall time over the sweep and the largest peak memory."""
    body = []
    for method, rows in _by_method(results).items():
        peaks = [r["peak_memory_mb"] for r in rows.values() if r.get("peak_memory_mb") is not None]
        body.append([method, len(rows), f"{sum(r['seconds'] for r in rows.values()):.2f}",
                     f"{max(peaks):.1f}" if peaks else "n/a"])
    headers = ["method", "sparsities", "pruning time, all k (s)", "peak memory (MB)"]
    return ["## Cost of pruning", "",
            "Wall time to compute and apply each method's weights (evaluation excluded) and the "
            "largest rise of memory while pruning, over the sweep.", "",
            tabulate(body, headers, tablefmt="github", disable_numparse=True), ""]


def bullet_section(title: str, items: dict) -> list[str]:
    """A ``## title`` section listing ``key: value`` bullets."""
    return [f"## {title}", "", *[f"- {k}: {v}" for k, v in items.items()], ""]


def _settings_line(settings: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in settings.items())


def model_name(run: dict) -> str:
    """A run's model in a few words: ``MLP 784-32-16-10``, or ``resnet (widths 16,32,64, ...)``."""
    family, model = run.get("family", "mlp"), run.get("model", {})
    if family == "mlp" and "hidden" in model:
        sizes = [model.get("input_size"), *model["hidden"], model.get("num_classes")]
        return "MLP " + "-".join(str(s) for s in sizes if s is not None)
    options = ", ".join(f"{k} {','.join(map(str, v)) if isinstance(v, list) else v}"
                        for k, v in model.items())
    return f"{family} ({options})" if options else family


def _model_line(run: dict) -> str:
    model = run.get("model", {})
    if not model:
        return "?"
    if run.get("family", "mlp") != "mlp":
        return model_name(run)
    sizes = [model["input_size"], *model["hidden"], model["num_classes"]]
    return (" → ".join(map(str, sizes)) + ", ReLU, "
            + ("with biases" if model.get("bias") else "no biases"))


def _layer_line(results: Results) -> str:
    """``conv1 (6x1x5x5), ..., head (10x84)``: the prunable layers the sweep measured."""
    layers = results.rows[0].get("layers", []) if results.rows else []
    return ", ".join(f"{layer['name']} ({'x'.join(map(str, layer['shape']))})"
                     for layer in layers) or "?"


def render_report(results: Results, plot_dir: str = "plots") -> str:
    """The markdown text of the report; plots are linked relative to the run folder."""
    run = results.meta.get("run", {})
    env = results.meta.get("environment", {})
    lines = [
        f"# prunelab report: {run.get('dataset', '?')} · {model_name(run)} · "
        f"seed {run.get('train', {}).get('seed')}",
        "",
        f"Dense test accuracy **{_pct(results.dense['accuracy'])}**, "
        f"loss {results.dense['loss']:.4f}.",
        "",
        "## Configuration",
        "",
        f"- dataset: {run.get('dataset')}",
        f"- model: {_model_line(run)}",
        f"- training: {_settings_line(run.get('train', {}))}",
        f"- sweep: {_settings_line(results.meta.get('sweep', {}))}",
        "- pruned layers: every Linear and Conv2d layer but the output layer, each at "
        "sparsity k (unit methods: those whose channels no residual add or attention shares)",
        f"- layers (weight shape): {_layer_line(results)}",
        "",
        *bullet_section("Environment", env),
        *_history(results),
        "## Results",
        "",
        f"Accuracy and mean cross-entropy on the full test set "
        f"({results.meta.get('test_size', 'all')} images).",
        "",
        _table(results, _ACCURACY_COLUMNS),
        "",
        "*Effective sparsity* counts the weights that can no longer change the output (zeroed, or "
        "cut off by dead units); *params* are the parameters that still can.",
        "",
        _table(results, _SIZE_COLUMNS),
        "",
        "*Live* counts the nonzero weights of the pruned layers and the multiply-adds they do "
        "per sample (the nominal figures, reachable only by sparse execution); *compacted* "
        "those of the dense network `prunelab compact` builds with every dead channel, unit "
        "and head physically removed (zeros left inside its layers included).",
        "",
        _table(results, _COMPACT_COLUMNS),
        "",
        *[f"![{name}]({plot_dir}/{name}.png)" for name in PLOTS],
        "",
        *_cost(results),
        "## Analysis",
        "",
        *analysis(results),
        "",
    ]
    return "\n".join(lines)


def write_report(results: Results, run_dir: Path) -> Path:
    """Write ``report.md`` into ``run_dir`` atomically."""
    path = Path(run_dir) / REPORT
    # The latency section (issue 3) comes from bench.csv when a benchmark has been run.
    atomic_write(path, render_report(results) + bench_section(run_dir))
    return path
