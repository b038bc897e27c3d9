"""From a run folder to a compacted model file: prune, compact, choose backends, save.

``compact_run`` is what ``prunelab compact`` calls; ``prunelab.load_model`` reads the file back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prunelab.data import load_dataset
from prunelab.inference.compact import CompactMLP, compact
from prunelab.inference.export import check_onnx, export_onnx, save_model
from prunelab.inference.layers import check_backend
from prunelab.inference.timing import auto_backend, check_batch_size
from prunelab.pruning import METHODS, check_sparsity
from prunelab.study.runfolder import load_run
from prunelab.study.speed import pruned_from_run

__all__ = ["EXPORT_BACKENDS", "Exported", "compact_run"]

log = logging.getLogger(__name__)

EXPORT_BACKENDS = ("auto", "dense", "csr-torch", "csr-numba")
"""``auto`` times the layer backends at the given batch size; the others apply to all layers."""


@dataclass(frozen=True)
class Exported:
    """What ``compact_run`` wrote."""

    net: CompactMLP
    """The saved network."""
    model_path: Path
    """Its safetensors file."""
    spec_path: Path
    """Its JSON layer spec."""
    onnx_path: Path | None = None
    """The ONNX file, when one was asked for."""


def _network(pruned, backend: str, batch_size: int) -> CompactMLP:
    if backend != "auto":
        return compact(pruned, check_backend(backend))
    choice = auto_backend(pruned, batch_size)
    # When running the masked model as is wins, its compacted dense twin is as fast and smaller.
    return compact(pruned) if choice.plan == ("masked",) else choice.module


def compact_run(run_dir: Path, method: str, sparsity: float, out: Path, backend: str = "auto",
                batch_size: int = 1024, data_dir: Path | None = None,
                onnx: Path | None = None) -> Exported:
    """Prune the model of ``run_dir`` with ``method`` at ``sparsity``, compact it, save it
    (and with ``onnx`` also as an ONNX file)."""
    if backend not in EXPORT_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {list(EXPORT_BACKENDS)}")
    check_batch_size(batch_size)
    sparsity = check_sparsity(sparsity)
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {sorted(METHODS)}")
    if onnx is not None:
        check_onnx()  # before any pruning, not after it
    data = None
    if METHODS[method].needs_calibration:
        data = load_dataset(load_run(Path(run_dir)).config.dataset, data_dir)
    _, pruned = pruned_from_run(Path(run_dir), method, sparsity, data)
    net = _network(pruned, backend, batch_size)
    spec = save_model(net, Path(out))
    log.info("saved %s (sizes %s, plan %s)", out, net.sizes, net.plan)
    if onnx is not None:
        export_onnx(net, Path(onnx))
    return Exported(net, Path(out), spec, None if onnx is None else Path(onnx))
