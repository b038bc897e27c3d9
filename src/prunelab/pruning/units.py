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
- ``unit-obs-allocated``: ``unit-obs`` with the number of units kept per layer chosen from each
  layer's OBS error curve (``obs_allocation``), and a ReLU-aware refit (``relu_refit``): where
  the dense pre-activation of the next layer is negative, any negative value will do.
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
    spd_inverse,
)

__all__ = [
    "UNIT_RELU_ROUNDS",
    "UnitAllocation",
    "UnitChooser",
    "activation_choice",
    "obs_allocation",
    "obs_choice",
    "obs_chooser",
    "obs_path",
    "relu_refit",
    "spend_removals",
    "unit_compute",
]

UNIT_DAMPING = 1e-3
"""Gram damping for the next layer's refit (fraction of the mean diagonal)."""

UNIT_RELU_ROUNDS = 3
"""Rounds of ``relu_refit`` in ``unit-obs-allocated``. Measured on Fashion-MNIST seeds 0-4 with
8192 calibration images: 95 % of units 80.0-81.9 % -> 81.4-83.6 % test accuracy."""

UnitChooser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(gram (u, u), rhs (out, u), activations (N, u), keep) -> bool (u,) mask of kept units."""

UnitAllocation = Callable[[nn.Module, list[str], float, PruneContext], dict[str, int]]
"""(model, names, overall sparsity, context) -> {layer: units kept}."""


def activation_choice(gram: torch.Tensor, rhs: torch.Tensor, acts: torch.Tensor,
                      keep: int) -> torch.Tensor:
    """Keep the units with the largest ``||a_j|| * ||rhs[:, j]||`` (rhs ~ outgoing weights)."""
    score = acts.norm(dim=0) * rhs.norm(dim=0)
    return torch.zeros_like(score, dtype=torch.bool).scatter_(0, score.topk(keep).indices, True)


OBS_BATCH = 0.02
"""Fraction of the remaining units removed per OBS step (at least one): exact multi-unit updates,
far fewer steps than one unit at a time."""


def obs_path(gram: torch.Tensor, rhs: torch.Tensor, removals: int,
             batch_share: float = OBS_BATCH):
    """Greedy OBS elimination of ``removals`` units: (bool (u,) kept, (removals,) step costs).

    Works on the surviving units only (the matrices shrink as units go); each step removes the
    ``batch_share`` of cheapest units J at once with the exact block update
    ``V -= V[:, J] K[J, J]^-1 K[J, :]``, ``K -= K[:, J] K[J, J]^-1 K[J, :]`` (K = G^-1).
    """
    inv = spd_inverse(gram)
    v = rhs @ inv  # (out, u): the unconstrained least-squares fit
    ids = torch.arange(len(gram), device=gram.device)  # original index of each surviving unit
    costs = []
    while len(costs) < removals:
        batch = min(removals - len(costs), max(1, int(batch_share * len(ids))))
        cost = (v**2).sum(0) / inv.diagonal()
        drop = cost.topk(batch, largest=False).indices
        keep = torch.ones(len(ids), dtype=torch.bool, device=gram.device)
        keep[drop] = False
        keep = keep.nonzero().squeeze(1)
        costs += cost[drop].sort().values.tolist()
        rows = inv.index_select(0, drop)  # (b, a)
        # (b, b) solve against the dropped rows of K: the OBS correction for all of J at once.
        corr = torch.linalg.solve(rows.index_select(1, drop), rows.index_select(1, keep))
        v = v.index_select(1, keep) - v.index_select(1, drop) @ corr
        inv = inv.index_select(0, keep).index_select(1, keep) - rows.index_select(1, keep).T @ corr
        ids = ids.index_select(0, keep)
    alive = torch.zeros(len(gram), dtype=torch.bool, device=gram.device)
    alive[ids] = True
    return alive, torch.tensor(costs, dtype=gram.dtype)


def obs_choice(gram: torch.Tensor, rhs: torch.Tensor, acts: torch.Tensor,
               keep: int) -> torch.Tensor:
    """Greedy OBS elimination down to ``keep`` units (see the module docstring)."""
    return obs_path(gram, rhs, len(gram) - keep)[0]


def obs_chooser(batch_share: float) -> UnitChooser:
    """``obs_choice`` removing ``batch_share`` of the remaining units per step."""
    return lambda gram, rhs, acts, keep: obs_path(gram, rhs, len(gram) - keep, batch_share)[0]


def obs_allocation(model: nn.Module, names: list[str], sparsity: float,
                   context: PruneContext) -> dict[str, int]:
    """Units kept per layer, ``round(k * all units)`` removed overall (non-uniform).

    On the dense network, each layer's greedy OBS path gives the error each further removal adds,
    relative to the energy of the next layer's input; removals are spent where that relative
    error is smallest (one threshold across layers; every layer keeps at least one unit).
    """
    layers = chain(model)
    x = calibration_inputs(model, context)
    steps, todo = {}, set(names)
    for i, (name, layer) in enumerate(layers[:-1]):
        a = forward(layer, layer.weight.detach().double(), x, False)
        if name in todo:
            gram = damped_gram(a, UNIT_DAMPING)
            next_w = layers[i + 1][1].weight.detach().double()
            rhs = refit_targets(next_w, a, a)
            energy = float((rhs * next_w).sum())  # ||a @ next_w.T||^2 / N
            costs = obs_path(gram, rhs, len(gram) - 1)[1] / max(energy, 1e-300)
            steps[name] = costs.cummax(0).values  # removals happen in order
            todo.discard(name)
        if not todo:
            break
        x = a
    return spend_removals(steps, sparsity)


def spend_removals(steps: dict[str, torch.Tensor], sparsity: float) -> dict[str, int]:
    """{layer: units kept} from each layer's (units - 1,) non-decreasing relative removal costs:
    the ``round(k * all units)`` cheapest removals across layers (every layer keeps one unit)."""
    flat = torch.cat(list(steps.values()))
    total = sum(len(c) + 1 for c in steps.values())
    chosen = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
    chosen[flat.topk(min(round(sparsity * total), len(flat)), largest=False).indices] = True
    out, start = {}, 0
    for name, c in steps.items():
        out[name] = len(c) + 1 - int(chosen[start:start + len(c)].sum())
        start += len(c)
    return out


def relu_refit(gram: torch.Tensor, mask: torch.Tensor, v: torch.Tensor, acts: torch.Tensor,
               target: torch.Tensor, rounds: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Refit ``v`` so that ``relu(acts @ v.T + bias)``, not the pre-activation, follows
    ``relu(target + bias)``.

    A pre-activation whose dense value is negative only needs to stay negative: each round
    replaces those targets by ``min(prediction, 0)`` and solves the least-squares problem again
    (same Gram matrix, new right-hand sides), so no weight is spent on matching values the ReLU
    discards.
    """
    offset = 0.0 if bias is None else bias
    full = target + offset
    for _ in range(rounds):
        pred = acts @ v.T + offset
        t = torch.where(full > 0, full, pred.clamp(max=0.0)) - offset
        v = masked_lstsq(gram, t.T @ acts / len(acts), mask)
    return v


def unit_compute(choose: UnitChooser, allocate: UnitAllocation | None = None,
                 relu_rounds: int = 0):
    """A registry ``compute`` pruning units with ``choose`` and refitting the next layer.

    ``allocate`` gives each layer its own number of kept units (overall k); default: every layer
    keeps ``units - round(k * units)``. ``relu_rounds``: rounds of ``relu_refit`` for a next
    layer that is itself followed by a ReLU.
    """

    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        layers = chain(model)
        keeps = allocate(model, names, sparsity, context) if allocate else {
            n: keep_count(layer.out_features, sparsity) for n, layer in layers}
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
                kept = choose(gram, rhs, a_pruned, keeps[name])
                current[name] = current[name] * kept[:, None]
                mask = kept[None, :].expand_as(rhs)
                a_pruned = a_pruned * kept[None, :]
                v = masked_lstsq(gram, rhs, mask)
                if relu_rounds and i + 2 < len(layers):  # the next layer feeds a ReLU
                    bias = None if next_layer.bias is None else next_layer.bias.detach().double()
                    v = relu_refit(gram, mask, v, a_pruned,
                                   a_dense @ next_layer.weight.detach().double().T, relu_rounds,
                                   bias)
                current[next_name] = v
                todo.discard(name)
                touched |= {name, next_name}
            if not todo:
                break
            x_dense, x_pruned = a_dense, a_pruned
        return {n: current[n].to(layer.weight.dtype) for n, layer in layers if n in touched}

    return compute
