"""OBS-style pruning with weight updates: SparseGPT (Frantar & Alistarh 2023), after OBC.

For each layer, H = X^T X / N (damped, float64) from the inputs the already pruned network gives
it. Columns are visited in order in blocks of 128: inside a block the weights to zero are chosen
by the OBS saliency ``w^2 / [H^-1]_jj^2`` (adaptive mask over the block, ``round(k * size)`` per
block; or the N:M rule per group of M columns), and each zeroed weight's error is spread over the
not yet visited columns through the Cholesky factor of H^-1 -- the sequential OBS update.
Cost: one Cholesky of (in x in) per layer plus O(out * in^2) for the updates.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.pruning import PruneContext
from prunelab.pruning.calibrated import LayerInputs, damped, sequential, spd_inverse
from prunelab.pruning.nm import nm_mask

__all__ = ["BLOCK", "sparsegpt_compute", "sparsegpt_layer"]

BLOCK = 128
"""Columns per lazy-update block (the paper's B)."""


def _inverse_factor(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1: row i holds the OBS update for column i."""
    inv = spd_inverse(h)
    return torch.linalg.cholesky(inv, upper=True)


def _block_mask(w: torch.Tensor, d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool (out, cols) of weights to zero in a block: the lowest saliencies, block-wide."""
    saliency = (w**2 / d[None, :] ** 2).flatten()
    drop = torch.zeros_like(saliency, dtype=torch.bool)
    count = round(sparsity * saliency.numel())
    if count > 0:
        drop[saliency.topk(count, largest=False).indices] = True
    return drop.reshape(w.shape)


def sparsegpt_layer(weight: torch.Tensor, h: torch.Tensor, sparsity: float,
                    pattern: tuple[int, int] | None = None) -> torch.Tensor:
    """SparseGPT on one layer: ``weight`` (out, in), ``h`` the damped (in, in) Hessian."""
    w = weight.double().clone()
    factor = _inverse_factor(h.double())
    cols = w.shape[1]
    block = BLOCK if pattern is None else pattern[1] * max(1, BLOCK // pattern[1])
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, f1 = w[:, i1:i2].clone(), factor[i1:i2, i1:i2]
        d = f1.diagonal()
        err = torch.zeros_like(w1)
        drop = None if pattern else _block_mask(w1, d, sparsity)
        for i in range(i2 - i1):
            if pattern and i % pattern[1] == 0:
                group = slice(i, min(i + pattern[1], i2 - i1))
                saliency = w1[:, group] ** 2 / d[None, group] ** 2
                keep = nm_mask(saliency, *pattern)
                drop = torch.zeros_like(w1, dtype=torch.bool)
                drop[:, group] = ~keep
            q = torch.where(drop[:, i], 0.0, w1[:, i])
            err[:, i] = (w1[:, i] - q) / d[i]
            w1[:, i:] -= err[:, i:i + 1] * f1[i:i + 1, i:]
            w1[:, i] = q
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ factor[i1:i2, i2:]
    return w


def sparsegpt_compute(pattern: tuple[int, int] | None = None):
    """A registry ``compute`` running SparseGPT layer by layer (``pattern``: N:M or None)."""

    def step(inp: LayerInputs, sparsity: float) -> torch.Tensor:
        return sparsegpt_layer(inp.weight, damped(inp.gram), sparsity, pattern)

    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        return sequential(model, names, context, lambda inp: step(inp, sparsity))

    return compute
