"""Sparse execution inside any model: sparse twins of Linear and Conv2d layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunelab.inference.sparse import SparseConv2d, SparseLinear, auto_sparsify, sparsify
from prunelab.inference.structural import TOLERANCE, max_difference
from prunelab.pruning import apply_weights, prune

from .test_structural import _inputs, _zoo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("backend", ["csr-numba", "csr-torch"])
@pytest.mark.parametrize("conv", [nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 4, (3, 2),
                                  stride=2, padding=(1, 0), dilation=(1, 2), bias=False)])
def test_a_sparse_conv_is_the_conv(backend: str, conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) > 0.8)
    x = torch.randn(6, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d(conv, backend)(x), conv(x), rtol=1e-5,
                                   atol=1e-5)


# (in, out, kernel, stride, padding, dilation, groups, height, width): "same" convs (one flat
# update per tap), strided ones whose phases are as wide as the output (ResNet downsampling,
# 1x1 shortcuts), and the general row-by-row case (odd strides, asymmetric padding)
DIRECT_CASES = [
    (3, 4, 3, 1, 1, 1, 1, 9, 7), (4, 4, 5, 1, 2, 1, 1, 6, 6), (4, 4, 3, 1, 2, 2, 1, 7, 9),
    (4, 6, 3, 2, 1, 1, 1, 10, 9), (4, 6, 3, 2, 1, 1, 1, 7, 7), (4, 6, 1, 2, 0, 1, 1, 8, 8),
    (4, 8, 5, 1, 2, 1, 2, 11, 6), (6, 6, 3, 1, 2, 2, 3, 7, 7), (2, 3, 3, 3, 0, 1, 1, 12, 13),
    (2, 3, (3, 1), (2, 1), (0, 1), 1, 1, 6, 5), (2, 3, 3, 1, (1, 0), 1, 1, 5, 5),
    (2, 2, 3, 1, 4, 1, 1, 3, 3),  # padding wider than the image: taps that read nothing
]


@pytest.mark.parametrize("case", DIRECT_CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_the_direct_sparse_conv_is_the_conv(case, batch: int) -> None:
    c_in, c_out, k, stride, padding, dilation, groups, h, w = case
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, dilation, groups)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) > 0.5)
    x = torch.randn(batch, c_in, h, w)
    with torch.no_grad():
        torch.testing.assert_close(SparseConv2d(conv, "csr-numba")(x), conv(x), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("backend", ["csr-numba", "csr-torch"])
@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 8, 8)])
def test_a_sparse_conv_names_an_input_of_the_wrong_shape(backend: str, shape) -> None:
    conv = SparseConv2d(nn.Conv2d(3, 2, 3, padding=1), backend)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        conv(torch.randn(*shape))


def test_an_all_zero_sparse_conv_gives_its_bias() -> None:
    conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
    out = SparseConv2d(conv, "csr-numba")(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 2, 4, 4)
    torch.testing.assert_close(out, conv.bias.detach()[None, :, None, None].expand(2, 2, 4, 4))


@pytest.mark.parametrize("backend", ["csr-numba", "csr-torch"])
@pytest.mark.parametrize("shape", [(7, 12), (1, 12), (4, 5, 12)])  # tokens: any leading dims
def test_a_sparse_linear_is_the_linear(backend: str, shape: tuple[int, ...]) -> None:
    linear = nn.Linear(12, 6)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(linear.weight.shape) > 0.7)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(SparseLinear(linear, backend)(x), linear(x), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("family", ["lenet5", "resnet", "vit"])
def test_every_layer_of_a_zoo_model_sparse_gives_the_masked_outputs(family: str) -> None:
    x = _inputs(40, 30)
    net = _zoo(family, x)
    masked = apply_weights(net, prune(net, "weight", 0.9))
    layers = [n for n, m in masked.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    fast = sparsify(masked, dict.fromkeys(layers, "csr-numba"))
    with torch.no_grad():
        assert max_difference(fast(x), masked(x)) <= TOLERANCE
    assert not any(isinstance(m, nn.Linear | nn.Conv2d) for m in fast.modules())


def test_auto_keeps_dense_layers_dense_and_the_outputs() -> None:
    x = _inputs(16, 31)
    net = _zoo("vit", x)
    masked = apply_weights(net, prune(net, "weight", 0.95, layers=["blocks.0.mlp.fc1"]))
    fast, plan = auto_sparsify(masked, x[:4], batch=64, repeats=3)
    assert set(plan) <= {"blocks.0.mlp.fc1"}  # the only layer with zeros to skip
    with torch.no_grad():
        assert max_difference(fast(x), masked(x)) <= TOLERANCE
    with pytest.raises(ValueError, match="unknown sparse backend 'dense'"):
        sparsify(masked, {"head": "dense"})
    with pytest.raises(ValueError, match="no layer 'nowhere'"):
        sparsify(masked, {"nowhere": "csr-numba"})
