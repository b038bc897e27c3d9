"""Layer inputs of any model, captured with forward hooks and kept only as Gram matrices.

A calibration-aware method needs, for the layer it prunes, the inputs the dense network gives it
(X_d) and those the network pruned so far gives it (X_p), as rows of the layer's matrix problem:
a Linear's input vectors (every token's, for inputs of shape (batch, ..., features)), a conv's
unfolded patches (im2col: one row per output position, columns ordered as the weight's
(in, kh, kw)). Rows are never kept: each calibration batch adds ``X_p^T X_p`` and ``X_d^T X_p``
to float64 accumulators (GPTQ's ``add_batch``), so memory is O(fan_in^2) whatever the data size.
The forward pass stops at the captured layer (nothing after it is computed).

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
>>> grams = capture_grams(net, net, "0", torch.rand(10, 1, 6, 6), batch_size=4)
>>> grams.gram.shape, grams.count  # 9 inputs per patch; 10 images x 16 positions
(torch.Size([9, 9]), 160)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CALIBRATION_BATCH",
    "LayerGrams",
    "capture_grams",
    "forward_order",
    "groups_of",
    "layer_rows",
]

CALIBRATION_BATCH = 64
"""Images per forward pass while capturing: bounds the unfolded rows held at once."""


@dataclass(frozen=True)
class LayerGrams:
    """Second moments of one layer's inputs over the calibration set."""

    gram: torch.Tensor
    """(fan_in, fan_in) float64 ``X_p^T X_p / count``: the pruned network's inputs; a grouped
    conv's are (groups, fan_in per group, fan_in per group), one per group."""
    cross: torch.Tensor
    """(fan_in, fan_in) float64 ``X_d^T X_p / count``: dense rows against pruned rows (grouped
    conv: per group, as ``gram``)."""
    count: int
    """Rows behind the averages (samples x output positions)."""


class _Stop(Exception):
    """Raised by the capturing hook: nothing after the layer needs computing."""


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x``, the input of ``module``, as the rows its weight multiplies: (rows, fan_in), or
    (groups, rows, fan_in per group) for a grouped conv, whose groups are separate problems
    (output channels of group g read only input channels of group g)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError("calibration-aware methods support Conv2d layers with zero "
                             f"padding given as numbers; got padding={module.padding!r}, "
                             f"padding_mode={module.padding_mode!r}")
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N * positions, in * kh * kw)
        if module.groups == 1:
            return rows
        # unfold orders columns by input channel, so each group's are contiguous
        return rows.reshape(len(rows), module.groups, -1).transpose(0, 1)
    raise TypeError(f"cannot capture the inputs of a {type(module).__name__}")


def groups_of(module: nn.Module) -> int:
    """How many separate row problems a layer's weight is (a grouped conv's groups, else 1)."""
    return getattr(module, "groups", 1)


def _input_of(model: nn.Module, module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """What ``module`` receives when ``model`` runs on ``batch`` (the pass stops there)."""
    seen: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(grab)
    try:
        model(batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise ValueError("the layer is not reached by the model's forward pass")
    return seen[0]


def capture_grams(dense: nn.Module, pruned: nn.Module, name: str, inputs: torch.Tensor,
                  batch_size: int = CALIBRATION_BATCH) -> LayerGrams:
    """Gram matrices of layer ``name``'s inputs in ``dense`` and ``pruned`` over ``inputs``.

    Both models must hold a layer ``name`` and be in eval mode (BatchNorm must not update).
    """
    d_layer, p_layer = dict(dense.named_modules())[name], dict(pruned.named_modules())[name]
    gram = cross = None
    count = 0
    with torch.no_grad():
        for batch in inputs.split(batch_size):
            rows_d = layer_rows(d_layer, _input_of(dense, d_layer, batch))
            rows_p = layer_rows(p_layer, _input_of(pruned, p_layer, batch))
            # float32 products per batch, summed in float64: a batch's rows stay few enough.
            g, c = (rows_p.mT @ rows_p).double(), (rows_d.mT @ rows_p).double()
            gram = g if gram is None else gram + g
            cross = c if cross is None else cross + c
            count += rows_p.shape[-2]
    if gram is None or count == 0:
        raise ValueError("no calibration inputs to capture")
    return LayerGrams(gram / count, cross / count, count)


def forward_order(model: nn.Module, names: list[str], example: torch.Tensor) -> list[str]:
    """``names`` in the order the forward pass first reaches them (unreached ones last)."""
    modules = dict(model.named_modules())
    order: list[str] = []
    handles = [modules[n].register_forward_pre_hook(
        lambda _m, _a, n=n: order.append(n) if n not in order else None) for n in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in names if n not in order]
