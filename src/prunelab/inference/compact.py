"""From a pruned MLP, a physically smaller network that computes the same outputs.

``compact`` drops every hidden unit that cannot change the output (no live incoming weight and
no bias, or no live outgoing weight) together with its row and column, and every input feature
that no live weight reads: the first layer then gathers only the pixels it uses. Which weights
are alive comes from ``prunelab.pruning.sparsity.effective_masks``. Each remaining layer then
runs in a backend of ``prunelab.inference.layers.LAYER_BACKENDS``: dense, or sparse for
weight-pruned layers.

>>> import torch
>>> from prunelab.models.mlp import MLPConfig, build_mlp
>>> from prunelab.pruning import apply_weights, prune
>>> net = build_mlp(MLPConfig(hidden=(64, 32)), torch.Generator().manual_seed(0))
>>> pruned = apply_weights(net, prune(net, "unit", 0.5))
>>> small = compact(pruned)
>>> small.sizes
(784, 32, 16, 10)
>>> x = torch.rand(3, 784)
>>> bool((small(x) - pruned(x)).abs().max() < 1e-5)
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from prunelab.inference.layers import LAYER_BACKENDS, CSRNumbaLayer, DenseLayer, check_backend
from prunelab.inference.structural import compact_graph
from prunelab.models.mlp import MLP, linear_layers
from prunelab.pruning.sparsity import effective_masks, measure_sparsity

__all__ = ["BY_SAMPLE_MAX", "DEFAULT_CHUNK", "CompactMLP", "compact", "compacted_size", "with_plan"]

DEFAULT_CHUNK = 1024
"""Samples per forward chunk of a feature-major plan (one with ``csr-torch`` layers): bigger
batches are cut so that each chunk's activations stay in cache from layer to layer. Measured
at batch 10,000 (weight-pruned 95 %, 1 thread, when numba layers ran feature-major too): 2x
faster in 1024-sample chunks, dense layers unchanged."""


BY_SAMPLE_MAX = 3
"""Batches up to this size run sample by sample through the input-column kernel when the
network allows (all ``csr-numba``, no biases). Measured, seed MLP weight-pruned 90 / 95 / 99 %,
2 threads, against one 16-sample tile: batch 3 in 0.105 / 0.080 / 0.040 ms that way against
0.162 / 0.109 / 0.040 ms; batch 4 0.155 / 0.113 / 0.064 against 0.167 / 0.134 / 0.039 ms;
from 6 samples the tile is faster everywhere."""


class CompactMLP(nn.Module):
    """A ReLU MLP for inference: gathers its input features, then runs its layers.

    ``input_index`` holds the input features read, in order, out of ``input_size``. All
    ``csr-numba`` runs the whole network in one compiled call
    (``prunelab.inference.kernels.chain_matmul``); other plans run layer by layer, batch-major
    (batch, features) unless a ``csr-torch`` layer needs feature-major activations (features,
    batch), in chunks of ``chunk`` samples.
    """

    def __init__(self, input_size: int, input_index: torch.Tensor, layers: Sequence[DenseLayer],
                 chunk: int | None = DEFAULT_CHUNK) -> None:
        super().__init__()
        _check_chain(input_size, input_index, layers)
        if chunk is not None and (not isinstance(chunk, int) or chunk <= 0):
            raise ValueError(f"chunk must be a positive integer or None, got {chunk!r}")
        self.input_size = input_size
        self.register_buffer("input_index", input_index.long())
        self.layers = nn.ModuleList(layers)
        self.chunk = chunk
        self._gather = input_index.numel() != input_size or not torch.equal(
            input_index.long(), torch.arange(input_size, device=input_index.device))
        self._chain, self._fused = _numba_chains(self.input_index, self.layers)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Input features read, then every layer's output width."""
        return (self.input_index.numel(), *(layer.shape[0] for layer in self.layers))

    @property
    def plan(self) -> tuple[str, ...]:
        """The backend of each layer."""
        return tuple(layer.backend for layer in self.layers)

    def _run_rows(self, x: torch.Tensor) -> torch.Tensor:
        # No torch CSR layer: stay batch-major. Transposing the input to feature-major costs as
        # much as the matmuls of a small compacted net (measured: 5.9x -> 11x vs dense torch at
        # unit 90 %, batch 1024).
        h = x.index_select(1, self.input_index) if self._gather else x
        for layer in self.layers:
            h = layer.forward_rows(h)  # (batch, features)
        return h

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        h = (x.index_select(1, self.input_index) if self._gather else x).t().contiguous()
        for layer in self.layers:
            h = layer(h)  # (features, batch)
        return h.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on ``x`` (batch, features...) float32.

        Where a single sample's time goes (seed MLP, 95 % of weights pruned, every layer
        csr-numba, 2 threads, this VM in its slower state; medians of 7 x 3000 calls): the
        compiled kernel 75.8 us of 87.0 us per call; the rest is the module call, the
        checks below, the tensor -> array -> tensor conversions and, before they were cut
        here, a per-call import, ``np.stack`` of one row and ``torch.no_grad`` around numba
        code that builds no graph (about 4 us together). At 99 %: 35.0 of 57.5 us.
        """
        x = x.flatten(1)
        if x.shape[1] != self.input_size:
            raise ValueError(f"expected {self.input_size} input features, got {x.shape[1]}")
        if x.dtype != torch.float32:  # as the float32 model it came from; uint8 pixels unscaled
            raise TypeError(f"expected float32 inputs, got {x.dtype}")
        if self._fused is not None:  # every layer csr-numba: one compiled call for all
            kernels = self._kernels
            x_np = x.detach().contiguous().numpy()
            if self._chain is not None and 0 < x.shape[0] <= BY_SAMPLE_MAX:
                if len(x_np) == 1:
                    return torch.from_numpy(kernels.chain_matvec(self._chain, x_np[0]))[None]
                return torch.from_numpy(np.stack([kernels.chain_matvec(self._chain, row)
                                                  for row in x_np]))
            return torch.from_numpy(kernels.chain_matmul(self._fused, x_np))
        with torch.no_grad():
            if all(layer.batch_major for layer in self.layers):
                return self._run_rows(x)
            if self.chunk is None or x.shape[0] <= self.chunk:
                return self._run(x).contiguous()
            return torch.cat([self._run(part) for part in x.split(self.chunk)])

    @property
    def _kernels(self):
        from prunelab.inference import kernels  # loaded by the layers already (numba import)

        return kernels


def _numba_chains(input_index: torch.Tensor,
                  layers: nn.ModuleList) -> tuple[tuple | None, tuple | None]:
    """Packed arrays to run the whole network in one compiled call when every layer is
    ``csr-numba``: (a single sample, by input columns: bias-free layers only; any batch)."""
    if not all(isinstance(m, CSRNumbaLayer) for m in layers):
        return None, None
    from prunelab.inference.kernels import pack_chain, pack_csr_chain

    index = input_index.numpy()
    fused = pack_csr_chain([m.csr for m in layers],
                           [None if m.bias is None else m.bias.flatten().numpy() for m in layers],
                           index, relu_last=layers[-1].relu)
    if any(m.bias is not None for m in layers) or layers[-1].relu:
        return None, fused
    return pack_chain([m.csc for m in layers], index, [m.shape[0] for m in layers]), fused


def _check_chain(input_size: int, input_index: torch.Tensor, layers: Sequence[DenseLayer]) -> None:
    if not layers:
        raise ValueError("a network needs at least one layer")
    n_in = input_index.numel()
    if input_index.dim() != 1 or (n_in and not 0 <= int(input_index.min()) <= int(
            input_index.max()) < input_size):
        raise ValueError(f"input index must list features in 0..{input_size - 1}")
    for i, layer in enumerate(layers):
        if layer.shape[1] != n_in:
            raise ValueError(f"layer {i} takes {layer.shape[1]} inputs but receives {n_in}: "
                             "layer shapes do not chain")
        n_in = layer.shape[0]


def compact(model: nn.Module, plan: Sequence[str] | str | None = None,
            chunk: int | None = DEFAULT_CHUNK,
            example_inputs: torch.Tensor | None = None) -> nn.Module:
    """The smallest network computing ``model``'s outputs.

    A ``prunelab.models.mlp.MLP`` (ReLU between Linear layers) becomes a ``CompactMLP`` whose
    layers run as ``plan`` says (a backend of ``LAYER_BACKENDS`` per layer, or one for all;
    default ``dense``); output units are kept. Any other module needs ``example_inputs`` (a
    batch it accepts) and comes back as a copy of itself with every dead channel, unit and
    attention head physically removed (``structural.compact_graph``).
    """
    if not isinstance(model, MLP):
        if example_inputs is None:
            raise ValueError(f"compacting a {type(model).__name__} traces its graph: pass "
                             "example_inputs= (a batch of inputs it accepts)")
        if plan is not None:
            raise ValueError("plan= chooses the layer backends of an MLP; for other models "
                             "use prunelab.inference.sparse.sparsify on the compacted model")
        return compact_graph(model, example_inputs)[0]
    layers = [m for _, m in linear_layers(model)]
    plan = _check_plan(plan, len(layers))
    masks = effective_masks(layers)
    keep_in = masks[0].any(0).nonzero().flatten()  # input features some live weight reads
    built, cols = [], keep_in
    for i, (layer, mask) in enumerate(zip(layers, masks, strict=True)):
        last = i == len(layers) - 1
        rows = torch.arange(layer.out_features) if last else masks[i + 1].any(0).nonzero().flatten()
        w = (layer.weight.detach() * mask)[rows][:, cols]
        b = None if layer.bias is None else layer.bias.detach()[rows]
        built.append(LAYER_BACKENDS[plan[i]](w, b, relu=not last))
        cols = rows
    return CompactMLP(layers[0].in_features, keep_in, built, chunk)


def compacted_size(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(parameters, multiply-adds per sample) of the dense network ``compact`` makes of
    ``model``: what physical removal alone buys, zeros left inside its layers included.
    Parameters are the prunable layers' weights and biases, as ``measure_sparsity`` counts
    ``params_total``; MACs include attention's activation products. ``example``: a batch of
    inputs ``model`` accepts."""
    if isinstance(model, MLP):
        layers = compact(model).layers
        macs = sum(o * i for o, i in (layer.shape for layer in layers))
        return macs + sum(layer.bias.numel() for layer in layers if layer.bias is not None), macs
    stats = measure_sparsity(compact_graph(model, example)[0], example=example[:1])
    macs = sum(math.prod(layer.shape) * layer.positions for layer in stats.layers)
    return stats.params_total, macs + stats.activation_macs_per_sample


def _check_plan(plan: Sequence[str] | str | None, n_layers: int) -> tuple[str, ...]:
    if plan is None or isinstance(plan, str):
        return (check_backend(plan or "dense"),) * n_layers
    plan = tuple(plan)
    if len(plan) != n_layers:
        raise ValueError(f"plan names {len(plan)} backends for {n_layers} layers: {list(plan)}")
    return tuple(check_backend(name) for name in plan)


def with_plan(net: CompactMLP, plan: Sequence[str] | str) -> CompactMLP:
    """``net`` with each layer rebuilt in the backend ``plan`` names (``net`` is unchanged)."""
    plan = _check_plan(plan, len(net.layers))
    layers = [
        layer if layer.backend == name
        else LAYER_BACKENDS[name](layer.dense_weight(), _bias(layer), layer.relu)
        for layer, name in zip(net.layers, plan, strict=True)
    ]
    return CompactMLP(net.input_size, net.input_index, layers, net.chunk)


def _bias(layer: DenseLayer) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.flatten()
