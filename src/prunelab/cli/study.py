"""Study commands: run, train, sweep, report, compare (registered on the group in ``main``).

Sparsities are given in percent here, like the original challenge, and converted to fractions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from prunelab.cli.grid import executor_options, run_jobs
from prunelab.cli.parse import (
    model_config,
    parse_hidden,
    parse_methods,
    parse_model_options,
    parse_percents,
    parse_seeds,
)
from prunelab.data import DATASETS, Dataset, load_dataset
from prunelab.models import MODELS, MLPConfig, build_model
from prunelab.pruning import METHODS
from prunelab.report.writer import write_all, write_run_reports, write_seed_report
from prunelab.study.checkpoint import checkpoint_epoch
from prunelab.study.compare import compare_runs
from prunelab.study.driver import GridSettings, RunJob, seed_jobs
from prunelab.study.lock import run_lock
from prunelab.study.multiseed import (
    SUMMARY_CSV,
    default_run_dir,
    seed_dirs,
    summarize_run,
    write_summary,
)
from prunelab.study.runfolder import RunConfig, has_trained_model, load_run
from prunelab.study.sweep import (
    DEFAULT_SPARSITIES,
    SweepConfig,
    check_sweep,
    ensure_trained,
    resolve_device,
    run_sweep,
)
from prunelab.train import StepInfo, TrainConfig

__all__ = ["compare", "report", "run", "sweep", "train"]


def _train_options(f: Callable) -> Callable:
    options = [
        click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="fashion-mnist",
                     show_default=True),
        click.option("--model", "family", type=click.Choice(list(MODELS)), default="mlp",
                     show_default=True, help="Model family of the zoo."),
        click.option("--model-opt", "model_opts", multiple=True, metavar="KEY=VALUE",
                     help="A model option, e.g. widths=16,32,64 for resnet (repeatable); "
                          "see the family's config in prunelab.models."),
        click.option("--epochs", type=int, default=None,
                     help="[default: the model's recipe: mlp 30, lenet5 10, resnet 8, vit 8]"),
        click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
        click.option("--batch-size", type=int, default=None, help="[default: the recipe's]"),
        click.option("--lr", type=float, default=None, help="[default: the recipe's]"),
        click.option("--hidden", default=None,
                     help="mlp: hidden layer widths, comma-separated "
                          f"[default: {','.join(map(str, MLPConfig.hidden))}]."),
        click.option("--bias/--no-bias", default=None,
                     help="mlp: give Linear layers biases (the original has none)."),
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Run folder [default: runs/<dataset>-seed<seed>, or "
                          "runs/<dataset>-<n>seeds with several --seeds; other models than "
                          "mlp add their name: runs/<dataset>-<model>-seed<seed>]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _common_options(f: Callable) -> Callable:
    f = click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when available), cpu or cuda[:N].")(f)
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="Folder holding fashion-mnist/ and mnist/ (else PRUNELAB_DATA, "
                             "the cache, a download).")(f)


def _seed_options(f: Callable) -> Callable:
    f = executor_options(f)  # for several seeds
    return click.option("--seeds", "seeds_text", default=None,
                        help="Comma-separated seeds, e.g. 0,1,2,3,4: one run folder per seed "
                             "inside the run folder, then mean ± 95 % CI over seeds. "
                             "Overrides --seed.")(f)


def _sweep_options(f: Callable) -> Callable:
    f = click.option("--layers", "layers_text", default=None, metavar="NAMES",
                     help="Comma-separated layer names or glob patterns to prune, e.g. "
                          "'stages.*.conv1,head' [default: every Linear and Conv2d but the "
                          "output layer; unit methods: those whose channels are their own].")(f)
    f = click.option("--bn-recalibrate/--no-bn-recalibrate", "bn_recalibrate", default=None,
                     help="Re-estimate BatchNorm statistics of every pruned model on calibration "
                          "images (forward passes only) [default: for models with BatchNorm].")(f)
    f = click.option("--calibration-size", type=int, default=None,
                     help="Training images for every calibration-aware method [default: each "
                          "method's own: 2048, refit-gradual 8192].")(f)
    f = click.option("--methods", default="weight,unit", show_default=True,
                     help=f"Comma-separated, or 'all'. Registered: {', '.join(METHODS)}.")(f)
    default = ",".join(f"{100 * s:g}" for s in DEFAULT_SPARSITIES)
    return click.option("--sparsities", default=default, show_default=True,
                        help="Percent of each hidden layer to prune.")(f)


def _layers(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    parts = tuple(p.strip() for p in text.split(","))
    if not all(parts):
        raise ValueError(f"--layers takes comma-separated names or patterns, got {text!r}")
    return parts


def _run_config(dataset: str, family: str, model_opts: tuple[str, ...], epochs: int | None,
                seed: int, batch_size: int | None, lr: float | None, hidden: str | None,
                bias: bool | None) -> RunConfig:
    options = parse_model_options(model_opts)
    if hidden is not None:
        parse_hidden(hidden)  # its own message: --hidden takes positive integers
    shorthands = {"hidden": hidden, "bias": None if bias is None else str(bias)}
    for key, value in shorthands.items():
        if value is None:
            continue
        if family != "mlp":
            raise ValueError(f"--{key} is an mlp option; for --model {family} use "
                             f"--model-opt KEY=VALUE")
        if key in options:
            raise ValueError(f"{key} given twice: as --{key} and as --model-opt")
        options[key] = value
    recipe = MODELS[family].recipe
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    train = replace(recipe, seed=seed, **{k: v for k, v in given.items() if v is not None})
    return RunConfig(dataset, model_config(MODELS[family].config_type, options), train, family)


def _train(config: RunConfig, run_dir: Path, data: Dataset, dev: torch.device) -> None:
    """Train into ``run_dir`` (whose lock the caller holds), resuming from its checkpoint."""
    done = None if has_trained_model(run_dir, config) else checkpoint_epoch(run_dir, config)
    if done is not None:
        click.echo(f"resuming the training in {run_dir} after epoch {done} of "
                   f"{config.train.epochs} (from its checkpoint)")
    epochs_left = config.train.epochs - (done or 0)
    steps = epochs_left * -(-len(data.train_x) // config.train.batch_size)
    with tqdm(total=steps, desc="train", unit="step", dynamic_ncols=True) as bar:
        def on_step(info: StepInfo) -> None:
            bar.update(1)
            if info.step % 20 == 0 or info.step == info.steps_per_epoch:
                bar.set_postfix(epoch=info.epoch, loss=f"{info.loss:.4f}",
                                acc=f"{info.accuracy:.4f}", refresh=False)

        run, trained = ensure_trained(run_dir, config, data, dev, on_step)
        if not trained:
            bar.close()
    if trained:
        last = run.history[-1]
        click.echo(f"trained {run_dir}: test accuracy {100 * last['test_accuracy']:.2f} %")
    else:
        click.echo(f"reusing the model in {run_dir} (trained with the same configuration)")


def _sweep(run_dir: Path, config: SweepConfig, data_dir: Path | None, device, data=None) -> None:
    total = len(config.methods) * len(config.sparsities)
    with tqdm(total=total, desc="sweep", unit="model", dynamic_ncols=True) as bar:
        def on_row(row: dict[str, Any]) -> None:
            bar.update(1)
            bar.set_postfix(method=row["method"], k=f"{row['sparsity_pct']:g}",
                            acc=f"{100 * row['accuracy']:.2f}")

        results = run_sweep(run_dir, config, data_dir, device, on_row, data=data)
    click.echo(f"dense accuracy {100 * results.dense['accuracy']:.2f} %; "
               f"results in {run_dir / 'results.csv'}")


def _report(run_dir: Path, seeds: tuple[int, ...] | None = None) -> None:
    md, page = write_run_reports(run_dir, seeds)
    click.echo(f"report: {md} and {page}")


def _run_seeds(jobs: list[RunJob], run_dir: Path, executor: str, workers: int | None,
               address: str | None, data_dir: Path | None, device: str,
               then: Callable[[], None]) -> None:
    """Train and sweep several seeds on ``executor``; then the reports, ``then()``."""
    def reports() -> None:
        for job in jobs:
            if job.sweep is not None:
                write_seed_report(job.run_dir)  # each seed folder is a complete run
        then()

    run_jobs(jobs, executor, workers, address, run_dir, GridSettings(data_dir, device), reports)


@click.command()
@_train_options
@_seed_options
@_sweep_options
@_common_options
def run(dataset, family, model_opts, epochs, seed, batch_size, lr, hidden, bias, out, seeds_text,
        executor, workers, ray_address, sparsities, methods, calibration_size, bn_recalibrate,
        layers_text, device, data_dir) -> None:
    """Train (unless already trained), sweep every method and sparsity, plot, report."""
    seeds = parse_seeds(seeds_text) if seeds_text is not None else (seed,)
    config = _run_config(dataset, family, model_opts, epochs, seeds[0], batch_size, lr, hidden,
                         bias)
    sweep_config = SweepConfig(parse_methods(methods), parse_percents(sparsities),
                               calibration_size, bn_recalibrate, _layers(layers_text))
    check_sweep(build_model(config.family, config.model), sweep_config)  # before training
    run_dir = out or default_run_dir(dataset, seeds, family)
    if len(seeds) > 1:
        _run_seeds(seed_jobs(run_dir, config, seeds, sweep_config), run_dir, executor, workers,
                   ray_address, data_dir, device,
                   lambda: _report(run_dir, seeds))  # other seed<k>/ are not this run's
        return
    dev, data = resolve_device(device), load_dataset(dataset, data_dir)  # before any write
    with run_lock(run_dir):
        _train(config, run_dir, data, dev)
        _sweep(run_dir, sweep_config, data_dir, dev, data)
        _report(run_dir)


@click.command()
@_train_options
@_common_options
def train(dataset, family, model_opts, epochs, seed, batch_size, lr, hidden, bias, out, device,
          data_dir) -> None:
    """Train a model into a run folder (reused when already trained the same way; continued
    from its checkpoint when an earlier training of the same configuration was interrupted)."""
    config = _run_config(dataset, family, model_opts, epochs, seed, batch_size, lr, hidden, bias)
    run_dir = out or default_run_dir(config.dataset, (config.train.seed,), config.family)
    dev, data = resolve_device(device), load_dataset(config.dataset, data_dir)
    with run_lock(run_dir):
        _train(config, run_dir, data, dev)


def _saved_seed_jobs(run_dir: Path, seeds_text: str | None,
                     config: SweepConfig) -> list[RunJob]:
    found = seed_dirs(run_dir)
    seeds = parse_seeds(seeds_text) if seeds_text is not None else tuple(found)
    missing = [s for s in seeds if s not in found]
    if missing:
        raise ValueError(f"{run_dir} has no folder for seed(s) {missing}; it has {list(found)}")
    # a seed without a complete model fails here, before any work
    return [RunJob(found[s], load_run(found[s]).config, config) for s in seeds]


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@_seed_options
@_sweep_options
@_common_options
def sweep(run_dir, seeds_text, executor, workers, ray_address, sparsities, methods,
          calibration_size, bn_recalibrate, layers_text, device, data_dir) -> None:
    """Prune the model in RUN_DIR with every method at every sparsity; write results.

    On a multi-seed folder (RUN_DIR/seed<k>/) every seed is swept (or those of --seeds) and
    the summary over seeds is written.
    """
    found = seed_dirs(run_dir)
    load_run(next(iter(found.values()), run_dir))  # a missing or damaged folder: an error now
    config = SweepConfig(parse_methods(methods), parse_percents(sparsities),
                         calibration_size, bn_recalibrate, _layers(layers_text))
    if not found and seeds_text is not None:
        raise ValueError(f"--seeds needs a multi-seed run folder (with seed<k>/ folders); "
                         f"{run_dir} is a single-seed folder")
    if found:
        _run_seeds(_saved_seed_jobs(run_dir, seeds_text, config), run_dir, executor, workers,
                   ray_address, data_dir, device,
                   lambda: write_summary(run_dir, summarize_run(run_dir)))
        click.echo(f"summary over seeds in {run_dir / SUMMARY_CSV}")
        return
    with run_lock(run_dir):  # a second process on this folder fails at once (RunFolderBusy)
        _sweep(run_dir, config, data_dir, resolve_device(device))


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir) -> None:
    """Plots, report.md and report.html from the results saved in RUN_DIR."""
    _report(run_dir)


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for the combined summary, plots, report.md and report.html.")
def compare(run_dirs, out) -> None:
    """One report across run folders (single- or multi-seed) on the same test set."""
    md, page = write_all(compare_runs(list(run_dirs)), out)
    click.echo(f"report: {md} and {page}")
