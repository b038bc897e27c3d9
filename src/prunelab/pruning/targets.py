"""Which layers pruning may touch: the prunable types, the default choice, name patterns.

Prunable layers are ``nn.Linear`` and ``nn.Conv2d``. A conv's weight (out, in/groups, kh, kw) is
seen as the matrix (out, in/groups * kh * kw): a row holds one output channel's incoming weights,
so a *unit* is an output unit of a Linear or an output channel of a conv (of a grouped conv too:
its row spans its own group's inputs). Any other module that holds weights (BatchNorm,
LayerNorm, embeddings) is left alone.

By default every prunable layer but the model's output layer is pruned; the output layer is the
last prunable layer in registration order (``model.named_modules()``), which is where every zoo
model defines its head. Layers may instead be chosen by name or glob pattern (``fnmatch``):

>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
>>> default_layers(net)
['0']
>>> select_layers(net, ["*"])
['0', '3']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.vit import Attention

__all__ = ["PRUNABLE_TYPES", "as_matrix", "default_layers", "head_modules", "head_rows",
           "prunable_modules", "select_layers"]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
"""Module types whose ``weight`` a method may prune."""


def head_modules(model: nn.Module) -> list[tuple[str, Attention]]:
    """The attention modules whose heads unit methods may prune (prunelab's ``vit``
    ``Attention``: a head is a unit, its q, k and v rows and its output-projection columns)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Attention)]


def head_rows(attn: Attention, heads: torch.Tensor) -> torch.Tensor:
    """Bool (heads,) -> bool (dim,): the q/k/v rows (projection columns) of those heads."""
    return heads.repeat_interleave(attn.q.out_features // attn.heads)


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every prunable layer of ``model`` with its qualified name, in registration order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and name]


def default_layers(model: nn.Module) -> list[str]:
    """Names of every prunable layer but the output layer (the last one registered)."""
    names = [name for name, _ in prunable_modules(model)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no prunable layers "
                         f"(nn.Linear or nn.Conv2d)")
    return names[:-1]


def select_layers(model: nn.Module, patterns: Sequence[str] | None = None,
                  heads: bool = False) -> list[str]:
    """Prunable layers named by ``patterns`` (exact names or globs), in registration order.

    ``None`` means ``default_layers(model)``. A pattern that matches no prunable layer is an
    error naming it (and the type of the module, when it names one that cannot be pruned).
    ``heads``: attention modules (``head_modules``) may be named too (unit methods: their heads
    are the units).
    """
    if patterns is None:
        return default_layers(model)
    if isinstance(patterns, str):
        raise TypeError(f"layers must be a list of names or patterns, got the string {patterns!r}")
    modules = dict(model.named_modules())
    prunable = [name for name, m in modules.items() if name and (
        isinstance(m, PRUNABLE_TYPES) or (heads and isinstance(m, Attention)))]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in prunable if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ValueError(_no_match(pattern, modules, prunable))
        chosen.update(hits)
    return [n for n in prunable if n in chosen]


def _no_match(pattern: str, modules: dict[str, nn.Module], prunable: list[str]) -> str:
    others = [n for n in modules if n and fnmatch.fnmatchcase(n, pattern)]
    if others:
        kinds = ", ".join(f"{n} ({type(modules[n]).__name__})" for n in others[:3])
        return (f"layer {pattern!r} cannot be pruned: it matches only {kinds}; prunable "
                f"layers are nn.Linear and nn.Conv2d")
    shown = ", ".join(prunable[:8]) + (", ..." if len(prunable) > 8 else "")
    return f"layer {pattern!r} matches no prunable layer of the model (have: {shown})"


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as (out, fan_in): a view of a conv's (out, in/groups, kh, kw)."""
    return weight.reshape(weight.shape[0], -1)
