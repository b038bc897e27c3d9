"""Calibration-aware unit pruning: remove whole hidden units, compensate in the next layer.

Layers are processed in order. For a pruned layer i the calibration activations A_p (pruned
network) and A_d (dense network) of its units are computed; units are chosen, their incoming
weights (rows of layer i) are zeroed, and the *next* layer's weights are refit by least squares
so that ``A_p[:, kept] @ V.T`` reproduces the dense network's input to layer i+1,
``A_d @ W_next.T``. The method therefore also returns new weights for the layer after each pruned
one -- for the last hidden layer that is the output layer. ``sparsity`` is the fraction of units
removed per pruned layer (``round(k * units)``), as for the original ``unit`` method.

- ``unit-act-refit``: keep the units with the largest ``||a_j|| * ||W_next[:, j]||`` (activation
  norm times outgoing weight norm, the unit analogue of Wanda), then refit.
- ``unit-obs``: greedy backward elimination with OBS: repeatedly drop the unit whose removal,
  with the optimal least-squares compensation of the next layer, adds the least error
  ``sum_r V[r, j]^2 / [G^-1]_jj``, updating V and G^-1 exactly (structured OBS as in OBC / ZipLM).
  Cost: one (units x units) inverse and ``round(k * units)`` rank-one updates per layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunelab.pruning import PruneContext
from prunelab.pruning.calibrated import (
    calibration_inputs,
    chain,
    damped_gram,
    forward,
    keep_count,
    masked_lstsq,
    refit_targets,
)

__all__ = ["UnitChooser", "activation_choice", "obs_choice", "unit_compute"]

UNIT_DAMPING = 1e-3
"""Gram damping for the next layer's refit (fraction of the mean diagonal)."""

UnitChooser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(gram (u, u), rhs (out, u), activations (N, u), keep) -> bool (u,) mask of kept units."""


def activation_choice(gram: torch.Tensor, rhs: torch.Tensor, acts: torch.Tensor,
                      keep: int) -> torch.Tensor:
    """Keep the units with the largest ``||a_j|| * ||rhs[:, j]||`` (rhs ~ outgoing weights)."""
    score = acts.norm(dim=0) * rhs.norm(dim=0)
    return torch.zeros_like(score, dtype=torch.bool).scatter_(0, score.topk(keep).indices, True)


def obs_choice(gram: torch.Tensor, rhs: torch.Tensor, acts: torch.Tensor,
               keep: int) -> torch.Tensor:
    """Greedy OBS elimination down to ``keep`` units (see the module docstring)."""
    inv = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    v = rhs @ inv  # (out, u): the unconstrained least-squares fit
    alive = torch.ones(len(gram), dtype=torch.bool, device=gram.device)
    for _ in range(len(gram) - keep):
        cost = (v**2).sum(0) / inv.diagonal()
        j = int(torch.where(alive, cost, torch.inf).argmin())
        pivot = inv[j].clone()
        v -= v[:, j:j + 1] * (pivot / pivot[j])[None, :]
        inv -= torch.outer(pivot, pivot) / pivot[j]
        inv[j, j] = 1.0  # keeps the diagonal positive; j is out of the game
        v[:, j] = 0.0
        alive[j] = False
    return alive


def unit_compute(choose: UnitChooser):
    """A registry ``compute`` pruning units with ``choose`` and refitting the next layer."""

    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        layers = chain(model)
        current = {n: layer.weight.detach().double() for n, layer in layers}
        x_dense = x_pruned = calibration_inputs(model, context)
        todo, touched = set(names), set()
        for i, (name, layer) in enumerate(layers[:-1]):
            dense_w = layer.weight.detach().double()
            a_dense = forward(layer, dense_w, x_dense, False)
            a_pruned = forward(layer, current[name], x_pruned, False)
            if name in todo:
                next_name, next_layer = layers[i + 1]
                gram = damped_gram(a_pruned, UNIT_DAMPING)
                rhs = refit_targets(next_layer.weight.detach().double(), a_dense, a_pruned)
                kept = choose(gram, rhs, a_pruned, keep_count(len(dense_w), sparsity))
                current[name] = current[name] * kept[:, None]
                current[next_name] = masked_lstsq(gram, rhs, kept[None, :].expand_as(rhs))
                a_pruned = a_pruned * kept[None, :]
                todo.discard(name)
                touched |= {name, next_name}
            if not todo:
                break
            x_dense, x_pruned = a_dense, a_pruned
        return {n: current[n].to(layer.weight.dtype) for n, layer in layers if n in touched}

    return compute
