"""Fused convolutions for inference: BatchNorm folded, ReLU and residual adds in the epilogue.

In eager torch a ResNet block is seven passes over its activations: conv, BatchNorm, ReLU,
conv, BatchNorm, add, ReLU. The elementwise ones cost as much as the convs here (ResNet
stage 1 at batch 256, 2 threads: 1.6-2.0 ms each on the 28 x 28 x 16 tensors), and they are
the same in a dense and a compacted model, so they also hide what compaction saves.
``fuse_convs(model)`` rewrites every traceable part of a model (``torch.fx``) so that

- a ``Conv2d`` whose only reader is an eval-mode ``BatchNorm2d`` absorbs it (weights scaled,
  shift into the bias, computed in float64);
- a ReLU that is the conv's only reader, or an add of the conv's output and another tensor
  (a residual) that is its only reader, optionally followed by a ReLU that is the add's only
  reader, becomes the conv's epilogue,

each into one ``FusedConv2d``. That module runs on torch (its conv, then the add and ReLU in
place on the conv's fresh output) or on prunelab's direct convolution (``inference.direct_conv``)
with the epilogue applied to the accumulators before they are stored (``backend``).
``inference.sparse.auto_sparsify`` fuses first and then picks each fused conv's backend by
timing it.

Then a residual that is itself a fused conv with no epilogue of its own, read only there (a
ResNet's projection shortcut: 1 x 1 conv, stride 2, BatchNorm), becomes part of the conv it
feeds (``FusedConv2d.absorb``): on the direct backend both convs add into the same
accumulators, so the shortcut's output is never written out and read back. Measured in the
ResNet at batch 256 (2 threads, two profiles of one session): stage 2's conv with its shortcut
took 5.0 ms dense and 2.8 ms compacted, against 4.4 + 1.6 and 2.5 + 1.3 ms as two convs.

Tracing goes top-down: a module that ``torch.fx`` cannot trace (data-dependent control flow) is
left as it is and its children are tried instead. ``as_images`` (the zoo's input check) is kept
as one call.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
>>> fused, names = fuse_convs(net)
>>> names
['0']
>>> x = torch.randn(3, 2, 5, 5)
>>> bool(torch.allclose(fused(x), net(x), atol=1e-5))
True
"""

from __future__ import annotations

import collections
import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunelab.models.base import as_images

__all__ = ["FUSED_BACKENDS", "FusedConv2d", "direct_fits", "fold_batchnorm", "fuse_convs"]

FUSED_BACKENDS = ("torch", "direct", "csr-numba")
"""torch's conv; prunelab's dense direct conv; its sparse direct conv (``kernels.sparse_conv2d``,
for weight-pruned convs; the epilogue then runs in torch)."""


def direct_fits(conv: nn.Conv2d | FusedConv2d, x: torch.Tensor) -> bool:
    """Whether the direct kernel runs ``conv`` (a Conv2d or a FusedConv2d) on ``x``: a batch
    of float32 images on the CPU, no gradient wanted (the kernel has no backward)."""
    from prunelab.inference.direct_conv import direct_supported

    tensor_ok = (x.dim() == 4 and x.shape[0] > 0 and x.dtype == torch.float32
                 and x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled()))
    if not tensor_ok or isinstance(conv.padding, str) or getattr(
            conv, "padding_mode", "zeros") != "zeros":
        return False
    rows = x.shape[2] + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1)
    return rows >= 1 and direct_supported(conv.kernel_size, conv.padding, conv.stride,
                                          conv.dilation, conv.groups)


def fold_batchnorm(conv: nn.Conv2d,
                   bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) float32 of ``conv`` followed by eval-mode ``bn`` as one conv (float64
    arithmetic): weight * g / sqrt(var + eps) per output channel, (bias - mean) * that + shift."""
    w = conv.weight.detach().double()
    b = (torch.zeros(w.shape[0], dtype=torch.float64) if conv.bias is None
         else conv.bias.detach().double())
    if bn is not None:
        gain = (torch.ones_like(b) if bn.weight is None else bn.weight.detach().double())
        shift = torch.zeros_like(b) if bn.bias is None else bn.bias.detach().double()
        scale = gain / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean.double()) * scale + shift
    return w.float().contiguous(), b.float()


class FusedConv2d(nn.Module):
    """relu?(conv(x) + residual?) as one module: a ``Conv2d`` with its BatchNorm folded in,
    an optional residual added and an optional ReLU, on ``backend`` (``FUSED_BACKENDS``; inputs
    the direct kernel cannot take go to torch)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, relu: bool = False,
                 residual: bool = False) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("fused convs need numeric zero padding")
        weight, bias = fold_batchnorm(conv, bn)
        self.register_buffer("weight", weight)  # buffers: moved by .to(), kept in state_dict
        self.register_buffer("bias", bias)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.relu, self.residual = relu, residual
        self.shortcut: FusedConv2d | None = None  # see absorb
        self.backend = "torch"
        self._packed = self._packed_shortcut = None

    def absorb(self, shortcut: FusedConv2d) -> FusedConv2d:
        """This module computing its residual itself: ``forward(x, s)`` adds ``shortcut(s)``
        (a fused conv with no ReLU or residual of its own, say a ResNet's 1 x 1 projection).
        On the direct backend both convs add into the same accumulators, so the shortcut's
        output is never written out and read back."""
        if not self.residual or shortcut.relu or shortcut.residual or shortcut.shortcut:
            raise ValueError("a shortcut goes into a fused conv that adds a residual, and has "
                             "no ReLU, residual or shortcut of its own")
        self.shortcut = shortcut
        return self.set_backend(self.backend)

    def set_backend(self, backend: str) -> FusedConv2d:
        """This module running on ``backend``; "direct" needs dilation 1, groups 1 and a
        padding across of (kernel width - 1) / 2 (``direct_conv.direct_supported``)."""
        if backend not in FUSED_BACKENDS:
            raise ValueError(f"unknown fused-conv backend {backend!r}; choose from "
                             f"{list(FUSED_BACKENDS)}")
        if backend == "direct":
            from prunelab.inference import direct_conv  # imports numba: only when used

            if not direct_conv.direct_supported(self.kernel_size, self.padding, self.stride,
                                                self.dilation, self.groups):
                raise ValueError(f"the direct conv needs dilation 1, groups 1 and a padding "
                                 f"across of (kernel width - 1) / 2; got stride {self.stride}, "
                                 f"dilation {self.dilation}, groups {self.groups}, kernel "
                                 f"{self.kernel_size}, padding {self.padding}")
            self._packed = direct_conv.pack_direct(self.weight.numpy(), self.bias.numpy())
            if self.shortcut is not None and direct_conv.direct_supported(
                    self.shortcut.kernel_size, self.shortcut.padding, self.shortcut.stride,
                    self.shortcut.dilation, self.shortcut.groups):
                self._packed_shortcut = direct_conv.pack_direct(self.shortcut.weight.numpy(),
                                                                self.shortcut.bias.numpy())
            else:
                self._packed_shortcut = None  # the shortcut runs as its own module
        if backend == "csr-numba":
            from prunelab.inference.kernels import pack_conv

            self._packed = pack_conv(self.weight.numpy(), self.groups, self.dilation)
        self.backend = backend
        return self

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.shortcut is not None:
            if self.backend == "direct" and self._packed_shortcut is not None and direct_fits(
                    self, x) and direct_fits(self.shortcut, residual):
                y = self._direct(x, None, shortcut_x=residual)
                if y is not None:
                    return y
            residual = self.shortcut(residual)
        if self.backend == "csr-numba":
            from prunelab.inference.kernels import sparse_conv2d

            y = torch.from_numpy(sparse_conv2d(
                x.detach().float().numpy(), self._packed, self.bias.numpy(), self.out_channels,
                self.kernel_size, self.stride, self.padding, self.dilation))
            return self._epilogue(y, residual)
        if self.backend == "direct" and direct_fits(self, x):
            y = self._direct(x, residual)
            if y is not None:
                return y
        return self._epilogue(F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups), residual)

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        n, _, h, w = x.shape
        return (n, self.out_channels,
                (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1)

    def _direct(self, x: torch.Tensor, residual: torch.Tensor | None,
                shortcut_x: torch.Tensor | None = None) -> torch.Tensor | None:
        """On the direct kernel (with the absorbed shortcut on ``shortcut_x``, if given), or
        None where a residual or shortcut output would need broadcasting (then torch's add
        does it)."""
        from prunelab.inference.direct_conv import direct_conv2d

        out_shape = self._out_shape(x)
        extra = None
        if shortcut_x is not None:
            s = self.shortcut
            if s._out_shape(shortcut_x) != out_shape:
                return None
            extra = (shortcut_x.detach().numpy(), self._packed_shortcut, s.kernel_size,
                     s.padding, s.stride)
        if residual is not None and tuple(residual.shape) != out_shape:
            return None
        return torch.from_numpy(direct_conv2d(
            x.detach().numpy(), self._packed, self.out_channels, self.kernel_size, self.padding,
            self.relu, None if residual is None else residual.detach().float().numpy(),
            self.stride, extra))

    def _epilogue(self, y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        # in place on y, the conv's fresh output
        if residual is not None:
            y = y.add_(residual) if residual.shape == y.shape else y + residual  # broadcasting
        return y.relu_() if self.relu else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, relu={self.relu}, "
                f"residual={self.residual}, backend={self.backend}")


_RELU_FUNCTIONS = {F.relu, torch.relu}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return len(node.args) == 1
    return isinstance(_module(gm, node), nn.ReLU)


def _other_addend(node: fx.Node, value: fx.Node) -> fx.Node | None:
    """The other tensor of ``value + other`` (either order), if ``node`` is such an add."""
    if node.kwargs or len(node.args) != 2:
        return None  # torch.add(a, b, alpha=...) and the like stay
    if not ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("add", "add_"))):
        return None
    a, b = node.args
    other = b if a is value else a if b is value else None
    return other if isinstance(other, fx.Node) and other is not value else None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _fuse_graph(gm: fx.GraphModule, prefix: str) -> list[str]:
    """Fuse the convs of ``gm`` in place; the qualified names of the fused modules. A module
    called from more than one place (shared weights) is left alone: fusing one call would
    change the others."""
    fused = []
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    for node in list(gm.graph.nodes):
        conv = _module(gm, node)
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(
                conv.padding, str) or len(node.args) != 1 or node.kwargs or calls[
                    node.target] != 1:
            continue
        chain, bn = [node], None
        user = _only_user(node)
        if user is not None and isinstance(_module(gm, user), nn.BatchNorm2d) and calls[
                user.target] == 1:
            module = _module(gm, user)
            if not module.training and module.running_mean is not None:
                chain.append(user)
                bn = module
        residual, relu = None, False
        user = _only_user(chain[-1])
        if user is not None and _is_relu(gm, user):
            chain.append(user)
            relu = True
        elif user is not None and (other := _other_addend(user, chain[-1])) is not None:
            chain.append(user)
            residual = other
            after = _only_user(user)
            if after is not None and _is_relu(gm, after):
                chain.append(after)
                relu = True
        if len(chain) == 1:
            continue
        name = node.target  # the fused module takes the conv's place
        gm.add_submodule(name, FusedConv2d(conv, bn, relu, residual is not None))
        with gm.graph.inserting_after(chain[-1]):
            new = gm.graph.call_module(name, (node.args[0],) + (
                (residual,) if residual is not None else ()))
        chain[-1].replace_all_uses_with(new)
        for dead in reversed(chain):  # each has no users once the one after it is gone
            gm.graph.erase_node(dead)
        fused.append(f"{prefix}{name}")
    for node in list(gm.graph.nodes):  # projection shortcuts into the convs they feed
        owner = _module(gm, node)
        if not isinstance(owner, FusedConv2d) or not owner.residual or owner.shortcut or len(
                node.args) != 2:
            continue
        source = node.args[1]
        shortcut = _module(gm, source) if isinstance(source, fx.Node) else None
        if (isinstance(shortcut, FusedConv2d) and not (shortcut.relu or shortcut.residual)
                and len(source.args) == 1 and _only_user(source) is node
                and calls[source.target] == 1):
            owner.absorb(shortcut)
            node.args = (node.args[0], source.args[0])
            gm.graph.erase_node(source)
            if f"{prefix}{source.target}" in fused:  # not if it was fused before this call
                fused.remove(f"{prefix}{source.target}")
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return fused


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__(autowrap_functions=(as_images,))


def _fuse_module(module: nn.Module, prefix: str) -> tuple[nn.Module, list[str]]:
    if not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return module, []
    try:
        graph = _Tracer().trace(module)
    except Exception:  # noqa: BLE001 - not traceable: try its children instead
        names = []
        for child_name, child in list(module.named_children()):
            new, fused = _fuse_module(child, f"{prefix}{child_name}.")
            if new is not child:
                setattr(module, child_name, new)
            names += fused
        return module, names
    gm = fx.GraphModule(module, graph, class_name=type(module).__name__)
    fused = _fuse_graph(gm, prefix)
    return (gm, fused) if fused else (module, [])


@torch.no_grad()
def fuse_convs(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """(a copy of ``model`` in eval mode with its convs fused with the BatchNorm, ReLU and
    residual add that follow them, the qualified names of the ``FusedConv2d`` modules, all on
    the "torch" backend); ``model`` is unchanged. Parts that cannot be traced stay as they
    are."""
    net = copy.deepcopy(model).eval()
    return _fuse_module(net, "")
