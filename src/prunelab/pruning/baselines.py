"""Baselines every pruning comparison needs: global magnitude and random pruning.

- ``global-weight``: one magnitude threshold across all pruned layers, so the *overall* sparsity
  of the pruned layers is k while each layer ends up with its own sparsity.
- ``global-unit``: one threshold on units' incoming L2 norms across all pruned layers.
- ``random-weight`` / ``random-unit``: per layer, exactly ``round(k * n)`` weights (units) drawn
  at random with ``context.generator`` -- the same per-layer sparsity as the uniform methods.

Cost: one sort of the weights (or units); no data.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.pruning import PruneContext
from prunelab.pruning.magnitude import per_unit

__all__ = ["global_unit", "global_weight", "random_unit", "random_weight"]


def _weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach() for name in names}


def _keep_largest(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Bool masks keeping the largest scores across all layers: ``round(k * total)`` removed."""
    flat = torch.cat([s.flatten().double() for s in scores.values()])
    keep = len(flat) - round(sparsity * len(flat))
    chosen = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
    if keep > 0:
        chosen[flat.topk(keep).indices] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = chosen[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


def global_weight(model: nn.Module, names: list[str], sparsity: float,
                  context: PruneContext) -> dict[str, torch.Tensor]:
    """Zero the smallest-|w| weights across all ``names`` layers together."""
    weights = _weights(model, names)
    masks = _keep_largest({n: w.abs() for n, w in weights.items()}, sparsity)
    return {n: w * masks[n] for n, w in weights.items()}


def global_unit(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
    """Zero the units (rows) of smallest incoming L2 norm across all ``names`` layers."""
    weights = _weights(model, names)
    masks = _keep_largest({n: w.double().flatten(1).norm(dim=1) for n, w in weights.items()},
                          sparsity)
    return {n: w * per_unit(masks[n], w) for n, w in weights.items()}


def _random_keep(n: int, sparsity: float, generator: torch.Generator | None) -> torch.Tensor:
    """Bool (n,) mask with exactly ``n - round(k * n)`` True entries at random."""
    generator = generator or torch.Generator().manual_seed(0)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: n - round(sparsity * n)]] = True
    return mask


def random_weight(model: nn.Module, names: list[str], sparsity: float,
                  context: PruneContext) -> dict[str, torch.Tensor]:
    """Per layer, zero ``round(k * n)`` weights drawn at random."""
    return {n: w * _random_keep(w.numel(), sparsity, context.generator).reshape(w.shape)
            .to(w.device) for n, w in _weights(model, names).items()}


def random_unit(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
    """Per layer, zero ``round(k * units)`` units (rows) drawn at random."""
    return {n: w * per_unit(_random_keep(len(w), sparsity, context.generator), w).to(w.device)
            for n, w in _weights(model, names).items()}
