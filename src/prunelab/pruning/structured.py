"""Calibration-aware unit pruning of any model: drop a layer's own channels, refit their readers.

For a layer L whose output channels are its own (``coupling.free_unit_layers``), the layers
that read those channels (its *consumers*: the next conv, or the Linear after a flatten or a
ViT's GELU) are found in Torch-Pruning's dependency graph, with the columns of their
(out, fan_in) weight view that each channel feeds. Layers are processed in forward order, on
the network pruned so far:

1. capture each consumer's inputs in the dense and the pruned network (``pruning.capture``:
   Gram matrices only, conv inputs unfolded);
2. score every unit j of L by ``||a_j|| * ||W_C[:, cols_j]||`` (the channel's activation norm
   as the consumer sees it, times its outgoing weights: the unit analogue of Wanda, as
   ``unit-act-refit`` on an MLP) and keep the ``units - round(k * units)`` best;
3. zero the dropped units' rows of L (weight and bias) and refit each consumer by least squares
   with the dropped channels' columns at zero, so that it reproduces its dense output.

A channel that BatchNorm follows outputs a constant once its rows are zero, not 0; the refit
fits the consumer to the pruned network's real inputs, and the study re-estimates BatchNorm
statistics afterwards (``--bn-recalibrate``).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from prunelab.pruning import ComputeFn, PruneContext
from prunelab.pruning.calibrated import (
    damped,
    hooked_pair,
    keep_count,
    masked_lstsq,
    refresh_batchnorm,
)
from prunelab.pruning.capture import capture_grams
from prunelab.pruning.coupling import dependency_graph, out_channel_pruner
from prunelab.pruning.sparsity import is_relu_chain
from prunelab.pruning.targets import as_matrix

__all__ = ["UNIT_DAMPING", "chain_or_graph", "consumer_columns", "unit_refit_any"]

UNIT_DAMPING = 1e-3
"""Gram damping for the consumers' refit (fraction of the mean diagonal)."""

_IN_CHANNELS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


def consumer_columns(model: nn.Module, names: list[str],
                     example: torch.Tensor) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Per layer of ``names``, per layer reading its output channels: for each channel j, the
    columns of the reader's (out, fan_in) weight view that channel j feeds. The graph depends
    on the architecture only, so one trace serves every layer."""
    graph, prunable = dependency_graph(model, example)
    modules = {n: m for m, n in prunable.items()}
    out: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name in names:
        layer, readers = modules[name], {}
        for j in range(layer.weight.shape[0]):
            for dep, idxs in graph.get_pruning_group(layer, out_channel_pruner(layer), idxs=[j]):
                target = dep.target.module
                if target in prunable and dep.handler in _IN_CHANNELS and target is not layer:
                    span = target.weight[0].numel() // target.weight.shape[1]  # kh*kw, or 1
                    cols = torch.tensor([c * span + t for c in idxs for t in range(span)])
                    readers.setdefault(prunable[target], []).append(cols)
        out[name] = readers
    return out


def _choose(layer_units: int, keep: int, consumers: dict[str, list[torch.Tensor]],
            grams: dict, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Bool (units,): keep the largest ``||a_j|| * ||W_C[:, cols_j]||`` (summed over readers)."""
    score = torch.zeros(layer_units, dtype=torch.float64)
    for cname, per_unit in consumers.items():
        diag = grams[cname].gram.diagonal() * grams[cname].count
        w = weights[cname]
        for j, cols in enumerate(per_unit):
            score[j] += diag[cols].clamp_min(0).sum().sqrt() * w[:, cols].norm()
    return torch.zeros(layer_units, dtype=torch.bool).scatter_(0, score.topk(keep).indices, True)


def unit_refit_any(model: nn.Module, names: list[str], sparsity: float,
                   context: PruneContext) -> dict[str, torch.Tensor]:
    """``unit-act-refit`` on any model: new weights of the pruned layers and their readers."""
    dense, pruned, x, order = hooked_pair(model, names, context)
    modules = dict(pruned.named_modules())
    readers = consumer_columns(dense, names, x)
    out: dict[str, torch.Tensor] = {}
    for name in order:
        layer = modules[name]
        consumers = readers[name]
        if len(consumers) == 0 or any(len(c) != layer.weight.shape[0]
                                      for c in consumers.values()):
            raise ValueError(f"cannot find which layers read each channel of {name!r}")
        grams = {c: capture_grams(dense, pruned, c, x) for c in consumers}
        current = {c: as_matrix(modules[c].weight.detach()).double() for c in consumers}
        units = layer.weight.shape[0]
        kept = _choose(units, keep_count(units, sparsity), consumers, grams, current)
        with torch.no_grad():
            layer.weight[~kept] = 0
            if layer.bias is not None:
                layer.bias[~kept] = 0
        out[name] = layer.weight.detach().clone()
        for cname, per_unit in consumers.items():
            dead = torch.cat([cols for j, cols in enumerate(per_unit) if not kept[j]] or
                             [torch.zeros(0, dtype=torch.long)])
            mask = torch.ones_like(current[cname], dtype=torch.bool)
            mask[:, dead] = False
            g = grams[cname]
            w = masked_lstsq(damped(g.gram, UNIT_DAMPING),
                             as_matrix(dict(dense.named_modules())[cname].weight).double()
                             @ g.cross, mask)
            consumer = modules[cname]
            with torch.no_grad():
                consumer.weight.copy_(w.reshape(consumer.weight.shape))
            out[cname] = consumer.weight.detach().clone()
        refresh_batchnorm(pruned, x)
    return out


def chain_or_graph(on_chain: ComputeFn, on_graph: ComputeFn) -> ComputeFn:
    """A ``compute`` running ``on_chain`` for a Linear/ReLU chain, else ``on_graph``."""

    def compute(model: nn.Module, names: list[str], sparsity: float,
                context: PruneContext) -> dict[str, torch.Tensor]:
        run = on_chain if is_relu_chain(model) else on_graph
        return run(model, names, sparsity, context)

    return compute
