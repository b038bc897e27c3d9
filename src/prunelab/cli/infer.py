"""Inference commands: latency benchmark, compaction into a model file, model file info.

Registered on the ``prunelab`` group in ``prunelab.cli.main``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from tabulate import tabulate
from tqdm import tqdm

from prunelab.cli.parse import parse_batch_sizes, parse_methods, parse_percents
from prunelab.inference.compact import CompactMLP
from prunelab.inference.export import load_model
from prunelab.inference.structural import CompactionReport
from prunelab.inference.timing import load_warning
from prunelab.pruning import METHODS
from prunelab.pruning.targets import prunable_modules
from prunelab.report.speed import plan_lines, plot_bench, speedup_table
from prunelab.report.writer import write_run_reports
from prunelab.study.deploy import EXPORT_BACKENDS, compact_run
from prunelab.study.runfolder import read_bench
from prunelab.study.speed import NETWORK_BACKENDS, BenchConfig, bench_run_folder

__all__ = ["bench", "compact_cmd", "model_info"]


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--methods", default="weight,unit", show_default=True,
              help=f"Comma-separated, or 'all'. Registered: {', '.join(METHODS)}.")
@click.option("--sparsities", default="0,50,90,95,99", show_default=True,
              help="Percent of each hidden layer to prune.")
@click.option("--batch-sizes", default="1,64,1024,10000", show_default=True)
@click.option("--backends", default=",".join(NETWORK_BACKENDS), show_default=True,
              help="Whole-network backends to time (dense is always timed).")
@click.option("--repeats", type=int, default=BenchConfig.repeats, show_default=True)
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare every backend's outputs with the masked network's on the test set.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding the datasets (for the output check on the test set).")
def bench(run_dir, methods, sparsities, batch_sizes, backends, repeats, check, data_dir) -> None:
    """Time the forward pass of each backend per method, sparsity and batch size."""
    config = BenchConfig(parse_batch_sizes(batch_sizes),
                         tuple(b.strip() for b in backends.split(",") if b.strip()),
                         repeats=repeats)
    warning = load_warning()
    if warning:
        click.echo(f"warning: {warning}", err=True)
    methods_t, ks = parse_methods(methods), parse_percents(sparsities)
    with tqdm(total=len(methods_t) * len(ks) * len(config.batch_sizes) * len(config.backends),
              desc="bench", unit="timing", dynamic_ncols=True) as bar:
        def on_row(row: dict[str, Any]) -> None:
            bar.update(1)
            bar.set_postfix(method=row["method"], k=f"{row['sparsity_pct']:g}",
                            batch=row["batch_size"], refresh=False)

        path = bench_run_folder(run_dir, methods_t, ks, config, data_dir, check, on_row=on_row)
    rows = read_bench(run_dir)
    body, headers = speedup_table(rows, "auto")
    click.echo("speed-up vs dense, auto backend:")
    click.echo(tabulate(body, headers, tablefmt="github", disable_numparse=True))
    click.echo("plans chosen by auto:\n" + "\n".join(f"- {line}" for line in plan_lines(rows)))
    if (Path(run_dir) / "results.json").is_file():
        md, page = write_run_reports(run_dir)  # plots bench_speedup.png too
        click.echo(f"report: {md} and {page}")
    else:
        plot_bench(rows, Path(run_dir) / "plots")
    click.echo(f"latencies in {path}")


@click.command(name="compact")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--method", required=True, help=f"Registered: {', '.join(METHODS)}.")
@click.option("--sparsity", type=float, required=True, help="Percent to prune, in [0, 100].")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Model file (.safetensors); its layer spec goes beside it as .json.")
@click.option("--backend", default="auto", show_default=True,
              help=f"One of {', '.join(EXPORT_BACKENDS)}.")
@click.option("--batch-size", type=int, default=1024, show_default=True,
              help="Batch size the auto backend is tuned for.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding the datasets (calibration-aware methods only).")
@click.option("--onnx", type=click.Path(path_type=Path), default=None,
              help="Also write the compacted network as ONNX (dense layers) to this file.")
def compact_cmd(run_dir, method, sparsity, out, backend, batch_size, data_dir, onnx) -> None:
    """Prune RUN_DIR's model, compact it into a smaller (or sparse) network, save it."""
    if not 0 <= sparsity <= 100:
        raise ValueError(f"--sparsity takes a percent in [0, 100], got {sparsity:g}")
    k = sparsity / 100
    done = compact_run(run_dir, method, k, out, backend, batch_size, data_dir, onnx)
    click.echo(f"saved {done.model_path} and {done.spec_path}: {describe(done.net)}")
    if done.report is not None:
        for line in report_lines(done.report):
            click.echo(f"  {line}")
    if done.onnx_path is not None:
        checked = "" if done.onnx_difference is None else (
            f"; ONNX Runtime agrees with torch within {done.onnx_difference:.1e} (relative)")
        click.echo(f"saved {done.onnx_path} (ONNX, dense layers, dynamic batch{checked})")


@click.command(name="model-info")
@click.argument("model_file", type=click.Path(path_type=Path))
def model_info(model_file) -> None:
    """Layers of a model file written by `prunelab compact`."""
    click.echo(f"{model_file}: {describe(load_model(model_file))}")


def describe(net) -> str:
    """One line on a saved or compacted network."""
    if isinstance(net, CompactMLP):
        return (f"layer sizes {list(net.sizes)} (input features read of {net.input_size}), "
                f"backends {list(net.plan)}")
    layers = [(n, tuple(m.weight.shape)) for n, m in prunable_modules(net)]
    weights = sum(math.prod(shape) for _, shape in layers)
    return (f"{type(net).__name__}, {weights:,} weights in {len(layers)} layers: "
            + ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in layers))


def report_lines(report: CompactionReport) -> list[str]:
    """What a compaction removed, one line each."""
    lines = [f"{name}: {a} -> {b} channels" for name, (a, b) in report.channels.items()]
    lines += [f"{name}: {a} -> {b} heads" for name, (a, b) in report.heads.items()]
    lines += [f"{name}: {n} zeroed channels kept ({why})" for name, (n, why) in
              report.kept.items()]
    if report.folded:
        lines.append(f"{report.folded} constant inputs folded into biases")
    return lines or ["no channel, unit or head was dead: same size as the dense model"]
