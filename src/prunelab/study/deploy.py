"""From a run folder to a compacted model file: prune, compact, choose backends, save.

``compact_run`` is what ``prunelab compact`` calls; ``prunelab.load_model`` reads the file back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelab.data import load_dataset
from prunelab.inference.compact import CompactMLP, compact
from prunelab.inference.export import (
    check_onnx,
    export_onnx,
    onnxruntime_available,
    onnxruntime_session,
    run_onnx,
    save_model,
)
from prunelab.inference.layers import check_backend
from prunelab.inference.structural import CompactionReport, compact_graph, max_difference
from prunelab.inference.timing import auto_backend, check_batch_size
from prunelab.pruning import METHODS, check_sparsity
from prunelab.study.runfolder import load_run
from prunelab.study.speed import pruned_from_run

__all__ = ["EXPORT_BACKENDS", "Exported", "compact_run"]

log = logging.getLogger(__name__)

EXAMPLES = 8
"""Test images the graph is traced on and the compacted and ONNX models are checked on."""

EXPORT_BACKENDS = ("auto", "dense", "csr-torch", "csr-numba")
"""``auto`` times the layer backends at the given batch size; the others apply to all layers."""


@dataclass(frozen=True)
class Exported:
    """What ``compact_run`` wrote."""

    net: nn.Module
    """The saved network: a ``CompactMLP``, or the compacted zoo module."""
    model_path: Path
    """Its safetensors file."""
    spec_path: Path
    """Its JSON layer spec."""
    onnx_path: Path | None = None
    """The ONNX file, when one was asked for."""
    report: CompactionReport | None = None
    """What was removed (models other than the MLP)."""
    onnx_difference: float | None = None
    """Largest difference between ONNX Runtime's and torch's outputs on the example inputs
    (relative to the largest output), when ONNX Runtime is installed."""


def _network(pruned, backend: str, batch_size: int) -> CompactMLP:
    if backend != "auto":
        return compact(pruned, check_backend(backend))
    choice = auto_backend(pruned, batch_size)
    # When running the masked model as is wins, its compacted dense twin is as fast and smaller.
    return compact(pruned) if choice.plan == ("masked",) else choice.module


def compact_run(run_dir: Path, method: str, sparsity: float, out: Path, backend: str = "auto",
                batch_size: int = 1024, data_dir: Path | None = None,
                onnx: Path | None = None) -> Exported:
    """Prune the model of ``run_dir`` with ``method`` at ``sparsity`` (as the sweep does),
    compact it, save it (and with ``onnx`` also as an ONNX file, checked with ONNX Runtime when
    it is installed). An MLP becomes a ``CompactMLP`` with per-layer backends; any other zoo
    model loses its dead channels, units and heads (``structural.compact_graph``)."""
    if backend not in EXPORT_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {list(EXPORT_BACKENDS)}")
    check_batch_size(batch_size)
    sparsity = check_sparsity(sparsity)
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {sorted(METHODS)}")
    if onnx is not None:
        check_onnx()  # before any pruning, not after it
    run = load_run(Path(run_dir))
    graph = run.config.family != "mlp"
    if graph and backend not in ("auto", "dense"):
        raise ValueError(f"--backend {backend} chooses the layers of an MLP; a "
                         f"{run.config.family} is compacted into dense layers (auto or dense)")
    data = None
    if METHODS[method].needs_calibration or graph:
        data = load_dataset(run.config.dataset, data_dir)
    _, pruned = pruned_from_run(Path(run_dir), method, sparsity, data)
    report = None
    if graph:
        example = data.test_x[:EXAMPLES]
        net, report = compact_graph(pruned, example)
        spec = save_model(net, Path(out), run.config.family, run.config.model)
    else:
        net = _network(pruned, backend, batch_size)
        example = torch.rand(EXAMPLES, net.input_size, generator=torch.Generator().manual_seed(0))
        spec = save_model(net, Path(out))
        log.info("saved %s (sizes %s, plan %s)", out, net.sizes, net.plan)
    difference = None
    if onnx is not None:
        export_onnx(net, Path(onnx), example_inputs=example)
        if onnxruntime_available():
            with torch.no_grad():
                difference = max_difference(run_onnx(onnxruntime_session(onnx), example),
                                            net(example))
    return Exported(net, Path(out), spec, None if onnx is None else Path(onnx), report,
                    difference)
