"""Wanda (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for LLMs").

Score each weight by ``|W_ij| * ||x_j||_2`` (x_j: input feature j over the calibration set, as
the already pruned network produces it) and, per output unit (row), zero the ``round(k * in)``
lowest. No weight update. Cost: one forward pass of the calibration set; O(N * in) per layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunelab.pruning import PruneContext
from prunelab.pruning.calibrated import LayerInputs, keep_count, sequential, topk_mask

__all__ = ["MaskRule", "per_row_rule", "wanda_compute", "wanda_scores"]

MaskRule = Callable[[torch.Tensor, float], torch.Tensor]
"""(scores (out, in), sparsity) -> bool mask of the weights to keep."""


def per_row_rule(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``in - round(k * in)`` best scores of every row."""
    return topk_mask(scores, keep_count(scores.shape[1], sparsity))


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(out, in) ``|W| * ||x_j||``: ``norms`` (in,) of the layer's calibration inputs."""
    return weight.double().abs() * norms.double()[None, :]


def wanda_compute(rule: MaskRule = per_row_rule):
    """A registry ``compute`` applying Wanda's score with ``rule`` (per row, or N:M)."""

    def step(inp: LayerInputs, sparsity: float) -> torch.Tensor:
        return inp.weight * rule(wanda_scores(inp.weight, inp.norms), sparsity)

    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        return sequential(model, names, context, lambda inp: step(inp, sparsity))

    return compute
