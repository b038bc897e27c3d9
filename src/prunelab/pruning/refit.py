"""Mask, then refit: keep a mask and solve, per output unit, the least-squares problem that best
reproduces the dense layer's outputs from the inputs the pruned network gives it.

For a layer with dense weight W and calibration inputs X_d (dense network) and X_p (pruned
network), each row w of the new weight minimises ``||X_p w - X_d w_dense||^2`` over the weights
its mask keeps (Gram matrix damped, float64). This is the exact per-row solution SparseGPT
approximates. With ``steps > 1`` the sparsity is reached in several smaller steps (density
shrinking geometrically), re-scoring the *refit* weights by ``|w| * ||x_j||`` and refitting after
each -- iterative hard thresholding on each row's regression, which picks better masks at high
sparsity. Cost per step and row: a solve of size min(kept, removed); O(N * in^2) per layer for
the Gram matrices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunelab.pruning import PruneContext
from prunelab.pruning.calibrated import (
    LayerInputs,
    damped,
    keep_count,
    masked_lstsq,
    sequential,
    topk_mask,
)
from prunelab.pruning.targets import prunable_modules
from prunelab.pruning.wanda import MaskRule, per_row_rule

__all__ = [
    "ScoreFn",
    "layer_rule",
    "magnitude_score",
    "refit_compute",
    "refit_layer",
    "schedule",
    "sqrt_activation_score",
]

Allocation = Callable[[nn.Module, list[str], float, PruneContext], dict[str, float]]
"""(model, names, overall sparsity, context) -> {layer: its sparsity}."""

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(weight (out, in), input norms ||x_j|| (in,)) -> (out, in) scores; larger is kept."""

REFIT_DAMPING = 1e-3
"""Gram damping for refits (fraction of the mean diagonal): small, the fit should be close."""


def magnitude_score(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``|W|``, ignoring the data (the original method's score)."""
    return weight.double().abs()


def sqrt_activation_score(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(||x_j||)``: between magnitude and Wanda; measured best for gradual refits."""
    return weight.double().abs() * norms.double().sqrt()[None, :]


def layer_rule(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``n - round(k * n)`` best scores of the whole layer (rows differ)."""
    return topk_mask(scores, keep_count(scores.numel(), sparsity), per_row=False)


GRADUAL_START = 0.75
"""First sparsity of a multi-step schedule: one-shot refits are near lossless up to here, and
solves of size min(kept, removed) stay small from here on."""


def schedule(sparsity: float, steps: int) -> list[float]:
    """``steps`` sparsities ending at ``sparsity``: ``GRADUAL_START`` (when below ``sparsity``),
    then the kept fraction shrinking geometrically."""
    if steps <= 1 or sparsity <= GRADUAL_START:
        return [sparsity]
    first, last = 1.0 - GRADUAL_START, 1.0 - sparsity
    return [1.0 - first * (last / first) ** (t / (steps - 1)) for t in range(steps)]


def refit_layer(inp: LayerInputs, sparsity: float, score: ScoreFn, rule: MaskRule,
                steps: int = 1) -> torch.Tensor:
    """New weight (out, in) for one layer: mask by ``score``/``rule``, refit; ``steps`` rounds."""
    gram = damped(inp.gram, REFIT_DAMPING)
    rhs = inp.dense_weight.double() @ inp.cross  # refit_targets, from the Gram form
    w = inp.weight.double()
    mask = torch.ones_like(w, dtype=torch.bool)
    for k in schedule(sparsity, steps):
        # Only weights still kept compete: the masks are nested.
        scores = torch.where(mask, score(w, inp.norms), -torch.inf)
        mask = rule(scores, k) & mask
        w = masked_lstsq(gram, rhs, mask)
    return w


def refit_compute(score: ScoreFn, rule: MaskRule = per_row_rule, steps: int = 1,
                  allocate: Allocation | None = None, refit_output: bool = False):
    """A registry ``compute``: ``refit_layer`` on every named layer, in network order.

    ``allocate`` gives each layer its own sparsity (overall k); ``refit_output`` also refits the
    (unpruned, dense) output layer to the dense network's logits, so the method returns it too.
    """

    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        ks = allocate(model, names, sparsity, context) if allocate else dict.fromkeys(names,
                                                                                      sparsity)
        todo = list(names)
        output = prunable_modules(model)[-1][0]
        if refit_output and output not in todo:
            todo.append(output)
            ks[output] = 0.0
        return sequential(model, todo, context,
                          lambda inp: refit_layer(inp, ks[inp.name], score, rule, steps))

    return compute

