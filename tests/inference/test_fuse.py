"""Fused convolutions (``inference.fuse``): BatchNorm folded, ReLU and residual adds in the
conv's epilogue, on torch, the direct kernel or the sparse one -- always the model's outputs."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.inference.fuse import FusedConv2d, direct_fits, fold_batchnorm, fuse_convs
from prunelab.inference.structural import TOLERANCE, max_difference
from prunelab.pruning.batchnorm import recalibrate_batchnorm

from .test_structural import _inputs, _zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_like(net: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():  # BatchNorm with nonzero shifts, gains and real statistics
        gen = torch.Generator().manual_seed(3)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.5, generator=gen)
    return recalibrate_batchnorm(net, x).eval()


class Block(nn.Module):
    """A user's residual block written three ways: ``out + x``, ``x + out`` and ``out += x``."""

    def __init__(self, c: int, order: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(c, affine=False)
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.order == "iadd":
            out += x
            return F.relu(out)
        return F.relu(out + x) if self.order == "right" else (x + out).relu()


class Net(nn.Module):
    """Untraceable at the top (control flow on a value), traceable inside."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Block(8, "right"), Block(8, "left"), Block(8, "iadd"))
        self.side = nn.Conv2d(8, 8, 1)  # read twice below: nothing to fuse it with
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x.reshape(-1, 1, 12, 12)))
        if float(h.mean()) > 1e9:  # data-dependent: torch.fx cannot trace this
            h = -h
        s = self.side(h)
        return self.head((s * s + s).mean(dim=(2, 3)))


def test_folding_batchnorm_is_the_conv_then_the_batchnorm() -> None:
    x = torch.randn(5, 3, 7, 7)
    for conv, bn in ((nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)),
                     (nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, affine=False))):
        bn = _trained_like(nn.Sequential(conv, bn), x)[1]
        w, b = fold_batchnorm(conv, bn)
        with torch.no_grad():
            torch.testing.assert_close(F.conv2d(x, w, b), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "direct"])
def test_a_users_residual_net_is_fused_where_it_can_be_and_gives_its_outputs(backend) -> None:
    x = _inputs(32, 5, features=144)
    net = _trained_like(Net(), x.reshape(-1, 1, 12, 12))
    fused, names = fuse_convs(net)
    # the top cannot be traced: its children are; the twice-read conv stays
    assert names == ["stem.0", "blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1",
                     "blocks.1.conv2", "blocks.2.conv1", "blocks.2.conv2"]
    assert isinstance(fused.side, nn.Conv2d) and type(fused) is Net
    convs = {n: m for n, m in fused.named_modules() if isinstance(m, FusedConv2d)}
    assert set(convs) == set(names)
    assert [(m.relu, m.residual) for m in convs.values()] == [(True, False)] + [
        (True, False), (True, True)] * 3
    assert not any(isinstance(m, nn.BatchNorm2d | nn.ReLU) for m in fused.modules())
    for m in convs.values():
        m.set_backend(backend)
    with torch.no_grad():
        assert max_difference(fused(x), net(x)) <= TOLERANCE
        assert max_difference(fused(x[:1]), net(x[:1])) <= TOLERANCE
    assert [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]  # unchanged


@pytest.mark.parametrize("family", ["lenet5", "resnet", "vit"])
def test_zoo_models_fuse_and_keep_their_outputs(family: str) -> None:
    x = _inputs(24, 7)
    net = _zoo(family, x)
    fused, names = fuse_convs(net)
    # every ResNet conv has a BatchNorm, and each projection shortcut goes into the conv whose
    # residual it is; the ViT's patch conv is followed by a reshape
    projections = [n for n, m in net.named_modules()
                   if isinstance(m, nn.Conv2d) and n.endswith("shortcut.0")]
    expected = {"lenet5": 2, "vit": 0, "resnet": sum(
        isinstance(m, nn.Conv2d) for m in net.modules()) - len(projections)}[family]
    assert len(names) == expected
    if family == "resnet":
        assert projections
        for name in projections:
            owner = fused.get_submodule(name.replace("shortcut.0", "conv2"))
            assert owner.residual and owner.shortcut.kernel_size == (1, 1)
    assert fuse_convs(fused)[1] == []  # a fused model has nothing left to fuse
    for m in fused.modules():
        if isinstance(m, FusedConv2d) and direct_fits(m, torch.zeros(1, 1, 28, 28)):
            m.set_backend("direct")
    with torch.no_grad():
        assert max_difference(fused(x), net(x)) <= TOLERANCE


class Down(nn.Module):
    """A downsampling block with a projection shortcut of the given kernel, stride 2."""

    def __init__(self, shortcut_kernel: int, shortcut_padding: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), nn.BatchNorm2d(5), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(5, 6, 3, 1, 1), nn.BatchNorm2d(6))
        self.shortcut = nn.Sequential(
            nn.Conv2d(3, 6, shortcut_kernel, 2, shortcut_padding, dilation), nn.BatchNorm2d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


# a 1 x 1 projection (the ResNet's), a 3 x 3 one, and one the direct kernel does not take
# (dilation 2: it then runs as its own module)
@pytest.mark.parametrize("kernel,padding,dilation", [(1, 0, 1), (3, 1, 1), (1, 0, 2)])
def test_a_projection_shortcut_is_absorbed_and_every_backend_pairing_gives_the_block(
        kernel: int, padding: int, dilation: int) -> None:
    x = torch.randn(4, 3, 11, 11)
    block = _trained_like(Down(kernel, padding, dilation), x)
    fused, names = fuse_convs(block)
    assert names == ["conv1.0", "conv2.0"]  # the shortcut went into conv2
    owner = fused.get_submodule("conv2.0")
    assert owner.shortcut is not None and owner.shortcut.kernel_size == (kernel, kernel)
    with torch.no_grad():
        reference = block(x)
        for backend in ("torch", "direct", "csr-numba"):
            for shortcut_backend in ("torch", "direct"):
                if shortcut_backend == "direct" and dilation == 2:
                    continue
                owner.shortcut.set_backend(shortcut_backend)
                owner.set_backend(backend)
                assert max_difference(fused(x), reference) <= TOLERANCE, (backend,
                                                                          shortcut_backend)
        assert (owner._packed_shortcut is None) == (dilation == 2)
    with pytest.raises(ValueError, match="a shortcut goes into a fused conv that adds"):
        fused.get_submodule("conv1.0").absorb(owner.shortcut)


def test_the_sparse_backend_runs_a_pruned_fused_conv_with_its_epilogue() -> None:
    conv = nn.Conv2d(6, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=torch.Generator()
                                    .manual_seed(0)) > 0.8)
    bn = _trained_like(nn.Sequential(conv, nn.BatchNorm2d(6)), torch.randn(8, 6, 9, 9))[1]
    x, res = torch.randn(4, 6, 9, 9), torch.randn(4, 6, 9, 9)
    reference = torch.relu(bn(conv(x)) + res)
    for backend in ("torch", "direct", "csr-numba"):
        fused = FusedConv2d(conv, bn, relu=True, residual=True).set_backend(backend)
        with torch.no_grad():
            torch.testing.assert_close(fused(x, res), reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown fused-conv backend 'cuda'"):
        FusedConv2d(conv).set_backend("cuda")
    with pytest.raises(ValueError, match="numeric zero padding"):
        FusedConv2d(nn.Conv2d(2, 2, 3, padding="same"))


@pytest.mark.parametrize("kind", ["alpha", "constant", "read twice"])
def test_adds_that_are_not_residuals_stay(kind: str) -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if kind == "alpha":  # the conv's only reader, but a scaled add
                return torch.add(y, x, alpha=2.0)
            if kind == "constant":  # the conv's only reader, but no tensor to add
                return operator.add(y, 1.0)
            return y + x + y  # a residual add, but the conv is read twice

    net = Odd().eval()
    fused, names = fuse_convs(net)
    assert names == [] and fused is not net
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x))


def test_a_conv_or_batchnorm_called_twice_is_not_fused() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.bn(self.conv(x)))  # conv and bn used again below
            b = self.bn(self.conv(a)) + self.bn(self.conv2(x))
            return torch.relu(b)

    x = torch.randn(4, 3, 6, 6)
    net = _trained_like(Shared(), x)
    fused, names = fuse_convs(net)
    assert names == []  # conv2's BatchNorm is shared, and a bare add is no epilogue without it
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x))
