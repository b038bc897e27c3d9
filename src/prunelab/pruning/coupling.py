"""Channels that cannot be removed alone: the coupling that residual adds and attention create.

Zeroing a unit (an output channel) of a layer removes it from the network only when nothing but
the next layers reads it. The output channels of a ResNet block's second conv are added to the
block's input, so the stem, every such conv and the shortcut projections of a stage share one
set of channels; a ViT's q, k and v are read together by the attention, and the patch embedding
and every block's output projections all write the residual stream. Zeroing one member of such
a group removes nothing. Unit methods therefore prune, by default, only layers whose output
channels are their own (``free_unit_layers``): an MLP's hidden units, a ResNet block's internal
channels, a ViT's MLP hidden units; the coupled groups are left alone. Naming layers explicitly
(``layers=``) prunes exactly those.

The graph comes from Torch-Pruning's ``DependencyGraph``, traced on an example input.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch_pruning as tp
from torch import nn

from prunelab.pruning.targets import prunable_modules

__all__ = ["coupled_layers", "dependency_graph", "free_unit_layers", "out_channel_pruner",
           "trace"]


def out_channel_pruner(module: nn.Module):
    """Torch-Pruning's handler that removes ``module``'s output channels."""
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else \
        tp.prune_linear_out_channels


def dependency_graph(model: nn.Module, example: torch.Tensor,
                     ) -> tuple[tp.DependencyGraph, dict[nn.Module, str]]:
    """The dependency graph of a copy of ``model`` traced on ``example[:1]``, and that copy's
    prunable layers with their names (the graph refers to the copy's modules)."""
    traced = copy.deepcopy(model).eval()  # tracing runs a forward: BatchNorm must not move
    return trace(traced, example), {m: n for n, m in prunable_modules(traced)}


def trace(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` itself (in eval mode) on ``example[:1]``."""
    with warnings.catch_warnings(), torch.enable_grad():  # the graph is traced by autograd
        warnings.simplefilter("ignore")  # e.g. "unwrapped parameters" (a ViT's position table)
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
        except (RuntimeError, ValueError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"example input of shape {tuple(example.shape)} does not fit "
                             f"{type(model).__name__}: {first}") from None


def coupled_layers(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[str, ...]]:
    """Per prunable layer, the prunable layers whose output channels are tied to its own
    (itself included), from one traced forward pass on ``example``."""
    graph, names = dependency_graph(model, example)
    out: dict[str, tuple[str, ...]] = {}
    for module, name in names.items():
        group = graph.get_pruning_group(module, out_channel_pruner(module), idxs=[0])
        tied = {names[dep.target.module] for dep, _ in group
                if dep.target.module in names
                and dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)}
        out[name] = tuple(n for n in names.values() if n in tied | {name})
    return out


def free_unit_layers(model: nn.Module, names: list[str], example: torch.Tensor) -> list[str]:
    """Those of ``names`` whose output channels no other layer shares."""
    groups = coupled_layers(model, example)
    return [n for n in names if groups[n] == (n,)]
