"""The latency benchmark's plot and report section, read from ``bench.csv`` only.

``bench_section(run_dir)`` is the markdown that ``report.md`` gains when the run folder holds
a ``bench.csv``; it is empty otherwise. ``report.html`` renders the same ``bench_blocks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from tabulate import tabulate  # noqa: E402

from prunelab.study.runfolder import read_bench, read_bench_meta  # noqa: E402

__all__ = [
    "BENCH_PLOT", "bench_blocks", "bench_section", "plan_lines", "plot_bench", "speedup_table",
]

BENCH_PLOT = "bench_speedup"


def speedup_table(rows: list[dict[str, Any]], backend: str,
                  against: str = "speedup_vs_dense") -> tuple[list[list[str]], list[str]]:
    """(body, headers): ``backend``'s speed-up (the ``against`` column: vs torch's dense model,
    or ``speedup_vs_best_dense``) per method and k (rows), batch (cols)."""
    batches = sorted({r["batch_size"] for r in rows})
    cells: dict[tuple[str, float], dict[int, float]] = {}
    limits: dict[tuple[str, float], tuple[float, float | None]] = {}
    for r in rows:
        if r["backend"] == backend and r.get(against) is not None:
            key = (r["method"], r["sparsity_pct"])
            cells.setdefault(key, {})[r["batch_size"]] = r[against]
            limits[key] = (r["flop_ratio"], r.get("bytes_ratio"))
    headers = ["method", "k (%)", "bytes limit", "FLOP limit", *[f"batch {b}" for b in batches]]
    body = [[m, f"{k:g}", "" if limits[(m, k)][1] is None else f"{limits[(m, k)][1]:.1f}x",
             f"{limits[(m, k)][0]:.1f}x", *[f"{c[b]:.2f}x" if b in c else "" for b in batches]]
            for (m, k), c in cells.items()]
    return body, headers


def plan_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (method, k, batch): the per-layer backends auto chose."""
    return [f"{r['method']} k = {r['sparsity_pct']:g}, batch {r['batch_size']}: "
            f"{r['plan'].replace('/', ' / ')}" for r in rows if r["backend"] == "auto"]


def plot_bench(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """Speed-up vs sparsity, one panel per batch size: auto and sparse per method, FLOP limit."""
    batches = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(4 * len(batches), 3.6), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, batch in zip(axes[0], batches, strict=True):
        for i, method in enumerate(methods):
            color = f"C{i}"
            for backend, style in (("auto", "-o"), ("sparse", ":x"), ("compacted", "--s")):
                pts = sorted((r["sparsity_pct"], r["speedup_vs_dense"]) for r in rows
                             if r["method"] == method and r["batch_size"] == batch
                             and r["backend"] == backend)
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, color=color, ms=3,
                            label=f"{method} {backend}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(title=f"batch {batch}", xlabel="sparsity k (%)", yscale="log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))  # 0.5x, 1x, 20x
        ax.yaxis.set_minor_formatter(NullFormatter())
    axes[0][0].set_ylabel("speed-up vs dense (x)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{BENCH_PLOT}.png"
    tmp = out_dir / f".{BENCH_PLOT}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


Block = tuple[str, Any]
"""One piece of the section: ("h2" | "p", text), ("table", (headers, body)), ("ul", [items]),
("img", (name, path relative to the run folder)); text in the report's markdown subset
(``**bold**``, ``*italic*``, `` `code` ``)."""


def bench_blocks(run_dir: Path, plot_dir: str = "plots") -> list[Block]:
    """The "Inference speed" section from ``run_dir/bench.csv`` as blocks (rendered as
    markdown by ``bench_section``, as HTML by ``report.html``); [] when there is none."""
    rows = read_bench(run_dir)
    if not rows:
        return []
    meta = read_bench_meta(run_dir)
    env = meta.get("environment", {})
    blocks: list[Block] = [
        ("h2", "Inference speed"),
        ("p", "Whole-network forward latency, float32, median of repeats after warm-up, timed "
              "round-robin with the dense model in the same run (`prunelab bench`). *auto* "
              "compacts the pruned network and picks per layer the fastest of dense, torch CSR "
              "and prunelab's numba CSR kernel by timing them, or for a conv net fuses its convs "
              "and picks per conv torch, prunelab's direct or sparse conv (then ONNX Runtime on "
              "the compacted network if that is faster still). Each speed-up is bounded by a "
              "physical ceiling: at batch 1 reading the weights is the cost, so the *bytes "
              "limit* is the dense weights' bytes over those of the smallest storage per layer "
              "(dense, or CSR: value + index per nonzero); at large batches arithmetic is, and "
              "the *FLOP limit* is dense multiply-adds over live ones."),
        ("p", f"Threads: {env.get('torch_threads', '?')} on {env.get('cpu_count', '?')} cores "
              f"({env.get('cpu', '?')})."),
    ]
    if meta.get("load_warning"):
        blocks.append(("p", f"**Warning:** {meta['load_warning']}."))
    best = [r for r in rows if r.get("speedup_vs_best_dense") is not None]
    if best and any(r["backend"] == "onnx-dense" for r in rows):
        blocks.append(("p", "Speed-ups against the **fastest dense runtime** measured (torch, "
                            "ONNX Runtime, or for a conv net torch with prunelab's fused convs, "
                            "on the unpruned model, whichever was faster at that batch size): "
                            "what a user who runs the dense model as fast as it goes would "
                            "gain."))
        for backend in ("auto", "onnx-compacted"):
            body, headers = speedup_table(best, backend, "speedup_vs_best_dense")
            if body:
                blocks += [("p", f"**{backend}** vs the fastest dense runtime:"),
                           ("table", (headers, body))]
        for runtime, label in (("onnx-dense", "ONNX Runtime"),
                               ("dense-kernels", "torch with prunelab's fused convs")):
            dense_rows = {(r["method"], r["sparsity_pct"], r["batch_size"]): r for r in rows
                          if r["backend"] == runtime}
            if dense_rows:
                body, headers = speedup_table(list(dense_rows.values()), runtime)
                blocks += [("p", f"{label} on the *unpruned* model vs torch on it (above 1: "
                                 f"{label} is the faster dense runtime):"),
                           ("table", (headers, body))]
    for backend in ("auto", "compacted", "sparse"):
        body, headers = speedup_table(rows, backend)
        if body:
            blocks += [("p", f"Speed-up vs torch's dense model, **{backend}**:"),
                       ("table", (headers, body))]
    plans = plan_lines(rows)
    if plans:
        blocks += [("p", "Backends *auto* chose, per layer (*masked*: the pruned model as it "
                         "is):"), ("ul", plans)]
    if (Path(run_dir) / plot_dir / f"{BENCH_PLOT}.png").is_file():
        blocks.append(("img", (BENCH_PLOT, f"{plot_dir}/{BENCH_PLOT}.png")))
    return blocks


def bench_section(run_dir: Path, plot_dir: str = "plots") -> str:
    """Markdown for ``report.md`` from ``run_dir/bench.csv``; "" when there is none."""
    lines: list[str] = []
    for kind, content in bench_blocks(run_dir, plot_dir):
        if kind == "h2":
            lines += [f"## {content}", ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "table":
            headers, body = content
            lines += [tabulate(body, headers, tablefmt="github", disable_numparse=True), ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in content] + [""]
        else:  # img
            lines += [f"![{content[0]}]({content[1]})", ""]
    return "\n".join(lines)
