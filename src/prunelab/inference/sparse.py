"""Sparse execution inside any model: weight-pruned Linear and Conv2d layers on sparse kernels.

``sparsify(model, plan)`` returns a copy of ``model`` in which the named layers run on one of
prunelab's layer backends (``inference.layers``: ``csr-numba``, ``csr-torch``):

- ``SparseLinear``: a Linear on inputs of any leading shape (a ViT's tokens included): the
  input is viewed as (rows, features) and the backend's batch-major path runs it;
- ``SparseConv2d``: with ``csr-numba`` a direct sparse convolution, whose work is a row update
  per nonzero tap and output row (no unfolded copy of the input); with ``csr-torch`` the
  unfolded input (im2col) times torch's CSR weight. ``auto_sparsify`` measures where each wins
  (``benchmarks/sparse_conv.py``).

``auto_sparsify(model, example, batch)`` chooses per layer, by timing each layer on the inputs
it really receives at that batch size: the sparse backend where it is at least ``MARGIN``
faster than torch's dense layer, else the layer stays as it is. So the whole model is never
slower than the dense one by construction (up to timing noise), whatever it contains.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.inference.layers import LAYER_BACKENDS, check_backend

__all__ = ["MARGIN", "SPARSE_BACKENDS", "SparseConv2d", "SparseLinear", "auto_sparsify",
           "sparsify"]

SPARSE_BACKENDS = ("csr-numba", "csr-torch")
MARGIN = 1.1
"""A layer goes sparse only when that is at least 10 % faster (timing noise stays out)."""


class SparseLinear(nn.Module):
    """``nn.Linear`` on a layer backend, for inputs (..., in_features)."""

    def __init__(self, linear: nn.Linear, backend: str) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.backend = check_backend(backend)
        self.layer = LAYER_BACKENDS[backend](linear.weight.detach(), linear.bias, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        return self.layer.forward_rows(rows).reshape(*x.shape[:-1], self.out_features)


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` with a sparse weight. ``csr-numba``: a direct sparse convolution
    (``kernels.sparse_conv2d``: per nonzero tap, shifted rows of its input channel added to the
    output plane; any stride, dilation and groups); ``csr-torch``: the unfolded input (im2col)
    times torch's CSR weight (groups=1)."""

    def __init__(self, conv: nn.Conv2d, backend: str) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or (
                conv.groups != 1 and self.backend != "csr-numba"):
            raise ValueError("sparse convs need numeric zero padding (and groups=1 for "
                             "csr-torch)")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        weight = conv.weight.detach()
        if self.backend == "csr-numba":
            self._packed = _kernels().pack_conv(weight.numpy(), conv.groups, conv.dilation)
            self._bias = (np.zeros(conv.out_channels, np.float32) if conv.bias is None
                          else conv.bias.detach().numpy().astype(np.float32))
        else:
            self.layer = LAYER_BACKENDS[backend](weight.reshape(conv.out_channels, -1),
                                                 conv.bias, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            # the compiled kernel does not check its indices: a wrong input would read past it
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        if self.backend == "csr-numba":
            return torch.from_numpy(_kernels().sparse_conv2d(
                x.detach().float().numpy(), self._packed, self._bias, self.out_channels,
                self.kernel_size, self.stride, self.padding, self.dilation))
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) \
            // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) \
            // self.stride[1] + 1
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1]).contiguous()
        y = self.layer.forward_rows(rows)  # (n * positions, out)
        return y.reshape(n, oh * ow, self.out_channels).transpose(1, 2).reshape(
            n, self.out_channels, oh, ow)


def _kernels():
    from prunelab.inference import kernels  # imports numba: only when a sparse conv is built

    return kernels


def _sparse_twin(module: nn.Module, backend: str) -> nn.Module:
    if isinstance(module, nn.Linear):
        return SparseLinear(module, backend)
    if isinstance(module, nn.Conv2d):
        return SparseConv2d(module, backend)
    raise TypeError(f"cannot run a {type(module).__name__} sparse")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def sparsify(model: nn.Module, plan: dict[str, str]) -> nn.Module:
    """A copy of ``model`` with each layer of ``plan`` (name -> backend of
    ``SPARSE_BACKENDS``) replaced by its sparse twin; ``model`` is unchanged."""
    net = copy.deepcopy(model).eval()
    modules = dict(net.named_modules())
    for name, backend in plan.items():
        if name not in modules:
            raise ValueError(f"no layer {name!r} in {type(model).__name__}")
        if backend not in SPARSE_BACKENDS:
            raise ValueError(f"unknown sparse backend {backend!r}; choose from "
                             f"{list(SPARSE_BACKENDS)}")
        _replace(net, name, _sparse_twin(modules[name], backend))
    return net


def _candidates(model: nn.Module, min_zeros: float,
                backend: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d)
                                        and (m.groups == 1 or backend == "csr-numba")
                                        and m.padding_mode == "zeros"
                                        and not isinstance(m.padding, str)):
            if float((m.weight == 0).float().mean()) >= min_zeros:
                out.append((name, m))
    return out


def _median_time(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)  # warm-up (numba compiles on first use)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def auto_sparsify(model: nn.Module, example: torch.Tensor, batch: int,
                  backend: str = "csr-numba", min_zeros: float = 0.5,
                  repeats: int = 5) -> tuple[nn.Module, dict[str, str]]:
    """(``model`` with the layers that run faster sparse at ``batch`` samples replaced, the
    plan {layer: backend}). Each layer with at least ``min_zeros`` zero weights is timed dense
    and sparse on the input it receives when the model runs ``batch`` samples (``example``
    repeated to that size)."""
    candidates = _candidates(model, min_zeros, backend)
    if not candidates:
        return copy.deepcopy(model).eval(), {}
    reps = -(-batch // len(example))
    x = example.repeat(reps, *([1] * (example.dim() - 1)))[:batch]
    inputs: dict[nn.Module, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(
        lambda mod, a: inputs.setdefault(mod, a[0].detach().clone())) for _, m in candidates]
    try:
        model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    plan = {}
    for name, m in candidates:
        if m not in inputs:
            continue  # not reached by the forward pass
        twin = _sparse_twin(m, backend)
        dense_t = _median_time(m, inputs[m], repeats)
        sparse_t = _median_time(twin, inputs[m], repeats)
        if sparse_t * MARGIN <= dense_t:
            plan[name] = backend
    return sparsify(model, plan), plan
