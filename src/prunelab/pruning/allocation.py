"""Non-uniform per-layer sparsity: spend the kept weights where they matter most.

The overall sparsity of the pruned layers stays exactly k (``round(k * total)`` weights removed
in all), so comparisons with uniform methods at equal k remain fair; each layer gets its own k_l.
The allocation minimises the total *relative* output energy removed, estimated on the dense
network: weight w_ij costs ``w_ij^2 * ||x_j||^2 / sum_layer(w^2 * ||x||^2)`` (Wanda's score,
squared and normalised per layer), and one global threshold on that cost is the greedy optimum
of the additive estimate. Cost: one dense forward pass and a sort of all weights.

``magnitude_allocation`` is the data-free alternative that works on any model: the per-layer
sparsities one global |w| threshold gives (``global-weight``'s), so layers with large weights
-- a ResNet's 144-weight stem, a LeNet's first conv -- keep more of them.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.pruning import PruneContext
from prunelab.pruning.calibrated import calibration_inputs, chain, forward

__all__ = ["energy_allocation", "magnitude_allocation"]


def _layer_costs(model: nn.Module, names: list[str], context: PruneContext,
                 power: float) -> dict[str, torch.Tensor]:
    x = calibration_inputs(model, context)
    costs, todo = {}, set(names)
    for name, layer in chain(model):
        w = layer.weight.detach().double()
        if name in todo:
            energy = w**2 * (x**2).sum(0)[None, :]  # (out, in)
            costs[name] = energy / energy.sum().clamp_min(1e-300) ** power
            todo.discard(name)
        if not todo:
            break
        x = forward(layer, w, x, False)
    return costs


def energy_allocation(model: nn.Module, names: list[str], sparsity: float,
                      context: PruneContext, power: float = 1.0) -> dict[str, float]:
    """{layer: its sparsity}, overall exactly ``round(k * total)`` removed (see module doc)."""
    return _allocate(_layer_costs(model, names, context, power), sparsity)


def _allocate(costs: dict[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Per layer the fraction below one global threshold keeping the largest costs."""
    flat = torch.cat([c.flatten() for c in costs.values()])
    keep = len(flat) - round(sparsity * len(flat))
    kept = torch.zeros(len(flat), dtype=torch.bool)
    if keep > 0:
        kept[flat.topk(keep).indices] = True
    out, start = {}, 0
    for name, c in costs.items():
        n = c.numel()
        out[name] = 1.0 - float(kept[start:start + n].sum()) / n
        start += n
    return out


def magnitude_allocation(model: nn.Module, names: list[str], sparsity: float,
                         context: PruneContext) -> dict[str, float]:
    """{layer: its sparsity} from one |w| threshold over all ``names`` (overall exactly
    ``round(k * total)`` removed, as ``global-weight``)."""
    modules = dict(model.named_modules())
    costs = {n: modules[n].weight.detach().abs().double() for n in names}
    return _allocate(costs, sparsity)
