"""The dense direct convolution (``inference.direct_conv``) against torch's conv, and its use
inside a model (``FusedConv2d`` on its direct backend, ``auto_sparsify``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.inference.direct_conv import direct_conv2d, pack_direct
from prunelab.inference.fuse import FusedConv2d
from prunelab.inference.sparse import DIRECT, auto_sparsify, kernel_variants, sparsify
from prunelab.inference.structural import TOLERANCE, max_difference
from prunelab.pruning import PruneContext, apply_weights, prune

from .test_structural import _inputs, _zoo

pytestmark = pytest.mark.usefixtures("one_thread")

# (in, out, kernel, padding, height, width[, stride]): output channels below, at and across
# blocks of 8 (1, 5, 8, 9, 17), planes of fewer positions than a vector, of one vector exactly,
# of an odd number of vectors and of many, rows of 1 to 40 columns, square and oblong kernels,
# rows padded less than, as much as and more than the kernel reaches; strides of 2 (the
# ResNet's downsampling convs and 1 x 1 shortcuts) on even and odd sizes, 3, and different
# strides down and across
CASES = [
    (3, 5, 3, 1, 9, 7), (16, 8, 3, 1, 28, 28), (8, 16, 3, 1, 14, 14), (2, 1, 1, 0, 4, 4),
    (4, 9, 5, 2, 6, 17), (5, 17, (1, 3), (0, 1), 3, 32), (3, 8, (3, 1), (1, 0), 5, 1),
    (2, 3, 3, (0, 1), 5, 40), (2, 4, 3, (3, 1), 4, 4), (1, 16, 3, 1, 28, 28),
    (32, 16, 3, 1, 7, 7), (7, 3, 3, 1, 2, 3),
    (16, 16, 3, 1, 28, 28, 2), (16, 32, 1, 0, 28, 28, 2), (5, 9, 3, 1, 7, 7, 2),
    (3, 4, 1, 0, 9, 11, 2), (4, 7, 5, 2, 11, 13, 3), (5, 7, 3, 1, 9, 8, (2, 1)),
    (5, 7, 3, (0, 1), 9, 9, (1, 2)), (2, 3, 3, 1, 2, 70, 2), (3, 2, 3, 1, 1, 1, 2),
]


def _reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, padding,
               stride=1) -> np.ndarray:
    with torch.no_grad():
        return F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                        None if b is None else torch.from_numpy(b).double(),
                        padding=padding, stride=stride).numpy()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("relu", [False, True])
def test_the_direct_conv_is_the_conv(case, relu: bool) -> None:
    c_in, c_out, k, pad, h, w, *stride = case
    k, pad = (k, k) if isinstance(k, int) else k, (pad, pad) if isinstance(pad, int) else pad
    stride = stride[0] if stride else 1
    stride = (stride, stride) if isinstance(stride, int) else stride
    gen = np.random.default_rng(c_in * 100 + c_out)
    x = gen.standard_normal((3, c_in, h, w)).astype(np.float32)
    weight = gen.standard_normal((c_out, c_in, *k)).astype(np.float32)
    bias = gen.standard_normal(c_out).astype(np.float32)
    ref = _reference(x, weight, bias, pad, stride)
    residual = gen.standard_normal(ref.shape).astype(np.float32) if relu else None
    y = direct_conv2d(x, pack_direct(weight, bias), c_out, k, pad, relu=relu,
                      residual=residual, stride=stride)
    if relu:
        ref = np.maximum(ref + residual, 0.0)
    assert y.shape == ref.shape and y.dtype == np.float32
    # float32 sums of at most 16 x 25 products against float64: a few ulps of their size
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


# (in, out, kernel, padding, height, width, stride, images): small planes run several images
# per work item as one flat output (7 x 7: 7 images, 14 x 14: 4, 5 x 4: 8), the last group
# short (10 images), a 7 x 7 output of a stride-2 conv, a plane too small to share (3 x 3)
@pytest.mark.parametrize("case", [
    (6, 9, 3, 1, 7, 7, 1, 10), (5, 16, 3, 1, 14, 14, 1, 6), (4, 8, 3, 1, 5, 4, 1, 10),
    (3, 5, 3, 1, 14, 14, 2, 9), (3, 5, 1, 0, 14, 13, 2, 10), (2, 3, 3, 1, 3, 3, 1, 5),
    (3, 4, 3, 1, 7, 7, 1, 1),
])
def test_several_images_share_a_flat_output(case) -> None:
    c_in, c_out, k, pad, h, w, stride, n = case
    gen = np.random.default_rng(n * 10 + h)
    x = gen.standard_normal((n, c_in, h, w)).astype(np.float32)
    weight = gen.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    bias = gen.standard_normal(c_out).astype(np.float32)
    ref = _reference(x, weight, bias, pad, stride)
    residual = gen.standard_normal(ref.shape).astype(np.float32)
    y = direct_conv2d(x, pack_direct(weight, bias), c_out, (k, k), (pad, pad), relu=True,
                      residual=residual, stride=(stride, stride))
    ref = np.maximum(ref + residual, 0.0)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    # and with a 1 x 1 stride-2 shortcut from a plane twice as large
    x2 = gen.standard_normal((n, 2, 2 * ref.shape[2], 2 * ref.shape[3])).astype(np.float32)
    w2 = gen.standard_normal((c_out, 2, 1, 1)).astype(np.float32)
    y = direct_conv2d(x, pack_direct(weight, bias), c_out, (k, k), (pad, pad), relu=False,
                      stride=(stride, stride),
                      shortcut=(x2, pack_direct(w2), (1, 1), (0, 0), (2, 2)))
    np.testing.assert_allclose(y, _reference(x, weight, bias, pad, stride)
                               + _reference(x2, w2, None, 0, 2), rtol=0,
                               atol=2e-5 * np.abs(ref).max())


def test_images_per_item_fill_the_vector_pairs() -> None:
    from prunelab.inference.direct_conv import _images_per_item

    assert _images_per_item(28 * 28, 256) == 1  # 784 of 800 lanes alone
    assert _images_per_item(14 * 14, 256) == 4  # 784 of 800 lanes, not 196 of 224
    assert _images_per_item(7 * 7, 256) == 7  # 343 of 352, not 49 of 64
    assert _images_per_item(7 * 7, 3) == 3  # no more than the batch: 147 of 160
    assert _images_per_item(3 * 3, 256) == 1  # a plane smaller than a vector


def test_inputs_it_cannot_take_are_refused() -> None:
    packed = pack_direct(np.ones((4, 3, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="expected 3 input channels, got 2"):
        direct_conv2d(np.ones((1, 2, 5, 5), dtype=np.float32), packed, 4, (3, 3), (1, 1))
    with pytest.raises(ValueError, match=r"kernel width - 1 across .* padding \(1, 0\), stride "
                                         r"\(1, 1\), input 5 x 9"):
        direct_conv2d(np.ones((1, 3, 5, 9), dtype=np.float32), packed, 4, (3, 3), (1, 0))
    with pytest.raises(ValueError, match=r"strides >= 1.* stride \(0, 1\)"):
        direct_conv2d(np.ones((1, 3, 5, 9), dtype=np.float32), packed, 4, (3, 3), (1, 1),
                      stride=(0, 1))
    with pytest.raises(ValueError, match=r"kernel \(5, 5\) does not match the packed weights"):
        direct_conv2d(np.ones((1, 3, 5, 9), dtype=np.float32), packed, 4, (5, 5), (2, 2))
    with pytest.raises(ValueError, match="9 output channels do not match"):
        direct_conv2d(np.ones((1, 3, 5, 9), dtype=np.float32), packed, 9, (3, 3), (1, 1))
    with pytest.raises(ValueError, match="at least one output row"):
        direct_conv2d(np.ones((1, 3, 1, 9), dtype=np.float32), packed, 4, (3, 3), (0, 1))
    # a non-contiguous view is read correctly
    x = np.ones((1, 3, 6, 10), dtype=np.float32)[:, :, :, ::2]
    y = direct_conv2d(x, packed, 4, (3, 3), (1, 1))
    np.testing.assert_allclose(y, _reference(np.ascontiguousarray(x), np.ones((4, 3, 3, 3),
                                                                          np.float32), None,
                                             (1, 1)), rtol=1e-6)


# (main conv: in, kernel, padding, height, width, stride; shortcut: in, kernel, padding,
# height, width, stride): a ResNet's downsampling block (3 x 3 over the block's 14 x 14 middle,
# 1 x 1 stride 2 over its 28 x 28 input) on even and odd sizes; a 3 x 3 shortcut; two strided
@pytest.mark.parametrize("case", [
    ((16, 3, 1, 14, 14, 1), (16, 1, 0, 28, 28, 2)), ((5, 3, 1, 4, 5, 1), (3, 1, 0, 7, 9, 2)),
    ((4, 3, 1, 6, 6, 1), (2, 3, 1, 6, 6, 1)), ((3, 3, 1, 9, 9, 2), (2, 1, 0, 9, 9, 2)),
])
@pytest.mark.parametrize("out", [8, 13])
def test_a_shortcut_conv_adds_into_the_same_accumulators(case, out: int) -> None:
    (c1, k1, p1, h1, w1, s1), (c2, k2, p2, h2, w2, s2) = case
    gen = np.random.default_rng(c1 + 10 * c2 + out)
    x, x2 = (gen.standard_normal((2, c, h, w)).astype(np.float32)
             for c, h, w in ((c1, h1, w1), (c2, h2, w2)))
    w_main = gen.standard_normal((out, c1, k1, k1)).astype(np.float32)
    w_short = gen.standard_normal((out, c2, k2, k2)).astype(np.float32)
    b_main, b_short = gen.standard_normal((2, out)).astype(np.float32)
    y = direct_conv2d(x, pack_direct(w_main, b_main), out, (k1, k1), (p1, p1), relu=True,
                      stride=(s1, s1), shortcut=(x2, pack_direct(w_short, b_short), (k2, k2),
                                                 (p2, p2), (s2, s2)))
    ref = np.maximum(_reference(x, w_main, b_main, p1, s1)
                     + _reference(x2, w_short, b_short, p2, s2), 0.0)
    np.testing.assert_allclose(y, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_a_shortcut_that_does_not_match_is_refused() -> None:
    packed = pack_direct(np.ones((4, 3, 3, 3), dtype=np.float32))
    x = np.ones((2, 3, 6, 6), dtype=np.float32)
    one = pack_direct(np.ones((4, 2, 1, 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shortcut: its output is not 6 x 6, the conv's"):
        direct_conv2d(x, packed, 4, (3, 3), (1, 1),
                      shortcut=(np.ones((2, 2, 12, 12), np.float32), one, (1, 1), (0, 0), (1, 1)))
    with pytest.raises(ValueError, match="shortcut: expected 2 input channels, got 3"):
        direct_conv2d(x, packed, 4, (3, 3), (1, 1), shortcut=(x, one, (1, 1), (0, 0), (1, 1)))
    with pytest.raises(ValueError, match="shortcut: 1 images and weights"):
        direct_conv2d(x, packed, 4, (3, 3), (1, 1),
                      shortcut=(x[:1, :2], one, (1, 1), (0, 0), (1, 1)))
    with pytest.raises(ValueError, match="a residual or a shortcut, not both"):
        direct_conv2d(x, packed, 4, (3, 3), (1, 1), residual=np.ones((2, 4, 6, 6), np.float32),
                      shortcut=(x[:, :2], one, (1, 1), (0, 0), (1, 1)))


def test_the_fused_module_runs_the_conv_and_falls_back_where_the_kernel_cannot() -> None:
    conv = nn.Conv2d(6, 10, 3, padding=(0, 1))
    fast = FusedConv2d(conv).set_backend(DIRECT)
    with torch.no_grad():
        for height in (2, 3, 12):  # no output row at 2: torch's conv says so
            x = torch.randn(2, 6, height, 9)
            if height == 2:
                with pytest.raises(RuntimeError):
                    fast(x)
                continue
            torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="expected 6 input channels, got 5"):
            fast(torch.randn(2, 5, 5, 5))
    with pytest.raises(ValueError, match=r"needs dilation 1, groups 1 and a padding across of "
                                         r"\(kernel width - 1\) / 2; got stride \(2, 2\)"):
        FusedConv2d(nn.Conv2d(6, 10, 3, stride=2)).set_backend(DIRECT)  # padding 0
    with pytest.raises(ValueError, match="dilation 1"):
        FusedConv2d(nn.Conv2d(6, 10, 3, padding=1, dilation=2)).set_backend(DIRECT)
    strided = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    with torch.no_grad():
        x = torch.randn(2, 6, 9, 12)
        torch.testing.assert_close(FusedConv2d(strided).set_backend(DIRECT)(x), strided(x),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="runs convs, not a Linear"):
        sparsify(nn.Sequential(nn.Linear(3, 3)), {"0": DIRECT})


def test_a_resnet_with_direct_convs_gives_the_masked_outputs() -> None:
    x = _inputs(24, 33)
    net = _zoo("resnet", x)
    masked = apply_weights(net, prune(net, "unit", 0.5, context=PruneContext(example=x[:4])))
    convs = [n for n, m in masked.named_modules() if isinstance(m, nn.Conv2d)]
    fast = sparsify(masked, dict.fromkeys(convs, DIRECT))
    assert sum(isinstance(m, FusedConv2d) and m.backend == DIRECT
               for m in fast.modules()) == len(convs) > 0
    with torch.no_grad():
        assert max_difference(fast(x), masked(x)) <= TOLERANCE
    # every network auto weighs gives the masked outputs; the last is the model as given
    variants, planned_on = kernel_variants(masked, x[:4], batch=32, repeats=2)
    assert len(planned_on) == 32
    labels = [label for label, _, _ in variants]
    assert labels[-1] == "as given" and "fused, all on torch" in labels
    assert len(set(labels)) == len(labels)  # each distinct network once
    assert "as planned" in labels or "every offered kernel" in labels  # direct convs offered
    assert not any(isinstance(m, FusedConv2d) for m in variants[-1][2].modules())
    with torch.no_grad():
        for _, _, variant in variants:
            assert max_difference(variant(x), masked(x)) <= TOLERANCE
    # auto: whatever it picks per layer, the outputs stay the masked model's
    auto, plan = auto_sparsify(masked, x[:4], batch=32, repeats=3)
    assert set(plan.values()) <= {"csr-numba", DIRECT}
    assert any(isinstance(m, FusedConv2d) for m in auto.modules())
    with torch.no_grad():
        assert max_difference(auto(x), masked(x)) <= TOLERANCE
