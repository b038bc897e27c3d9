"""Whole-network latency of every backend, for each pruning method and sparsity of a run.

``run_bench`` prunes the run's model with each method at each sparsity and times the forward
pass of each backend in ``NETWORK_BACKENDS`` at each batch size, round-robin with the dense
model, so ``speedup_vs_dense`` is a ratio taken in the same run. ``bench.csv`` and
``bench.json`` are rewritten atomically after every (method, sparsity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.data import Dataset, load_dataset
from prunelab.inference.compact import compact
from prunelab.inference.timing import auto_backend, check_batch_size, load_warning, time_calls
from prunelab.models.mlp import linear_layers
from prunelab.pruning import METHODS, apply_weights, check_sparsity, prune
from prunelab.pruning.batchnorm import recalibrate_batchnorm
from prunelab.pruning.sparsity import measure_sparsity
from prunelab.study.runfolder import BENCH_CSV, environment_info, load_run, write_bench
from prunelab.study.sweep import SweepConfig, bn_inputs_for, bn_recalibrates, prune_contexts

__all__ = [
    "NETWORK_BACKENDS",
    "BenchConfig",
    "bench_pruned",
    "bench_run_folder",
    "pruned_from_run",
    "run_bench",
]

log = logging.getLogger(__name__)


Builder = Callable[[nn.Module, nn.Module, int], tuple[nn.Module, str]]
NETWORK_BACKENDS: dict[str, Builder] = {
    "dense": lambda dense, pruned, batch: (dense, "unpruned model"),
    "masked": lambda dense, pruned, batch: (pruned, "zeroed weights, dense arithmetic"),
    "compacted": lambda dense, pruned, batch: (compact(pruned), "dense"),
    "sparse": lambda dense, pruned, batch: (compact(pruned, "csr-numba"), "csr-numba"),
    "sparse-torch": lambda dense, pruned, batch: (compact(pruned, "csr-torch"), "csr-torch"),
    "auto": lambda dense, pruned, batch: _auto(pruned, batch),
}
"""Whole-network backends: name -> (dense model, pruned model, batch) -> (module, plan)."""
BATCH_DEPENDENT = frozenset({"auto"})
"""Backends whose module depends on the batch size (the others are built once)."""


def _auto(pruned: nn.Module, batch: int) -> tuple[nn.Module, str]:
    choice = auto_backend(pruned, batch)
    return choice.module, "/".join(choice.plan)


@dataclass(frozen=True)
class BenchConfig:
    """What to time, and how."""

    batch_sizes: tuple[int, ...] = (1, 64, 1024, 10000)
    """Samples per forward pass."""
    backends: tuple[str, ...] = tuple(NETWORK_BACKENDS)
    """Keys of ``NETWORK_BACKENDS``; ``dense`` is always timed (it is the reference)."""
    warmup: int = 2
    """Untimed rounds before timing."""
    repeats: int = 15
    """Timed rounds; the median is reported."""
    budget_s: float = 10.0
    """Stop repeating (after 3 rounds) once one batch size has taken this long."""
    seed: int = 0
    """Seeds the random inputs and randomised pruning methods."""

    def __post_init__(self) -> None:
        sizes = tuple(check_batch_size(b) for b in self.batch_sizes)
        if not sizes:
            raise ValueError("no batch sizes given")
        unknown = [b for b in self.backends if b not in NETWORK_BACKENDS]
        if unknown or not self.backends:
            raise ValueError(f"unknown backend(s) {unknown}; choose from {list(NETWORK_BACKENDS)}")
        backends = ("dense", *(b for b in self.backends if b != "dense"))
        object.__setattr__(self, "batch_sizes", sizes)
        object.__setattr__(self, "backends", backends)
        if self.repeats < 1 or self.warmup < 0 or self.budget_s <= 0:
            raise ValueError(f"need repeats >= 1, warmup >= 0, budget_s > 0; got "
                             f"{self.repeats}, {self.warmup}, {self.budget_s}")


def _dense_macs(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in linear_layers(model))


@torch.no_grad()
def _max_diff(module: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    return float((module(x) - reference).abs().max())


def bench_pruned(dense: nn.Module, pruned: nn.Module, config: BenchConfig,
                 check_x: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Rows (without method/sparsity) timing each backend of ``pruned`` at each batch size.

    ``check_x``: inputs on which each backend's outputs are compared with ``pruned``'s.
    """
    live = measure_sparsity(pruned).macs_per_sample
    flop_ratio = _dense_macs(dense) / live if live else float("inf")
    reference = pruned(check_x) if check_x is not None else None
    gen = torch.Generator().manual_seed(config.seed)
    built: dict[str, tuple[nn.Module, str, float | str]] = {}
    rows = []
    for batch in config.batch_sizes:
        for name in config.backends:
            if name in built and name not in BATCH_DEPENDENT:
                continue  # built and checked once for all batch sizes
            module, plan = NETWORK_BACKENDS[name](dense, pruned, batch)
            diff = ("" if reference is None or name == "dense"
                    else _max_diff(module, reference, check_x))
            built[name] = (module, plan, diff)
        x = torch.rand(batch, linear_layers(dense)[0][1].in_features, generator=gen)
        times = time_calls([lambda m=built[b][0], x=x: m(x) for b in config.backends],
                           config.warmup, config.repeats, config.budget_s)
        for name, t in zip(config.backends, times, strict=True):
            _, plan, diff = built[name]
            rows.append({
                "batch_size": batch, "backend": name, "latency_ms": 1e3 * t,
                "speedup_vs_dense": times[0] / t, "flop_ratio": flop_ratio, "plan": plan,
                "max_abs_diff": diff, "repeats": config.repeats,
                "threads": torch.get_num_threads(),
            })
    return rows


def run_bench(run_dir: Path, model: nn.Module, methods: tuple[str, ...],
              sparsities: tuple[float, ...], config: BenchConfig,
              data: Dataset | None = None, check_x: torch.Tensor | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Time every backend for each method and sparsity; write ``bench.csv`` after each."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown pruning method(s) {unknown}; choose from {sorted(METHODS)}")
    sparsities = tuple(check_sparsity(s) for s in sparsities)
    warning = load_warning()
    if warning:
        log.warning(warning)
    meta = {"config": asdict(config), "environment": environment_info(),
            "load_warning": warning}
    contexts = prune_contexts(data, methods, config.seed)
    rows: list[dict[str, Any]] = []
    for method in methods:
        for sparsity in sparsities:
            pruned = apply_weights(model, prune(model, method, sparsity,
                                                context=contexts[method]))
            for row in bench_pruned(model, pruned, config, check_x):
                row = {"method": method, "sparsity_pct": round(100 * sparsity, 6), **row}
                rows.append(row)
                if on_row:
                    on_row(row)
            write_bench(Path(run_dir), rows, meta)
    return rows


def pruned_from_run(run_dir: Path, method: str, sparsity: float, data: Dataset | None = None,
                    calibration_size: int | None = None,
                    seed: int | None = None) -> tuple[nn.Module, nn.Module]:
    """(trained model, its copy pruned by ``method`` at ``sparsity``) from ``run_dir``.

    By default with the run's seed and the method's calibration size, as ``prunelab sweep``
    prunes it (BatchNorm statistics re-estimated for a model that has BatchNorm): the model is
    the one whose accuracy ``results.csv`` reports.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {sorted(METHODS)}")
    run = load_run(Path(run_dir))
    config = SweepConfig((method,), (sparsity,), calibration_size)
    recalibrate = sparsity > 0 and bn_recalibrates(run.model, config)
    if METHODS[method].needs_calibration or recalibrate:
        data = data or load_dataset(run.config.dataset)
    seed = run.config.train.seed if seed is None else seed
    context = prune_contexts(data, (method,), seed, calibration_size)[method]
    pruned = apply_weights(run.model, prune(run.model, method, sparsity, context=context))
    if recalibrate:  # as the sweep does: BatchNorm statistics of the pruned network
        pruned = recalibrate_batchnorm(pruned, bn_inputs_for(run.model, data, config, seed))
    return run.model, pruned


def bench_run_folder(run_dir: Path, methods: tuple[str, ...], sparsities: tuple[float, ...],
                     config: BenchConfig, data_dir: Path | None = None, check: bool = True,
                     on_row: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """``run_bench`` on the model of ``run_dir``; with ``check``, outputs are compared with the
    masked network's on its test set. Returns the path of ``bench.csv``.
    """
    run = load_run(Path(run_dir))
    needs = any(METHODS[m].needs_calibration for m in methods if m in METHODS)
    data = load_dataset(run.config.dataset, data_dir) if check or needs else None
    run_bench(Path(run_dir), run.model, methods, sparsities, config, data,
              data.test_x if check else None, on_row)
    return Path(run_dir) / BENCH_CSV
