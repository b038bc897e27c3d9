"""How sparse a pruned network really is: zero weights, effectively dead weights, cost.

A weight is *effectively* dead when it can no longer change the output. In a chain of Linear
layers with ReLU between them and no biases, a unit whose incoming weights are all zero outputs
0, so its outgoing weights are dead too; a unit whose outgoing weights are all zero is never
read, so its incoming weights are dead. Both rules are applied until nothing changes.

That reasoning is sound only for such chains (prunelab's ``MLP``, or an ``nn.Sequential`` of
Linear layers, ReLU and Flatten). In any other model -- convs with BatchNorm, whose shift turns a
zeroed channel into a constant; LayerNorm; residual adds that carry a channel past a zeroed
layer; attention -- only zero weights count as dead: nothing unprovable is counted.

Counts cover the prunable layers (``nn.Linear``, ``nn.Conv2d``). A layer's multiply-adds per
sample are its live weights times its output positions (a conv's output pixels, a Linear's
tokens): measuring a model whose layers see more than one position per sample needs an
``example`` input, run once through the model with forward hooks. That pass also counts the
multiply-adds of products between activations -- attention's ``Q K^T`` and ``A V`` (through
``scaled_dot_product_attention`` or a matmul of two non-parameters) -- which no weight pruning
removes; they are part of ``macs_per_sample``.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
>>> with torch.no_grad():
...     _ = net[0].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
...     _ = net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
>>> stats = measure_sparsity(net)
>>> stats.zero_fraction, stats.effective_sparsity  # 2 of 6 zero; unit 2's outgoing weight dead
(0.3333333333333333, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from prunelab.models.mlp import MLP
from prunelab.pruning.targets import as_matrix, prunable_modules

__all__ = ["LayerSparsity", "SparsityStats", "effective_masks", "is_relu_chain", "measure_sparsity",
           "output_positions"]


@dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one prunable layer."""

    name: str
    """Qualified module name."""
    shape: tuple[int, ...]
    """Torch's ``weight`` shape: (out, in), or a conv's (out, in/groups, kh, kw)."""
    zero_fraction: float
    """Fraction of weights equal to zero."""
    effective_sparsity: float
    """Fraction of weights that cannot change the output (zero or dead)."""
    effective_weights: int
    """Weights that can still change the output."""
    positions: int = 1
    """Output positions per sample the weights are applied at (a conv's pixels, tokens)."""


@dataclass(frozen=True)
class SparsityStats:
    """Sparsity of every prunable layer and of the whole network."""

    layers: tuple[LayerSparsity, ...]
    """Per layer, in order."""
    zero_fraction: float
    """Zero weights / all weights of the prunable layers."""
    effective_sparsity: float
    """Dead-or-zero weights / all weights of the prunable layers."""
    params_total: int
    """Weights and biases of the prunable layers of the dense network."""
    params_remaining: int
    """Weights and biases that can still change the output."""
    macs_per_sample: int
    """Multiply-adds per sample of a sparse execution skipping every dead weight, activation
    products (attention) included."""
    activation_macs_per_sample: int = 0
    """Of those, the products between activations (attention scores and their use)."""


def _chains(layers: list[nn.Linear]) -> bool:
    pairs = zip(layers[:-1], layers[1:], strict=True)
    return all(a.out_features == b.in_features for a, b in pairs)


def is_relu_chain(model: nn.Module) -> bool:
    """Whether ``model`` is known to apply its Linear layers in order with ReLU between them."""
    if isinstance(model, MLP):
        return True
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, nn.Linear | nn.ReLU | nn.Flatten) for m in model)


def effective_masks(layers: list[nn.Linear]) -> list[torch.Tensor]:
    """Per layer a bool (out, in) mask of weights that can still change the output.

    Assumes the layers are applied in order with ReLU-like activations (f(0) = 0) between them
    (see ``is_relu_chain``).
    """
    alive = [layer.weight.detach() != 0 for layer in layers]
    if not _chains(layers):
        return alive  # not an MLP chain: no cross-layer reasoning is sound
    changed = True
    while changed:
        changed = False
        for i in range(len(layers) - 1):
            # Unit outputs of layer i == inputs of layer i+1.
            used = alive[i + 1].any(0)  # (out_i,): read by some live weight of layer i+1
            keep_in = alive[i] & used[:, None]
            produces = alive[i].any(1)  # (out_i,): has a live incoming weight
            if layers[i].bias is not None:
                produces = torch.ones_like(produces)  # a bias makes a constant, not a zero
            keep_out = alive[i + 1] & produces[None, :]
            if not (torch.equal(keep_in, alive[i]) and torch.equal(keep_out, alive[i + 1])):
                alive[i], alive[i + 1] = keep_in, keep_out
                changed = True
    return alive


_MATMULS = (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm)


class _ActivationProducts(TorchFunctionMode):
    """Counts multiply-adds of attention and of matmuls between two non-parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]  # (..., Tq, d), (..., Tk, d), (..., Tk, dv)
            self.macs += q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (
                q.shape[-1] + v.shape[-1])
        elif func in _MATMULS and len(args) == 2:
            a, b = args
            if not (isinstance(a, nn.Parameter) or isinstance(b, nn.Parameter)) and \
                    a.dim() >= 2 and b.dim() >= 2:
                batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel()
                self.macs += batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        return func(*args, **kwargs)


def output_positions(model: nn.Module, names: list[str],
                     example: torch.Tensor | None) -> tuple[dict[str, int], int]:
    """Per named layer, the output positions per sample (1 for a Linear on flat features), and
    the multiply-adds of products between activations per sample."""
    modules = dict(model.named_modules())
    if example is None:
        if any(isinstance(modules[n], nn.Conv2d) for n in names):
            raise ValueError("counting a conv's multiply-adds needs an example input: "
                             "measure_sparsity(model, example=x)")
        return dict.fromkeys(names, 1), 0
    seen: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
            # (1, C, H, W) -> H*W; (1, ..., features) -> the positions before the features.
            dims = output.shape[2:] if isinstance(module, nn.Conv2d) else output.shape[1:-1]
            seen[name] = seen.get(name, 0) + int(torch.Size(dims).numel())
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    products = _ActivationProducts()
    try:
        with torch.no_grad(), products:
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return {n: seen.get(n, 0) for n in names}, products.macs  # unreached layers: 0


def measure_sparsity(model: nn.Module, example: torch.Tensor | None = None) -> SparsityStats:
    """Zero fraction, effective sparsity, remaining parameters and MACs of ``model``.

    ``example``: a batch of model inputs (its first sample is run) to count per-position layers.
    """
    named = prunable_modules(model)
    if not named:
        raise ValueError(f"{type(model).__name__} has no prunable layers (nn.Linear, nn.Conv2d)")
    layers = [m for _, m in named]
    chain = is_relu_chain(model)
    masks = effective_masks(layers) if chain else [as_matrix(m.weight.detach()) != 0
                                                   for m in layers]
    positions, activation_macs = output_positions(model, [n for n, _ in named], example)
    rows, zeros, dead, total, remaining, macs = [], 0, 0, 0, 0, 0
    for (name, layer), mask in zip(named, masks, strict=True):
        n = layer.weight.numel()
        n_zero = int((layer.weight == 0).sum())
        n_live = int(mask.sum())
        rows.append(LayerSparsity(name, tuple(layer.weight.shape), n_zero / n, 1 - n_live / n,
                                  n_live, positions[name]))
        zeros, dead, total = zeros + n_zero, dead + n - n_live, total + n
        remaining, macs = remaining + n_live, macs + n_live * positions[name]
    biases_total = sum(layer.bias.numel() for layer in layers if layer.bias is not None)
    # A bias still matters when its unit is read downstream (or is an output).
    biases_live = biases_total if not (chain and _chains(layers)) else sum(
        int(masks[i + 1].any(0).sum()) if i + 1 < len(layers) else layer.bias.numel()
        for i, layer in enumerate(layers)
        if layer.bias is not None
    )
    return SparsityStats(
        layers=tuple(rows),
        zero_fraction=zeros / total,
        effective_sparsity=dead / total,
        params_total=total + biases_total,
        params_remaining=remaining + biases_live,
        macs_per_sample=macs + activation_macs,
        activation_macs_per_sample=activation_macs,
    )
