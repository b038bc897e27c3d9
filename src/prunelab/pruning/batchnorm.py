"""Re-estimating BatchNorm statistics after pruning: forward passes only, no gradient step.

Pruning a conv shifts the mean and variance of what its BatchNorm sees; the running statistics
saved at training time then normalise with the wrong numbers. Running the pruned model on
calibration inputs in train mode, with the running statistics reset and ``momentum=None``
(a plain average over batches), re-estimates them. With every input in one batch (the default)
each BatchNorm's statistics are exactly the mean and unbiased variance of its inputs over the
calibration set, every earlier BatchNorm normalising with its own such statistics (with the
biased variance, as train mode does: a factor N / (N - 1) apart). In several batches they are
the average of per-batch statistics. Weights and the affine parameters are untouched, so
pruning stays post-hoc.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
>>> fixed = recalibrate_batchnorm(net, torch.randn(64, 3) + 5)
>>> bool(net[1].running_mean.abs().max() == 0)  # the input model is never changed
True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["has_batchnorm", "recalibrate_batchnorm", "reestimate_batchnorm_"]

_BN = nn.modules.batchnorm._BatchNorm


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer that tracks running statistics."""
    return any(isinstance(m, _BN) and m.track_running_stats for m in model.modules())


def _batches(inputs: torch.Tensor | Iterable[torch.Tensor],
             batch_size: int | None) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return inputs.split(batch_size) if batch_size is not None else [inputs]
    return inputs


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                   or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor | Iterable[torch.Tensor],
                          batch_size: int | None = None) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``inputs``.

    ``inputs``: a tensor of model inputs (one batch, or batches of ``batch_size`` to bound
    memory) or an iterable of input batches. The copy is returned in eval mode.
    """
    _check_batch_size(batch_size)
    fixed = copy.deepcopy(model)
    reestimate_batchnorm_(fixed, inputs, batch_size)
    return fixed


def reestimate_batchnorm_(model: nn.Module, inputs: torch.Tensor | Iterable[torch.Tensor],
                          batch_size: int | None = None) -> None:
    """``recalibrate_batchnorm`` in place: ``model``'s own statistics, left in eval mode."""
    _check_batch_size(batch_size)
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    model.eval()
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch seen
        m.train()
    seen = 0
    with torch.no_grad():
        for batch in _batches(inputs, batch_size):
            model(batch)
            seen += len(batch)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.eval()
    if seen == 0:
        raise ValueError("no calibration inputs to re-estimate BatchNorm statistics on")
