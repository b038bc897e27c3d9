"""A dense direct convolution for convs with few channels on small images, in numba.

AVX-512 convolution kernels (oneDNN's in torch, ONNX Runtime's blocked NCHWc layout) work on
blocks of 16 channels: a conv writing 8 channels costs as much as one writing 16, so halving a
ResNet's 16-channel block convs does not halve their time (issue 12). This kernel blocks the
output channels by 8 and vectorises along the *flattened output plane* instead: 32 output
positions (two 16-lane vectors) of 8 output channels are 16 accumulators held in registers.
For a conv that keeps the width (stride 1, padding (k - 1) / 2 across), each tap (input
channel, kernel row, kernel column) reads the input plane at one constant shift of those
positions, so a tap is two masked vector loads (lanes whose tap falls outside the image read
zero and touch no memory: the zero padding, with no padded copy) and 16 multiply-adds with 8
broadcast weights. The epilogue (bias, i.e. folded BatchNorm; a residual add; ReLU) is applied
to the accumulators before they are stored. The cost scales with ceil(out / 8) x in channels
and with the plane's positions, whatever its width: 28 x 28, 14 x 14 and 7 x 7 planes fill
98 %, 94 % and 77 % of the lanes.

A strided conv (a ResNet's downsampling 3 x 3 and 1 x 1 shortcut convs, stride 2) reads every
other row and column, which vector loads cannot pick out. Each image is first split into its
stride x stride sub-images (phases: rows and columns of one parity), each as wide as the
output, in a per-thread buffer that stays in cache; every tap then reads one phase at one
shift, as at stride 1. A stride-2 row is split 32 floats at a time (two masked loads and two
shuffles), and only the phases some tap reads (one for a 1 x 1 conv). Measured at batch 256,
2 threads (``benchmarks/compaction.py``'s ResNet): the 16 -> 32-channel 1 x 1 shortcut 0.67
against torch's 1.43 ms, the 3 x 3 16 -> 16 stride-2 conv 1.46 against 1.61 ms; the 32 -> 64
conv on a 7 x 7 output (77 % of the lanes) stays faster on torch, 2.03 against 2.58 ms.

A second conv can add into the same accumulators (``shortcut``: a ResNet's projection
shortcut, which then writes no output of its own for the block's last conv to read back).

It covers dilation 1, groups 1, numeric zero padding of (kernel width - 1) / 2 across, and any
strides (``direct_supported``). ``prunelab.inference.sparse.auto_sparsify`` times it against
torch's conv per layer (``inference.fuse.FusedConv2d``) and uses it only where it measurably
wins.

>>> import torch
>>> conv = torch.nn.Conv2d(3, 5, 3, padding=1)
>>> x = torch.randn(2, 3, 6, 6)
>>> y = direct_conv2d(x.numpy(), pack_direct(conv.weight.detach().numpy(),
...                   conv.bias.detach().numpy()), 5, (3, 3), (1, 1))
>>> bool(torch.allclose(torch.from_numpy(y), conv(x), atol=1e-5))
True
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from prunelab.inference.kernels import BLOCK, _splat, _stack_floats, _vector_at, _wide_vectors

__all__ = ["OUT_BLOCK", "direct_conv2d", "direct_supported", "pack_direct"]

OUT_BLOCK = 8
"""Output channels per register block (8 x 2 vectors = 16 accumulators of 32)."""
PAIR = 2 * BLOCK
"""Output positions per register block."""


def direct_supported(kernel_size: tuple[int, int], padding: tuple[int, int],
                     stride: tuple[int, int], dilation: tuple[int, int], groups: int) -> bool:
    """Whether ``direct_conv2d`` runs a conv of this shape: dilation 1, groups 1, and a padding
    across with 2 x padding = kernel width - 1 (the output is then ceil(width / stride) wide,
    as wide as each strided sub-image of the input), any strides."""
    return (min(stride) >= 1 and tuple(dilation) == (1, 1) and groups == 1
            and 2 * padding[1] == kernel_size[1] - 1 and padding[0] >= 0)


def pack_direct(weight: np.ndarray, bias: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(weights (blocks, in, kh, kw, OUT_BLOCK), bias (blocks * OUT_BLOCK,)) float32 for
    ``direct_conv2d``: output channels in blocks of ``OUT_BLOCK``, the last padded with zeros."""
    weight = np.asarray(weight, dtype=np.float32)
    out_ch, in_ch, kh, kw = weight.shape
    blocks = -(-out_ch // OUT_BLOCK)
    padded = np.zeros((blocks * OUT_BLOCK, in_ch, kh, kw), dtype=np.float32)
    padded[:out_ch] = weight
    packed = padded.reshape(blocks, OUT_BLOCK, in_ch, kh, kw).transpose(0, 2, 3, 4, 1)
    b = np.zeros(blocks * OUT_BLOCK, dtype=np.float32)
    if bias is not None:
        b[:out_ch] = np.asarray(bias, dtype=np.float32)
    return np.ascontiguousarray(packed), b


def _pointer(context, builder, aryty, ary, offset):
    return builder.gep(context.make_array(aryty)(context, builder, ary).data, [offset])


def _lane_mask(builder, bits):
    # An int64 whose low 16 bits say which lanes take part -> <16 x i1>
    return builder.bitcast(builder.trunc(bits, ir.IntType(BLOCK)),
                           ir.VectorType(ir.IntType(1), BLOCK))


def _masked(builder, name, args):
    vec = ir.VectorType(ir.FloatType(), BLOCK)
    mask = ir.VectorType(ir.IntType(1), BLOCK)
    if name == "load":
        fnty = ir.FunctionType(vec, [vec.as_pointer(), ir.IntType(32), mask, vec])
        fn = cgutils.get_or_insert_function(builder.module, fnty,
                                            "llvm.masked.load.v16f32.p0v16f32")
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), ir.IntType(32), mask])
        fn = cgutils.get_or_insert_function(builder.module, fnty,
                                            "llvm.masked.store.v16f32.p0v16f32")
    return builder.call(fn, args)


@intrinsic
def _tap(typingctx, acc, weights, w_at, x, x_at, mask0, mask1,
         vectors):  # pragma: no cover - compiled
    """``acc[o, v] += weights[w_at + o] * x[x_at + 16 v + lane]`` for o < OUT_BLOCK, ``vectors``
    (a literal; ``_conv_items`` uses 2) 16-lane vectors and the lanes set in ``mask0`` /
    ``mask1`` (the others read 0 and touch no memory: a tap shifted past the image border is
    zero padding)."""
    if not isinstance(vectors, types.IntegerLiteral):
        return None
    nv = vectors.literal_value

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), BLOCK)
        wp = _pointer(context, builder, sig.args[1], args[1], args[2])
        xp = _pointer(context, builder, sig.args[3], args[3], args[4])
        zero = ir.Constant(vec, [0.0] * BLOCK)
        xs = [_masked(builder, "load", [_vector_at(builder, xp, k), ir.Constant(ir.IntType(32), 4),
                                        _lane_mask(builder, args[5 + k]), zero])
              for k in range(nv)]
        for o in range(OUT_BLOCK):
            s = _splat(builder, builder.load(builder.gep(wp, [ir.Constant(ir.IntType(64), o)])))
            for k in range(nv):
                p = _vector_at(builder, args[0], o * nv + k)
                a = builder.load(p, align=4)
                builder.store(builder.fadd(a, builder.fmul(s, xs[k], flags=["fast"]),
                                           flags=["fast"]), p, align=4)
        return context.get_dummy_value()

    return types.void(acc, weights, w_at, x, x_at, mask0, mask1, vectors), codegen


@intrinsic
def _fill(typingctx, acc, bias, at, vectors):  # pragma: no cover - compiled
    """``acc[o, :] = bias[at + o]`` for o < OUT_BLOCK."""
    if not isinstance(vectors, types.IntegerLiteral):
        return None
    nv = vectors.literal_value

    def codegen(context, builder, sig, args):
        bp = _pointer(context, builder, sig.args[1], args[1], args[2])
        for o in range(OUT_BLOCK):
            s = _splat(builder, builder.load(builder.gep(bp, [ir.Constant(ir.IntType(64), o)])))
            for k in range(nv):
                builder.store(s, _vector_at(builder, args[0], o * nv + k), align=4)
        return context.get_dummy_value()

    return types.void(acc, bias, at, vectors), codegen


@intrinsic
def _store(typingctx, acc, out, at, stride, count, mask0, mask1, relu, res, add,
           vectors):  # pragma: no cover - compiled
    """Accumulator row o (o < ``count``) to ``out[at + o * stride + lane]`` for the lanes set in
    ``mask0`` / ``mask1`` (the output row's columns); with ``add``, plus ``res`` at the same
    place (a residual); then with ``relu`` max(0, .)."""
    if not isinstance(vectors, types.IntegerLiteral):
        return None
    nv = vectors.literal_value

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), BLOCK)
        zero = ir.Constant(vec, [0.0] * BLOCK)
        four = ir.Constant(ir.IntType(32), 4)
        base = _pointer(context, builder, sig.args[1], args[1], args[2])
        rbase = _pointer(context, builder, sig.args[8], args[8], args[2])
        masks = [_lane_mask(builder, args[5 + k]) for k in range(nv)]
        for o in range(OUT_BLOCK):
            live = builder.icmp_signed("<", ir.Constant(ir.IntType(64), o), args[4])
            with builder.if_then(live):
                step = builder.mul(args[3], ir.Constant(ir.IntType(64), o))
                row, rrow = builder.gep(base, [step]), builder.gep(rbase, [step])
                for k in range(nv):
                    a = builder.load(_vector_at(builder, args[0], o * nv + k), align=4)
                    r = _masked(builder, "load", [_vector_at(builder, rrow, k), four, masks[k],
                                                  zero])
                    a = builder.select(args[9], builder.fadd(a, r, flags=["fast"]), a)
                    cut = builder.select(builder.fcmp_ordered("<", a, zero), zero, a)
                    _masked(builder, "store", [builder.select(args[7], cut, a),
                                               _vector_at(builder, row, k), four, masks[k]])
        return context.get_dummy_value()

    return types.void(acc, out, at, types.int64, types.int64, mask0, mask1, relu, res, add,
                      vectors), codegen


@intrinsic
def _unzip(typingctx, x, x_at, count, even, odd, out, at0, at1):  # pragma: no cover
    """With ``even``, ``out[at0 + j] = x[x_at + 2 j]``, and with ``odd``, ``out[at1 + j] =
    x[x_at + 2 j + 1]``, for the ``count`` (<= 32) floats from ``x_at``: two masked loads,
    two shuffles, two masked stores."""
    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), BLOCK)
        i64 = ir.IntType(64)
        four, zero = ir.Constant(ir.IntType(32), 4), ir.Constant(vec, [0.0] * BLOCK)
        xp = _pointer(context, builder, sig.args[0], args[0], args[1])
        count = args[2]

        def first(n):  # lanes 0..n-1 of a 16-lane mask, n clamped to 0..16
            n = builder.select(builder.icmp_signed("<", n, ir.Constant(i64, 0)),
                               ir.Constant(i64, 0), n)
            n = builder.select(builder.icmp_signed(">", n, ir.Constant(i64, BLOCK)),
                               ir.Constant(i64, BLOCK), n)
            return _lane_mask(builder, builder.sub(builder.shl(ir.Constant(i64, 1), n),
                                                   ir.Constant(i64, 1)))

        loads = [_masked(builder, "load", [_vector_at(builder, xp, k), four,
                                           first(builder.sub(count, ir.Constant(i64, 16 * k))),
                                           zero]) for k in range(2)]
        ones, none = ir.Constant(i64, 1), ir.Constant(i64, 0)
        for phase, (arg, n) in enumerate(
                [(args[6], builder.select(args[3], builder.ashr(builder.add(count, ones), ones),
                                          none)),
                 (args[7], builder.select(args[4], builder.ashr(count, ones), none))]):
            picked = builder.shuffle_vector(
                loads[0], loads[1],
                ir.Constant(ir.VectorType(ir.IntType(32), BLOCK),
                            [2 * j + phase for j in range(BLOCK)]))
            _masked(builder, "store", [picked, _vector_at(
                builder, _pointer(context, builder, sig.args[5], args[5], arg), 0), four,
                first(n)])
        return context.get_dummy_value()

    return types.void(x, types.int64, types.int64, types.boolean, types.boolean, out,
                      types.int64, types.int64), codegen


@numba.njit(cache=True, fastmath=True, nogil=True)
def _tap_masks(h, w, oh, ow, pad_h, pad_w, kh, kw, sy, sx, vectors):  # pragma: no cover
    # masks[v, ky, kx]: the lanes of flat output vector v whose tap (ky, kx) reads inside the
    # image; masks[v, kh, 0]: the lanes that are output positions.
    masks = np.zeros((vectors, kh + 1, max(kw, 1)), dtype=np.int64)
    for v in range(vectors):
        for i in range(BLOCK):
            p = v * BLOCK + i
            if p >= oh * ow:
                continue
            y, xo = p // ow, p % ow
            masks[v, kh, 0] |= 1 << i
            for ky in range(kh):
                iy = sy * y + ky - pad_h
                if iy < 0 or iy >= h:
                    continue
                for kx in range(kw):
                    ix = sx * xo + kx - pad_w
                    if 0 <= ix < w:
                        masks[v, ky, kx] |= 1 << i
    return masks


@numba.njit(cache=True, fastmath=True, nogil=True)
def _split_phases(x, img, sy, sx, rows, cols, needed, phases):  # pragma: no cover
    # phases[((c * sy + py) * sx + px) * rows * cols + i * cols + j] = x[img, c, sy i + py,
    # sx j + px]: image ``img`` as sy x sx strided sub-images, each rows x cols, for the
    # phases some tap reads (``needed[py, px]``; other phases and cells past the image are left
    # as they are: no tap reads them). Stride 2 across (the common case) is vectorised: 32
    # floats of a row at a time, unzipped into the two column phases.
    channels, h, w = x.shape[1], x.shape[2], x.shape[3]
    plane = rows * cols
    flat = x.reshape(x.size)
    for c in range(channels):
        for py in range(sy):
            if not needed[py].any():
                continue
            for i in range(rows):
                r = sy * i + py
                if r >= h:
                    break
                src = ((img * channels + c) * h + r) * w
                at = (c * sy + py) * sx * plane + i * cols
                if sx == 2:
                    for k in range(0, w, 2 * BLOCK):
                        n = min(2 * BLOCK, w - k)
                        _unzip(flat, src + k, n, needed[py, 0], needed[py, 1], phases,
                               at + k // 2, at + plane + k // 2)
                    continue
                for px in range(sx):
                    if not needed[py, px]:
                        continue
                    for j in range(min(cols, (w - px + sx - 1) // sx)):
                        phases[at + px * plane + j] = flat[src + sx * j + px]


@numba.njit(cache=True, fastmath=True, nogil=True)
def _geometry(x, kh, kw, pad_h, pad_w, sy, sx, ow, masks):  # pragma: no cover - compiled
    # (rows and plane size of a phase, the phases some tap reads, each tap's shift from the
    # plane's start) of a conv over ``x`` (N, C, H, W) with an output ``ow`` wide.
    rows = (x.shape[2] + sy - 1) // sy
    plane = rows * ow
    needed = np.zeros((sy, sx), dtype=np.bool_)
    shifts = np.empty((kh, kw), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            dy, dx = ky - pad_h, kx - pad_w
            shifts[ky, kx] = ((dy % sy) * sx + dx % sx) * plane + (dy // sy) * ow + dx // sx
            if masks[:, ky, kx].any():
                needed[dy % sy, dx % sx] = True
    return rows, plane, needed, shifts


@numba.njit(cache=True, fastmath=True, nogil=True)
def _add_taps(acc, flat_w, w_at, src, base, cstep, masks, shifts, v,
              channels):  # pragma: no cover - compiled
    # Every tap of one conv into the accumulators of flat output vectors v, v + 1: two masked
    # loads at the tap's shift of the input plane (or phase) per input channel.
    kh, kw = shifts.shape
    for ky in range(kh):
        for kx in range(kw):
            m0, m1 = masks[v, ky, kx], masks[v + 1, ky, kx]
            if m0 == 0 and m1 == 0:
                continue  # the whole tap falls in the padding
            at = base + v * BLOCK + shifts[ky, kx]
            for c in range(channels):
                _tap(acc, flat_w, w_at + ((c * kh + ky) * kw + kx) * OUT_BLOCK,
                     src, at + c * cstep, m0, m1, 2)


@numba.njit(cache=True, fastmath=True, nogil=True)
def _conv_items(x, weights, bias, pad_h, pad_w, sy, sx, masks, x2, weights2, pad2_h, pad2_w,
                sy2, sx2, masks2, two, relu, res, add, out, first,
                last):  # pragma: no cover - compiled
    # Work items first:last of (image, output block), in that order; one thread. For each
    # pair of flat output vectors, every tap is two masked loads at one shift of a plane as
    # wide as the output: the image itself at stride 1, else one of its strided sub-images
    # (phases), split once per image into a buffer that stays in cache. With ``two``, a
    # second conv (x2, weights2, ...: a shortcut) adds into the same accumulators.
    _wide_vectors()
    channels, channels2 = x.shape[1], x2.shape[1]
    n_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    blocks = weights.shape[0]
    rows, plane, needed, shifts = _geometry(x, weights.shape[2], weights.shape[3], pad_h,
                                            pad_w, sy, sx, ow, masks)
    rows2, plane2, needed2, shifts2 = _geometry(x2, weights2.shape[2], weights2.shape[3],
                                                pad2_h, pad2_w, sy2, sx2, ow, masks2)
    strided, strided2 = sy > 1 or sx > 1, two and (sy2 > 1 or sx2 > 1)
    phases = np.empty(channels * sy * sx * plane if strided else 1, dtype=np.float32)
    phases2 = np.empty(channels2 * sy2 * sx2 * plane2 if strided2 else 1, dtype=np.float32)
    src = phases if strided else x.reshape(x.size)
    src2 = phases2 if strided2 else x2.reshape(x2.size)
    flat_w, flat_w2 = weights.reshape(weights.size), weights2.reshape(weights2.size)
    flat_out, flat_res = out.reshape(out.size), res.reshape(res.size)
    acc = _stack_floats(256)  # OUT_BLOCK * PAIR floats, a literal
    per_block = channels * weights.shape[2] * weights.shape[3] * OUT_BLOCK
    per_block2 = channels2 * weights2.shape[2] * weights2.shape[3] * OUT_BLOCK
    split = -1
    for item in range(first, last):
        img, blk = item // blocks, item % blocks
        if img != split:
            if strided:
                _split_phases(x, img, sy, sx, rows, ow, needed, phases)
            if strided2:
                _split_phases(x2, img, sy2, sx2, rows2, ow, needed2, phases2)
            split = img
        base = 0 if strided else img * channels * plane
        base2 = 0 if strided2 else img * channels2 * plane2
        for v in range(0, masks.shape[0], 2):
            _fill(acc, bias, blk * OUT_BLOCK, 2)
            _add_taps(acc, flat_w, blk * per_block, src, base, sy * sx * plane, masks, shifts,
                      v, channels)
            if two:
                _add_taps(acc, flat_w2, blk * per_block2, src2, base2, sy2 * sx2 * plane2,
                          masks2, shifts2, v, channels2)
            _store(acc, flat_out, (img * n_out + blk * OUT_BLOCK) * oh * ow + v * BLOCK,
                   oh * ow, min(OUT_BLOCK, n_out - blk * OUT_BLOCK), masks[v, -1, 0],
                   masks[v + 1, -1, 0], relu, flat_res, add, 2)


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _direct_conv(x, weights, bias, pad_h, pad_w, sy, sx, masks, x2, weights2, pad2_h, pad2_w,
                 sy2, sx2, masks2, two, relu, res, add, out,
                 chunks):  # pragma: no cover - compiled
    # (image, output block) items in ``chunks`` contiguous ranges, one per thread.
    items = x.shape[0] * weights.shape[0]
    for t in numba.prange(chunks):
        _conv_items(x, weights, bias, pad_h, pad_w, sy, sx, masks, x2, weights2, pad2_h,
                    pad2_w, sy2, sx2, masks2, two, relu, res, add, out,
                    t * items // chunks, (t + 1) * items // chunks)


def _check_geometry(name: str, x: np.ndarray, weights: np.ndarray, kernel_size, padding,
                    stride) -> tuple[int, int]:
    """The output (rows, columns) of a conv of ``x`` with packed ``weights``, or a one-line
    ValueError."""
    n, channels, h, w = x.shape
    if channels != weights.shape[1]:
        raise ValueError(f"{name}expected {weights.shape[1]} input channels, got {channels}")
    (kh, kw), (sy, sx) = kernel_size, stride
    if not direct_supported(kernel_size, padding, stride, (1, 1), 1) or (
            h + 2 * padding[0] < kh):
        raise ValueError(f"{name}direct_conv2d needs strides >= 1, a padding with 2 x padding "
                         f"= kernel width - 1 across and at least one output row; got kernel "
                         f"{tuple(kernel_size)}, padding {tuple(padding)}, stride "
                         f"{tuple(stride)}, input {h} x {w}")
    if tuple(kernel_size) != weights.shape[2:4]:
        raise ValueError(f"{name}kernel {tuple(kernel_size)} does not match the packed weights "
                         f"{weights.shape}")
    return (h + 2 * padding[0] - kh) // sy + 1, (w + 2 * padding[1] - kw) // sx + 1


def direct_conv2d(x: np.ndarray, packed: tuple[np.ndarray, np.ndarray], out_channels: int,
                  kernel_size: tuple[int, int], padding: tuple[int, int],
                  relu: bool = False, residual: np.ndarray | None = None,
                  stride: tuple[int, int] = (1, 1), shortcut: tuple | None = None) -> np.ndarray:
    """A 2-D convolution of ``x`` (N, C, H, W) with the weight ``pack_direct`` made, plus its
    bias, plus ``residual`` (shaped as the output) if given, then ReLU with ``relu``:
    (N, out_channels, OH, ceil(W / stride)) float32, zero padding with 2 x padding = kernel
    width - 1 across (``direct_supported``).

    ``shortcut`` = (x2, packed2, kernel_size2, padding2, stride2): a second conv with as many
    output channels and the same output shape (a ResNet's projection shortcut), added into the
    same accumulators instead of ``residual``: its output is never written out and read back."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    weights, bias = packed
    if not 0 < out_channels <= weights.shape[0] * OUT_BLOCK < out_channels + OUT_BLOCK:
        # the compiled kernel does not check its indices: a mismatch would read past arrays
        raise ValueError(f"{out_channels} output channels do not match the packed weights "
                         f"{weights.shape}")
    oh, ow = _check_geometry("", x, weights, kernel_size, padding, stride)
    n = x.shape[0]
    out = np.empty((n, out_channels, oh, ow), dtype=np.float32)
    if residual is not None:
        if shortcut is not None:
            raise ValueError("give a residual or a shortcut, not both")
        residual = np.ascontiguousarray(residual, dtype=np.float32)
        if residual.shape != out.shape:
            raise ValueError(f"residual of shape {residual.shape} does not match the output's "
                             f"{out.shape}")
    vectors = -(-oh * ow // PAIR) * 2  # flat output vectors, in pairs
    kh, kw = kernel_size
    masks = _tap_masks(x.shape[2], x.shape[3], oh, ow, padding[0], padding[1], kh, kw,
                       stride[0], stride[1], vectors)
    x2, weights2, padding2, stride2, masks2 = x, weights, padding, stride, masks
    if shortcut is not None:
        x2, (weights2, bias2), kernel2, padding2, stride2 = shortcut
        x2 = np.ascontiguousarray(x2, dtype=np.float32)
        if x2.shape[0] != n or weights2.shape[0] != weights.shape[0]:
            raise ValueError(f"shortcut: {x2.shape[0]} images and weights {weights2.shape} "
                             f"do not match {n} images and weights {weights.shape}")
        if _check_geometry("shortcut: ", x2, weights2, kernel2, padding2, stride2) != (oh, ow):
            raise ValueError(f"shortcut: its output is not {oh} x {ow}, the conv's")
        bias = bias + bias2
        masks2 = _tap_masks(x2.shape[2], x2.shape[3], oh, ow, padding2[0], padding2[1],
                            *kernel2, stride2[0], stride2[1], vectors)
    chunks = max(1, min(numba.get_num_threads(), n * weights.shape[0]))
    _direct_conv(x, weights, bias, padding[0], padding[1], stride[0], stride[1], masks,
                 x2, weights2, padding2[0], padding2[1], stride2[0], stride2[1], masks2,
                 shortcut is not None, bool(relu), out if residual is None else residual,
                 residual is not None, out, chunks)
    return out
