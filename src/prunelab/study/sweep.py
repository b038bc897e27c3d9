"""Orchestration: train into a run folder; sweep methods x sparsities and save results.

Results are written after every (method, sparsity), so an interrupted sweep leaves the rows
computed so far in ``results.csv``/``results.json``.
"""

from __future__ import annotations

import copy
import logging
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.data import Dataset, load_dataset, test_set_fingerprint
from prunelab.evaluate import evaluate
from prunelab.inference.compact import compacted_size
from prunelab.pruning import (
    METHODS,
    PruneContext,
    apply_weights,
    check_sparsity,
    chosen_layers,
    lookup,
    prune,
)
from prunelab.pruning.batchnorm import has_batchnorm, recalibrate_batchnorm
from prunelab.pruning.sparsity import measure_sparsity
from prunelab.study.checkpoint import train_into
from prunelab.study.lock import run_lock
from prunelab.study.memory import PeakMemory
from prunelab.study.runfolder import (
    Results,
    Run,
    RunConfig,
    environment_info,
    has_trained_model,
    load_run,
    resumable_rows,
    write_results,
)
from prunelab.train import StepInfo

__all__ = [
    "DEFAULT_SPARSITIES",
    "SweepConfig",
    "check_sweep",
    "row_settings",
    "sweep_settings",
    "calibration_set",
    "ensure_trained",
    "bn_recalibrates",
    "calibration_sizes",
    "method_sparsities",
    "prune_contexts",
    "resolve_device",
    "describe_model",
    "run_sweep",
    "sweep",
    "sweep_model",
]

log = logging.getLogger(__name__)

DEFAULT_SPARSITIES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
BN_CALIBRATION_SIZE = 2048
"""Training images BatchNorm statistics are re-estimated on (unless a calibration size is set)."""


@dataclass(frozen=True)
class SweepConfig:
    """Which methods at which sparsities."""

    methods: tuple[str, ...] = ("weight", "unit")
    """Names from ``prunelab.pruning.METHODS``."""
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    """Fractions in [0, 1] removed from every pruned layer."""
    calibration_size: int | None = None
    """Training images given to every calibration-aware method (never test images); None: each
    method's own default (``PruningMethod.calibration_size``)."""
    bn_recalibrate: bool | None = None
    """Re-estimate BatchNorm statistics of each pruned model on calibration images (forward
    passes only); None: when the model has BatchNorm."""
    layers: tuple[str, ...] | None = None
    """Names or glob patterns of the layers to prune (``pruning.targets.select_layers``); None:
    every Linear/Conv2d but the output layer (unit methods: those whose channels are their
    own)."""

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            if not layers or not all(isinstance(p, str) and p.strip() for p in layers):
                raise ValueError(f"layers must be non-empty names or patterns, got "
                                 f"{list(layers)}")
            object.__setattr__(self, "layers", tuple(p.strip() for p in layers))
        methods, sparsities = tuple(self.methods), tuple(self.sparsities)
        if not methods:
            raise ValueError("no pruning methods given")
        if not sparsities:
            raise ValueError("no sparsities given")
        for m in methods:
            lookup(m)  # raises for unknown names; builds N:M variants like wanda-1:4
        for name, values in (("method", methods), ("sparsity", sparsities)):
            if len(set(values)) != len(values):
                raise ValueError(f"repeated {name} in {list(values)}")
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "sparsities", tuple(check_sparsity(s) for s in sparsities))
        size = self.calibration_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise ValueError(f"calibration size must be a positive integer, "
                             f"got {self.calibration_size!r}")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must name a usable device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def calibration_set(data: Dataset, size: int, seed: int) -> torch.Tensor:
    """``size`` training images drawn without replacement with ``seed``."""
    if not 0 < size <= len(data.train_x):
        raise ValueError(f"calibration size must be in 1..{len(data.train_x)}, got {size}")
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:size]
    return data.train_x[idx]


def calibration_sizes(methods: tuple[str, ...], n_train: int,
                      override: int | None = None) -> dict[str, int]:
    """Calibration images per calibration-aware method among ``methods``: ``override`` for all,
    else each method's default capped at the ``n_train`` training images there are."""
    return {m: override if override is not None else min(METHODS[m].calibration_size, n_train)
            for m in methods if METHODS[m].needs_calibration}


def prune_contexts(data: Dataset | None, methods: tuple[str, ...], seed: int,
                   override: int | None = None) -> dict[str, PruneContext]:
    """One ``PruneContext`` per method, sharing one generator seeded with ``seed``.

    Calibration images are the first N of one permutation of the training set drawn with
    ``seed``, so a method given 2048 images sees the same ones whatever the others get.
    """
    sizes = calibration_sizes(methods, len(data.train_x), override) if data is not None else {}
    if data is None and any(METHODS[m].needs_calibration for m in methods):
        raise ValueError("calibration-aware methods need a dataset to draw calibration images")
    pool = calibration_set(data, max(sizes.values()), seed) if sizes else None
    generator = torch.Generator().manual_seed(seed)
    example = data.train_x[:1] if data is not None else None  # traces coupled channels
    return {m: PruneContext(pool[: sizes[m]] if m in sizes else None, generator, example)
            for m in methods}


def method_sparsities(method: str, config: SweepConfig) -> tuple[float, ...]:
    """The sweep's sparsities, or the method's only one (N:M patterns run once)."""
    fixed = METHODS[method].fixed_sparsity
    return config.sparsities if fixed is None else (fixed,)


def bn_recalibrates(model: nn.Module, config: SweepConfig) -> bool:
    """Whether a sweep of ``model`` re-estimates BatchNorm statistics after pruning."""
    if config.bn_recalibrate is None:
        return has_batchnorm(model)
    return config.bn_recalibrate


def bn_inputs_for(model: nn.Module, data: Dataset, config: SweepConfig,
               seed: int) -> torch.Tensor | None:
    """Calibration images for BatchNorm re-estimation (the calibration draw), or None."""
    if not bn_recalibrates(model, config):
        return None
    size = config.calibration_size or min(BN_CALIBRATION_SIZE, len(data.train_x))
    return calibration_set(data, size, seed)


def pruned_model(model: nn.Module, method: str, sparsity: float, layers: list[str] | None,
                 context: PruneContext, bn_inputs: torch.Tensor | None) -> nn.Module:
    """A copy of ``model`` pruned by ``method`` at ``sparsity`` as a sweep prunes it: BatchNorm
    statistics re-estimated on ``bn_inputs`` (if given), and at k = 0 the dense model itself
    (nothing is pruned, and a least-squares refit would only move it: ``unit-act-refit`` at
    k = 0 moved the trained ResNet's weights by up to 0.06)."""
    if sparsity == 0:
        chosen_layers(model, method, layers)  # still: one-line errors for bad names
        return apply_weights(model, {})
    pruned = apply_weights(model, prune(model, method, sparsity, layers, context))
    return pruned if bn_inputs is None else recalibrate_batchnorm(pruned, bn_inputs)


def sweep(
    model: nn.Module, data: Dataset, config: SweepConfig, seed: int = 0,
    skip: frozenset[tuple[str, float]] = frozenset(),
) -> Iterator[dict[str, Any]]:
    """Yield one result row per method and sparsity, pruning and evaluating as it goes; rows
    (method, sparsity_pct) in ``skip`` are left out. Each row draws its random numbers from a
    generator seeded by (seed, method, k), so it does not depend on which rows ran before."""
    contexts = prune_contexts(data, config.methods, seed, config.calibration_size)
    bn_inputs = bn_inputs_for(model, data, config, seed)
    for method in config.methods:
        context = contexts[method]
        for sparsity in method_sparsities(method, config):
            if (method, round(sparsity * 100, 6)) in skip:
                continue
            context.generator.manual_seed(zlib.crc32(f"{seed}/{method}/{sparsity!r}".encode()))
            start = time.perf_counter()
            with PeakMemory(device=data.test_x.device) as peak:
                layers = list(config.layers) if config.layers else None
                pruned = pruned_model(model, method, sparsity, layers, context, bn_inputs)
            seconds = time.perf_counter() - start
            accuracy, loss = evaluate(pruned, data.test_x, data.test_y)
            stats = measure_sparsity(pruned, example=data.test_x[:1])
            compact_params, compact_macs = compacted_size(pruned, data.test_x[:2])
            log.info("%s @ %g%%: accuracy %.4f", method, sparsity * 100, accuracy)
            yield {
                "method": method,
                "granularity": METHODS[method].granularity,
                "calibration_size": 0 if context.calibration is None else len(context.calibration),
                "bn_recalibrated": bn_inputs is not None and sparsity > 0,
                "pruned_layers": list(config.layers) if config.layers else None,
                "sparsity_pct": round(sparsity * 100, 6),
                "accuracy": accuracy,
                "loss": loss,
                "zero_fraction": stats.zero_fraction,
                "effective_sparsity": stats.effective_sparsity,
                "params_remaining": stats.params_remaining,
                "params_total": stats.params_total,
                "macs_per_sample": stats.macs_per_sample,
                "compact_params": compact_params,
                "compact_macs": compact_macs,
                "seconds": seconds,
                "peak_memory_mb": max(peak.rss_bytes, peak.cuda_bytes) / 2**20,
                "layers": [asdict(layer) for layer in stats.layers],
            }


def ensure_trained(
    run_dir: Path,
    config: RunConfig,
    data: Dataset,
    device: torch.device,
    on_step: Callable[[StepInfo], None] | None = None,
) -> tuple[Run, bool]:
    """The run folder's model if trained with ``config``, else a newly trained one.

    Returns (run, trained_now).
    """
    with run_lock(run_dir):  # another process on this folder: RunFolderBusy
        if has_trained_model(run_dir, config):
            return load_run(run_dir), False
        train_into(run_dir, config, data, device, on_step)  # resumes from a checkpoint
        return load_run(run_dir), True


def run_sweep(
    run_dir: Path,
    config: SweepConfig,
    data_dir: str | None = None,
    device: torch.device | str = "cpu",
    on_row: Callable[[dict[str, Any]], None] | None = None,
    data: Dataset | None = None,
) -> Results:
    """Sweep the model saved in ``run_dir``; results are rewritten after every row."""
    run = load_run(run_dir)
    data = data if data is not None else load_dataset(run.config.dataset, data_dir)
    return sweep_model(run.model, data, run_dir, config, run.config.train.seed, device, on_row,
                       run_meta=run.config.to_dict(), history=run.history)


def describe_model(model: nn.Module, dataset: str, seed: int) -> dict[str, Any]:
    """``results.json``'s ``run`` entry for a model prunelab did not build or train (``seed``:
    the sweep's, which draws the calibration images)."""
    return {"dataset": dataset, "family": "custom",
            "model": {"class": type(model).__name__,
                      "parameters": sum(p.numel() for p in model.parameters())},
            "train": {"trained": "outside prunelab", "seed": seed}}


def check_sweep(model: nn.Module, config: SweepConfig) -> None:
    """One-line errors for a sweep that cannot run on ``model``, before any work."""
    if config.layers:
        for method in config.methods:  # names what matches nothing, or cannot be pruned
            chosen_layers(model, method, list(config.layers))


def sweep_settings(model: nn.Module, n_train: int, config: SweepConfig,
                   seed: int) -> dict[str, Any]:
    """The ``sweep`` entry of ``results.json``'s meta."""
    return {"methods": list(config.methods), "sparsities": list(config.sparsities),
            "calibration_size": config.calibration_size,
            "calibration_sizes": calibration_sizes(config.methods, n_train,
                                                   config.calibration_size),
            "bn_recalibrate": bn_recalibrates(model, config), "seed": seed,
            "layers": list(config.layers) if config.layers else None}


def row_settings(config: SweepConfig, settings: dict[str, Any]
                 ) -> dict[tuple[str, float], dict[str, Any]]:
    """Per (method, sparsity_pct) of ``config``, the values its row carries that decide whether
    an earlier row can be kept (``runfolder.resumable_rows``)."""
    sizes, bn = settings["calibration_sizes"], settings["bn_recalibrate"]
    layers = list(config.layers) if config.layers else None
    return {(m, round(k * 100, 6)): {"calibration_size": sizes.get(m, 0),
                                     "bn_recalibrated": bn and k > 0, "pruned_layers": layers}
            for m in config.methods for k in method_sparsities(m, config)}


def sweep_model(
    model: nn.Module,
    data: Dataset,
    run_dir: Path,
    config: SweepConfig,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_row: Callable[[dict[str, Any]], None] | None = None,
    run_meta: dict[str, Any] | None = None,
    history: list[dict[str, float]] | None = None,
) -> Results:
    """Sweep any trained ``model`` on ``data`` into ``run_dir`` (``results.csv``/``.json``,
    rewritten after every row); ``model`` itself is never changed.

    ``run_meta`` describes the model (default: ``describe_model``); rows of an earlier sweep of
    the same model that this one does not recompute are kept. The reports
    (``prunelab.report.writer.write_run_reports``) read only what this writes.
    """
    run_dir = Path(run_dir)
    check_sweep(model, config)  # before any work, not after some
    model = copy.deepcopy(model).to(device).eval()
    run_meta = run_meta if run_meta is not None else describe_model(model, data.name, seed)
    data_on_device = Dataset(data.name, data.train_x.to(device), data.train_y.to(device),
                             data.test_x.to(device), data.test_y.to(device))
    meta = {
        "run": run_meta,
        "sweep": sweep_settings(model, len(data.train_x), config, seed),
        "environment": environment_info(device),
        "test_size": len(data.test_x),
        "test_set": test_set_fingerprint(data),
        "history": history or [],
    }
    accuracy, loss = evaluate(model, data_on_device.test_x, data_on_device.test_y)
    dense = {"accuracy": accuracy, "loss": loss}
    order = row_settings(config, meta["sweep"])
    with run_lock(run_dir):  # rows computed before with the same settings are not redone
        rows = resumable_rows(run_dir, meta, order)
        done = frozenset(k for r in rows if (k := (r["method"], r["sparsity_pct"])) in order)
        rank = {key: i for i, key in enumerate(order)}  # rows in sweep order, others first
        for row in sweep(model, data_on_device, config, seed, done):
            rows.append(row)
            rows.sort(key=lambda r: rank.get((r["method"], r["sparsity_pct"]), -1))
            write_results(run_dir, dense, rows, meta)
            if on_row is not None:
                on_row(row)
    return Results(dense, rows, meta)
