"""How sparse a pruned network really is: zero weights, effectively dead weights, cost.

A weight is *effectively* dead when it can no longer change the output. In a chain of Linear
layers with ReLU between them and no biases, a unit whose incoming weights are all zero outputs
0, so its outgoing weights are dead too; a unit whose outgoing weights are all zero is never
read, so its incoming weights are dead. Both rules are applied until nothing changes.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
>>> with torch.no_grad():
...     _ = net[0].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
...     _ = net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
>>> stats = measure_sparsity(net)
>>> stats.zero_fraction, stats.effective_sparsity  # 2 of 6 zero; unit 2's outgoing weight dead
(0.3333333333333333, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelab.models.mlp import linear_layers

__all__ = ["LayerSparsity", "SparsityStats", "effective_masks", "measure_sparsity"]


@dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one Linear layer."""

    name: str
    """Qualified module name."""
    shape: tuple[int, int]
    """(out, in) as in torch's ``weight``."""
    zero_fraction: float
    """Fraction of weights equal to zero."""
    effective_sparsity: float
    """Fraction of weights that cannot change the output (zero or dead)."""
    effective_weights: int
    """Weights that can still change the output."""


@dataclass(frozen=True)
class SparsityStats:
    """Sparsity of every Linear layer and of the whole network."""

    layers: tuple[LayerSparsity, ...]
    """Per layer, in order."""
    zero_fraction: float
    """Zero weights / all Linear weights."""
    effective_sparsity: float
    """Dead-or-zero weights / all Linear weights."""
    params_total: int
    """Linear weights and biases of the dense network."""
    params_remaining: int
    """Weights and biases that can still change the output."""
    macs_per_sample: int
    """Multiply-adds per sample of a sparse execution skipping every dead weight."""


def _chains(layers: list[nn.Linear]) -> bool:
    pairs = zip(layers[:-1], layers[1:], strict=True)
    return all(a.out_features == b.in_features for a, b in pairs)


def effective_masks(layers: list[nn.Linear]) -> list[torch.Tensor]:
    """Per layer a bool (out, in) mask of weights that can still change the output.

    Assumes the layers are applied in order with ReLU-like activations (f(0) = 0) between them.
    """
    alive = [layer.weight.detach() != 0 for layer in layers]
    if not _chains(layers):
        return alive  # not an MLP chain: no cross-layer reasoning is sound
    changed = True
    while changed:
        changed = False
        for i in range(len(layers) - 1):
            # Unit outputs of layer i == inputs of layer i+1.
            used = alive[i + 1].any(0)  # (out_i,): read by some live weight of layer i+1
            keep_in = alive[i] & used[:, None]
            produces = alive[i].any(1)  # (out_i,): has a live incoming weight
            if layers[i].bias is not None:
                produces = torch.ones_like(produces)  # a bias makes a constant, not a zero
            keep_out = alive[i + 1] & produces[None, :]
            if not (torch.equal(keep_in, alive[i]) and torch.equal(keep_out, alive[i + 1])):
                alive[i], alive[i + 1] = keep_in, keep_out
                changed = True
    return alive


def measure_sparsity(model: nn.Module) -> SparsityStats:
    """Zero fraction, effective sparsity, remaining parameters and MACs of ``model``."""
    named = linear_layers(model)
    if not named:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers")
    layers = [m for _, m in named]
    masks = effective_masks(layers)
    rows, zeros, dead, total, remaining = [], 0, 0, 0, 0
    for (name, layer), mask in zip(named, masks, strict=True):
        n = layer.weight.numel()
        n_zero = int((layer.weight == 0).sum())
        n_live = int(mask.sum())
        rows.append(LayerSparsity(name, tuple(layer.weight.shape), n_zero / n, 1 - n_live / n,
                                  n_live))
        zeros, dead, total, remaining = (zeros + n_zero, dead + n - n_live, total + n,
                                         remaining + n_live)
    weights = remaining
    biases_total = sum(layer.bias.numel() for layer in layers if layer.bias is not None)
    # A bias still matters when its unit is read downstream (or is an output).
    biases_live = biases_total if not _chains(layers) else sum(
        int(masks[i + 1].any(0).sum()) if i + 1 < len(layers) else layer.bias.numel()
        for i, layer in enumerate(layers)
        if layer.bias is not None
    )
    return SparsityStats(
        layers=tuple(rows),
        zero_fraction=zeros / total,
        effective_sparsity=dead / total,
        params_total=total + biases_total,
        params_remaining=weights + biases_live,
        macs_per_sample=weights,
    )
