"""Post-hoc pruning methods, a registry mapping names to them, and applying their output.

Compute, then apply: a method returns new weights (torch layout: out x in, or a conv's
out x in/groups x kh x kw) for the layers it prunes and never changes the model;
``apply_weights`` builds a pruned copy. Which layers: ``pruning.targets``.

>>> import torch
>>> from prunelab.models.mlp import MLPConfig, build_mlp
>>> net = build_mlp(MLPConfig(hidden=(64, 32)), torch.Generator().manual_seed(0))
>>> weights = prune(net, "weight", 0.5)
>>> sorted(weights)  # the last layer is left alone
['layers.0', 'layers.1']
>>> pruned = apply_weights(net, weights)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.models.vit import Attention
from prunelab.pruning.coupling import free_unit_layers
from prunelab.pruning.magnitude import percentile, unit_pruning, weight_pruning
from prunelab.pruning.sparsity import is_relu_chain
from prunelab.pruning.targets import PRUNABLE_TYPES, head_rows, select_layers

__all__ = [
    "GRANULARITIES",
    "METHODS",
    "PruneContext",
    "PruningMethod",
    "apply_weights",
    "check_sparsity",
    "lookup",
    "chosen_layers",
    "prune",
    "register",
]

GRANULARITIES = ("weight", "unit", "n:m")


@dataclass(frozen=True)
class PruneContext:
    """What a method may use beyond the weights."""

    calibration: torch.Tensor | None = None
    """(N, ...) training inputs of the model for calibration-aware methods, never test data;
    an iterable of input batches (or of (inputs, labels) pairs, as a DataLoader gives) is
    concatenated into one tensor."""
    generator: torch.Generator | None = None
    """Randomness for randomised methods."""
    example: torch.Tensor | None = None
    """A batch of model inputs (one sample is enough) to trace the graph with; unit methods on
    a model that is not a Linear/ReLU chain need it, or ``calibration``, to find which layers'
    channels are coupled (``pruning.coupling``)."""

    def __post_init__(self) -> None:
        x = self.calibration
        if x is None or isinstance(x, torch.Tensor):
            return
        try:
            batches = [b[0] if isinstance(b, tuple | list) else b for b in x]
        except TypeError:
            raise TypeError(f"calibration must be a tensor of inputs or an iterable of input "
                            f"batches, got {type(x).__name__}") from None
        if not batches or not all(isinstance(b, torch.Tensor) for b in batches):
            raise ValueError("calibration batches must be a non-empty sequence of tensors")
        object.__setattr__(self, "calibration", torch.cat(batches))


ComputeFn = Callable[[nn.Module, list[str], float, PruneContext], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PruningMethod:
    """A registered method: ``compute(model, layer_names, sparsity, context) -> new weights``."""

    name: str
    """Registry key, used in results and on the CLI."""
    granularity: str
    """What it removes: one of ``GRANULARITIES``."""
    compute: ComputeFn
    """Returns {layer name: new weight (out x in)} for each named layer; must not mutate."""
    description: str
    """One line for reports and ``--help``."""
    needs_calibration: bool = False
    """Whether ``context.calibration`` must be given."""
    calibration_size: int = 2048
    """Training images it gets by default (when it needs calibration): enough to reach its
    documented accuracy (docs/calibrated-pruning.md); a sweep may override it for all methods."""
    overall_sparsity: bool = False
    """Whether k is the sparsity of all pruned layers together (each layer's differs) rather
    than of every layer."""
    fixed_sparsity: float | None = None
    """The only sparsity the method produces (N:M patterns: 1 - N/M); None when any k works."""
    heads: bool = False
    """Whether it prunes the heads of an attention module named in ``layers`` (unit methods)."""


METHODS: dict[str, PruningMethod] = {}


def register(method: PruningMethod) -> PruningMethod:
    """Add ``method`` to ``METHODS``; names are unique."""
    if method.name in METHODS:
        raise ValueError(f"a pruning method named {method.name!r} is already registered")
    if method.granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {method.granularity!r}")
    METHODS[method.name] = method
    return method


def _layerwise(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> ComputeFn:
    def compute(model: nn.Module, names: list[str], sparsity: float, context: PruneContext):
        modules = dict(model.named_modules())
        return {name: fn(modules[name].weight.detach(), sparsity) for name in names}

    return compute


def _unit_compute(model: nn.Module, names: list[str], sparsity: float,
                  context: PruneContext) -> dict[str, torch.Tensor]:
    """The seed's ``unit`` rule; an attention module's units are its heads, ranked by the L2
    norm of their incoming weights (their q, k and v rows)."""
    modules, out = dict(model.named_modules()), {}
    for name in names:
        m = modules[name]
        if not isinstance(m, Attention):
            out[name] = unit_pruning(m.weight.detach(), sparsity)
            continue
        rows = torch.cat([p.weight.detach() for p in (m.q, m.k, m.v)], 1)  # (dim, 3 * dim)
        per_head = rows.double().reshape(m.heads, -1).norm(dim=1)
        kept = head_rows(m, per_head >= percentile(per_head, sparsity))
        for part in ("q", "k", "v"):
            out[f"{name}.{part}"] = getattr(m, part).weight.detach() * kept[:, None]
    return out


register(PruningMethod(
    "weight", "weight", _layerwise(weight_pruning),
    "per layer, zero the weights with |w| below the k-th percentile of |W|",
))
register(PruningMethod(
    "unit", "unit", _unit_compute,
    "per layer, zero the units whose incoming-weight L2 norm is below the k-th percentile "
    "(an attention module named in layers: its heads)", heads=True,
))


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float in [0, 1], or a ``ValueError`` naming it."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
        raise TypeError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1] (a fraction), got {sparsity!r}")
    return float(sparsity)


def prune(
    model: nn.Module,
    method: str,
    sparsity: float,
    layers: list[str] | None = None,
    context: PruneContext | None = None,
) -> dict[str, torch.Tensor]:
    """New weights for ``layers`` pruned by ``method``.

    ``layers``: names or glob patterns of ``nn.Linear`` / ``nn.Conv2d`` layers (default: every
    one but the output layer; see ``pruning.targets.select_layers``).
    """
    spec = lookup(method)
    sparsity = check_sparsity(sparsity)
    if spec.fixed_sparsity is not None and abs(sparsity - spec.fixed_sparsity) > 1e-9:
        raise ValueError(f"method {method!r} has the fixed sparsity {spec.fixed_sparsity:g}, "
                         f"got {sparsity:g}")
    context = context or PruneContext()
    if spec.needs_calibration and context.calibration is None:
        raise ValueError(f"method {method!r} needs calibration data")
    names = chosen_layers(model, method, layers)
    if layers is None and spec.granularity == "unit" and not is_relu_chain(model):
        names = _free_units(model, names, context)
    with torch.no_grad():
        return spec.compute(model, names, sparsity, context)


def chosen_layers(model: nn.Module, method: str, layers: list[str] | None) -> list[str]:
    """The layers ``method`` prunes for ``layers`` (``targets.select_layers``; unit methods may
    name attention modules, whose heads are then the units): one-line errors otherwise."""
    spec = lookup(method)
    names = select_layers(model, layers, heads=spec.granularity == "unit")
    modules = dict(model.named_modules())
    if not spec.heads and any(isinstance(modules[n], Attention) for n in names):
        raise ValueError(f"method {method!r} cannot prune attention heads; heads are pruned by "
                         f"{', '.join(m for m, s in METHODS.items() if s.heads)}")
    return names


def _free_units(model: nn.Module, names: list[str], context: PruneContext) -> list[str]:
    """Default layers of a unit method: those whose channels are their own (coupling.py)."""
    example = context.example if context.example is not None else context.calibration
    if example is None:
        raise ValueError(f"unit pruning of a {type(model).__name__} needs an example input to "
                         f"find coupled channels: PruneContext(example=x), or name the layers")
    free = free_unit_layers(model, names, example)
    if not free:
        raise ValueError(f"every prunable layer of {type(model).__name__} shares its output "
                         f"channels with another (residual adds, attention): name the layers "
                         f"to prune them anyway")
    return free


def apply_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose named Linear / Conv2d layers carry ``weights``."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, w in weights.items():
            target = modules.get(name)
            if not isinstance(target, PRUNABLE_TYPES) or target.weight.shape != w.shape:
                raise ValueError(f"cannot apply a {tuple(w.shape)} weight to layer {name!r}")
            target.weight.copy_(w)
    return pruned


def lookup(name: str) -> PruningMethod:
    """The registered method ``name``; ``<base>-N:M`` names of N:M-capable bases are built
    (and registered) on first use, so any valid pattern works, e.g. ``wanda-1:4``."""
    if name in METHODS:
        return METHODS[name]
    from prunelab.pruning.patterns import nm_method  # noqa: PLC0415 (imports the methods)

    method = nm_method(name)
    if method is None:
        raise ValueError(f"unknown pruning method {name!r}; choose from {sorted(METHODS)}")
    return register(method)


# Calibration-aware methods and baselines (their modules import this one, hence at the end).
from prunelab.pruning import registered as _registered  # noqa: E402, F401
