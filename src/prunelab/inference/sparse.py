"""Sparse execution inside any model: weight-pruned Linear and Conv2d layers on sparse kernels.

``sparsify(model, plan)`` returns a copy of ``model`` in which the named layers run on one of
prunelab's layer backends (``inference.layers``: ``csr-numba``, ``csr-torch``):

- ``SparseLinear``: a Linear on inputs of any leading shape (a ViT's tokens included): the
  input is viewed as (rows, features) and the backend's batch-major path runs it;
- ``SparseConv2d``: with ``csr-numba`` a direct sparse convolution, whose work is a row update
  per nonzero tap and output row (no unfolded copy of the input); with ``csr-torch`` the
  unfolded input (im2col) times torch's CSR weight. ``auto_sparsify`` measures where each wins
  (``benchmarks/sparse_conv.py``).

A conv can also run *densely* on prunelab's direct convolution (``inference.direct_conv``, as
a ``FusedConv2d`` on the "direct" backend): output channels in blocks of 8, so a conv that
compaction left with 8 output channels costs half of one with 16, where torch's (oneDNN's)
16-channel blocks charge both alike; strided convs included (split into phases per image).

``auto_sparsify(model, example, batch)`` first fuses each conv with the BatchNorm, ReLU and
residual add after it (``inference.fuse``), then chooses per layer, by timing each layer on the
inputs it really receives at that batch size: the sparse backend or the direct conv where one
is at least ``MARGIN`` faster than torch's layer, else the layer stays on torch. So the whole
model is never slower than the dense one by construction (up to timing noise), whatever it
contains.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.inference.fuse import FusedConv2d, direct_fits, fuse_convs
from prunelab.inference.layers import LAYER_BACKENDS, check_backend

__all__ = ["DIRECT", "MARGIN", "SPARSE_BACKENDS", "SparseConv2d", "SparseLinear",
           "auto_sparsify", "kernel_variants", "sparsify"]

SPARSE_BACKENDS = ("csr-numba", "csr-torch")
DIRECT = "direct"
"""The plan entry of a conv run on prunelab's dense direct convolution (a ``FusedConv2d`` on
its "direct" backend)."""
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
    if isinstance(module, FusedConv2d):
        return copy.deepcopy(module).set_backend(backend)
    if backend == DIRECT:
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"the direct kernel runs convs, not a {type(module).__name__}")
        return FusedConv2d(module).set_backend(DIRECT)
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
    """A copy of ``model`` with each layer of ``plan`` (name -> a backend of
    ``SPARSE_BACKENDS``, or ``DIRECT`` for a conv) replaced by its twin on that backend;
    ``model`` is unchanged."""
    net = copy.deepcopy(model).eval()
    modules = dict(net.named_modules())
    for name, backend in plan.items():
        if name not in modules:
            raise ValueError(f"no layer {name!r} in {type(model).__name__}")
        if backend not in (*SPARSE_BACKENDS, DIRECT):
            raise ValueError(f"unknown sparse backend {backend!r}; choose from "
                             f"{[*SPARSE_BACKENDS, DIRECT]}")
        _replace(net, name, _sparse_twin(modules[name], backend))
    return net


def _sparse_fits(m: nn.Module, min_zeros: float, backend: str) -> bool:
    """Whether ``m`` has enough zeros to try ``backend`` on, and ``backend`` runs it."""
    fits = isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d)
                                        and (m.groups == 1 or backend == "csr-numba")
                                        and m.padding_mode == "zeros"
                                        and not isinstance(m.padding, str)) or (
        isinstance(m, FusedConv2d) and backend == "csr-numba")  # numeric zero padding
    return fits and float((m.weight == 0).float().mean()) >= min_zeros


@torch.no_grad()
def auto_sparsify(model: nn.Module, example: torch.Tensor, batch: int,
                  backend: str = "csr-numba", min_zeros: float = 0.5,
                  repeats: int = 5, direct: bool = True) -> tuple[nn.Module, dict[str, str]]:
    """(``model`` with the layers that run faster on prunelab's kernels at ``batch`` samples
    replaced, the plan {layer: backend}). With ``direct``, convs are first fused with what
    follows them (``fuse_convs``) and each conv ``FusedConv2d``'s direct kernel runs is timed
    on it. Each layer with at least ``min_zeros`` zero weights is timed on ``backend``. Both
    against torch's layer, round-robin on the inputs the layer receives when the model runs
    ``batch`` samples (``example`` repeated to that size); the fastest wins if it beats torch
    by ``MARGIN``.

    Layers interact (caches; torch's and numba's thread pools take turns), so the whole
    network is then timed in each of ``kernel_variants`` and the fastest is returned (never
    slower than ``model`` as measured)."""
    from prunelab.inference.timing import time_calls

    variants, x = kernel_variants(model, example, batch, backend, min_zeros, repeats, direct)
    times = time_calls([lambda m=m: m(x) for _, _, m in variants], warmup=1,
                       repeats=max(3, repeats // 2), budget_s=2.0, best=True, burst=3)
    _, chosen, net = variants[min(range(len(variants)), key=times.__getitem__)]
    return net, dict(chosen)


@torch.no_grad()
def kernel_variants(model: nn.Module, example: torch.Tensor, batch: int,
                    backend: str = "csr-numba", min_zeros: float = 0.5, repeats: int = 5,
                    direct: bool = True) -> tuple[list[tuple[str, dict[str, str], nn.Module]],
                                                  torch.Tensor]:
    """([(label, plan, network)], the batch they were planned on), each distinct network once:
    "as planned" (each layer on the fastest of torch and prunelab's kernels as timed alone, see
    ``auto_sparsify``), "every offered kernel", "fused, all on torch" and "as given" (the last
    two one network without ``direct``). ``auto_sparsify`` returns the fastest; a benchmark can
    time them all."""
    from prunelab.inference.timing import time_calls

    base = fuse_convs(model)[0] if direct else copy.deepcopy(model).eval()
    layers = [(n, m) for n, m in base.named_modules()
              if (isinstance(m, nn.Linear | nn.Conv2d) and _sparse_fits(m, min_zeros, backend))
              or (direct and isinstance(m, nn.Conv2d | FusedConv2d))]
    reps = -(-batch // len(example))
    x = example.repeat(reps, *([1] * (example.dim() - 1)))[:batch]
    inputs: dict[nn.Module, tuple] = {}
    handles = [m.register_forward_pre_hook(
        lambda mod, a: inputs.setdefault(mod, tuple(t.detach().clone() for t in a)))
        for _, m in layers]
    try:
        base(x)
    finally:
        for h in handles:
            h.remove()
    plan, offered = {}, {}
    for name, m in layers:
        if m not in inputs:
            continue  # not reached by the forward pass
        args = inputs[m]
        options = [DIRECT] if direct and not isinstance(m, nn.Linear) and direct_fits(
            m, args[0]) else []
        if _sparse_fits(m, min_zeros, backend):
            options.append(backend)
        if not options:
            continue
        twins = [_sparse_twin(m, b) for b in options]
        # The minimum of bursts, as auto_backend chooses: a choice should follow the cost of
        # the code, not a burst of load from elsewhere (medians of single calls flipped the
        # ResNet's 8 -> 16-channel conv between torch and direct from run to run).
        times = time_calls([lambda f=f, a=args: f(*a) for f in (m, *twins)], warmup=1,
                           repeats=repeats, best=True, burst=3)
        best = min(range(len(twins)), key=lambda i: times[i + 1])
        offered[name] = dict(zip(options, twins, strict=True))
        if times[best + 1] * MARGIN <= times[0]:
            plan[name] = options[best]
    everywhere = {n: plan.get(n, next(iter(twins))) for n, twins in offered.items()}
    variants = [("fused, all on torch" if direct else "as given", {}, base)]
    if plan:
        variants.insert(0, ("as planned", plan, _assemble(base, plan, offered)))
    if everywhere != plan:
        variants.append(("every offered kernel", everywhere,
                         _assemble(base, everywhere, offered)))
    if direct:
        variants.append(("as given", {}, copy.deepcopy(model).eval()))
    return variants, x


def _assemble(base: nn.Module, plan: dict[str, str],
              offered: dict[str, dict[str, nn.Module]]) -> nn.Module:
    """A copy of ``base`` with each layer of ``plan`` replaced by its timed twin."""
    net = copy.deepcopy(base)
    for name, backend in plan.items():
        _replace(net, name, copy.deepcopy(offered[name][backend]))
    return net
