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
and with the plane's positions, whatever its width: a 28 x 28 plane fills 784 of 800 lanes.
A 14 x 14 plane alone would fill 196 of 224 and a 7 x 7 one 49 of 64, so small planes run
several images per work item as one flat output (``_images_per_item``: 4 x 196 in 800
lanes, 7 x 49 in 352); a vector that runs from one image into the next takes two masked loads
per tap, one per image, and two masked stores. Measured (batch 256, 2 threads, a 64 -> 64
conv on 7 x 7): 3.62 against 3.84 ms one image per item; 32 -> 64 on 7 x 7 1.76 against
2.04 ms; 32 -> 32 on 14 x 14 3.37 against 3.49 ms.

A strided conv (a ResNet's downsampling 3 x 3 and 1 x 1 shortcut convs, stride 2) reads every
other row and column, which vector loads cannot pick out. Each image is first split into its
stride x stride sub-images (phases: rows and columns of one parity), each as wide as the
output, in a per-thread buffer that stays in cache; every tap then reads one phase at one
shift, as at stride 1. A stride-2 row is split 32 floats at a time (two masked loads and two
shuffles), and only the phases some tap reads (one for a 1 x 1 conv). Measured at batch 256,
2 threads (``benchmarks/compaction.py``'s ResNet): the 16 -> 32-channel 1 x 1 shortcut 0.67
against torch's 1.43 ms, the 3 x 3 16 -> 16 stride-2 conv 1.46 against 1.61 ms; the 32 -> 64
stride-2 conv onto 7 x 7 stays faster on torch (1.89 against 2.46 ms, images grouped).

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


def _multiply_add(builder, acc, wp, xs):
    # acc[o, k] += wp[o] * xs[k] for o < OUT_BLOCK and the loaded input vectors xs.
    for o in range(OUT_BLOCK):
        s = _splat(builder, builder.load(builder.gep(wp, [ir.Constant(ir.IntType(64), o)])))
        for k, x in enumerate(xs):
            p = _vector_at(builder, acc, o * len(xs) + k)
            a = builder.load(p, align=4)
            builder.store(builder.fadd(a, builder.fmul(s, x, flags=["fast"]), flags=["fast"]),
                          p, align=4)


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
        _multiply_add(builder, args[0], wp, xs)
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
def _tap_seg(typingctx, acc, weights, w_at, x, a0, b0, a1, b1, ma0, mb0, ma1,
             mb1):  # pragma: no cover - compiled
    """``_tap`` over two vectors whose lanes may come from two images: vector k reads
    ``x[a_k + lane]`` on the lanes of ``ma_k`` and ``x[b_k + lane]`` on those of ``mb_k`` (two
    masked loads into one register)."""
    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), BLOCK)
        four, zero = ir.Constant(ir.IntType(32), 4), ir.Constant(vec, [0.0] * BLOCK)
        wp = _pointer(context, builder, sig.args[1], args[1], args[2])
        xs = []
        for k in range(2):
            first = _masked(builder, "load", [
                _vector_at(builder, _pointer(context, builder, sig.args[3], args[3],
                                             args[4 + 2 * k]), 0),
                four, _lane_mask(builder, args[8 + 2 * k]), zero])
            xs.append(_masked(builder, "load", [
                _vector_at(builder, _pointer(context, builder, sig.args[3], args[3],
                                             args[5 + 2 * k]), 0),
                four, _lane_mask(builder, args[9 + 2 * k]), first]))
        _multiply_add(builder, args[0], wp, xs)
        return context.get_dummy_value()

    i64 = types.int64
    return types.void(acc, weights, w_at, x, i64, i64, i64, i64, i64, i64, i64, i64), codegen


@intrinsic
def _store_seg(typingctx, acc, out, a0, b0, a1, b1, stride, count, ma0, mb0, ma1, mb1, relu,
               res, add):  # pragma: no cover - compiled
    """Accumulator row o (o < ``count``) of vector k to ``out[a_k + o * stride + lane]`` on the
    lanes of ``ma_k`` and to ``out[b_k + o * stride + lane]`` on those of ``mb_k`` (two
    images); with ``add``, plus ``res`` at the same places (a residual); then with ``relu``
    max(0, .)."""
    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.FloatType(), BLOCK)
        zero = ir.Constant(vec, [0.0] * BLOCK)
        four = ir.Constant(ir.IntType(32), 4)
        places = [(args[2 + 2 * k + j], _lane_mask(builder, args[8 + 2 * k + j]))
                  for k in range(2) for j in range(2)]  # (a0, b0, a1, b1)
        for o in range(OUT_BLOCK):
            live = builder.icmp_signed("<", ir.Constant(ir.IntType(64), o), args[7])
            with builder.if_then(live):
                step = builder.mul(args[6], ir.Constant(ir.IntType(64), o))
                for k in range(2):
                    a = builder.load(_vector_at(builder, args[0], o * 2 + k), align=4)
                    r = zero
                    spots = []
                    for at, mask in places[2 * k:2 * k + 2]:
                        at = builder.add(at, step)
                        spots.append((_vector_at(builder, _pointer(
                            context, builder, sig.args[1], args[1], at), 0), mask))
                        r = _masked(builder, "load", [_vector_at(builder, _pointer(
                            context, builder, sig.args[13], args[13], at), 0), four, mask, r])
                    a = builder.select(args[14], builder.fadd(a, r, flags=["fast"]), a)
                    cut = builder.select(builder.fcmp_ordered("<", a, zero), zero, a)
                    a = builder.select(args[12], cut, a)
                    for spot, mask in spots:
                        _masked(builder, "store", [a, spot, four, mask])
        return context.get_dummy_value()

    i64 = types.int64
    return types.void(acc, out, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, relu, res,
                      add), codegen


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
def _tap_masks(h, w, oh, ow, pad_h, pad_w, kh, kw, sy, sx, vectors,
               images):  # pragma: no cover - compiled
    # masks[v, ky, kx]: the lanes of flat output vector v whose tap (ky, kx) reads inside the
    # image; masks[v, kh, 0]: the lanes that are output positions. The flat output runs
    # through ``images`` planes one after another.
    masks = np.zeros((vectors, kh + 1, max(kw, 1)), dtype=np.int64)
    for v in range(vectors):
        for i in range(BLOCK):
            q = v * BLOCK + i
            if q >= images * oh * ow:
                continue
            p = q % (oh * ow)
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
def _segments(positions, images, vectors):  # pragma: no cover - compiled
    # Per flat output vector: the image of its first lane, that lane's position in its image,
    # and the lanes in that image (the others, if any, are in the next image).
    image = np.empty(vectors, dtype=np.int64)
    offset = np.empty(vectors, dtype=np.int64)
    lanes = np.zeros(vectors, dtype=np.int64)
    for v in range(vectors):
        g = min(v * BLOCK // positions, images - 1)
        image[v], offset[v] = g, v * BLOCK - g * positions
        for i in range(BLOCK):
            if v * BLOCK + i < (g + 1) * positions:
                lanes[v] |= 1 << i
    return image, offset, lanes


@numba.njit(cache=True, fastmath=True, nogil=True)
def _split_phases(x, img, sy, sx, rows, cols, needed, phases):  # pragma: no cover
    # phases[((c * sy + py) * sx + px) * rows * cols + i * cols + j] = x[img, c, sy i + py,
    # sx j + px]: image ``img`` as sy x sx strided sub-images, each rows x cols, for the
    # phases some tap reads (``needed[py, px]``; other phases and cells past the image are left
    # as they are: no tap reads them). Stride 2 across (the common case) is vectorised: 32
    # floats of a row at a time, unzipped into the two column phases. (``kernels``'
    # ``_split_phases`` splits a whole batch for the sparse conv: a pass over memory, which for
    # this kernel cost as much as the conv.)
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


@numba.njit(cache=True, fastmath=True, nogil=True, inline="always")
def _add_taps(acc, flat_w, w_at, src, ibase, istride, positions, cstep, masks, shifts, v,
              channels, image, offset, lanes):  # pragma: no cover - compiled
    # Every tap of one conv into the accumulators of flat output vectors v, v + 1: per input
    # channel, two masked loads at the tap's shift of the input plane (or phase), or four
    # where a vector's lanes run from one image into the next. Inlined: called, it would let
    # the stack accumulators escape, and LLVM then stored them after every multiply-add
    # (measured 3x slower).
    kh, kw = shifts.shape
    a0 = ibase + image[v] * istride + offset[v]
    a1 = ibase + image[v + 1] * istride + offset[v + 1]
    one_image = image[v] == image[v + 1]
    for ky in range(kh):
        for kx in range(kw):
            m0, m1 = masks[v, ky, kx], masks[v + 1, ky, kx]
            if m0 == 0 and m1 == 0:
                continue  # the whole tap falls in the padding
            shift = shifts[ky, kx]
            w_tap = w_at + (ky * kw + kx) * OUT_BLOCK
            n0, n1 = m0 & ~lanes[v], m1 & ~lanes[v + 1]  # lanes in the next image
            if one_image and n0 == 0 and n1 == 0:
                for c in range(channels):
                    _tap(acc, flat_w, w_tap + c * kh * kw * OUT_BLOCK, src,
                         a0 + shift + c * cstep, m0, m1, 2)
            else:
                b0, b1 = a0 + istride - positions, a1 + istride - positions
                for c in range(channels):
                    at = shift + c * cstep
                    _tap_seg(acc, flat_w, w_tap + c * kh * kw * OUT_BLOCK, src, a0 + at,
                             b0 + at, a1 + at, b1 + at, m0 & lanes[v], n0,
                             m1 & lanes[v + 1], n1)


@numba.njit(cache=True, fastmath=True, nogil=True)
def _conv_items(x, weights, bias, pad_h, pad_w, sy, sx, masks, x2, weights2, pad2_h, pad2_w,
                sy2, sx2, masks2, two, relu, res, add, out, per, image, offset, lanes, first,
                last):  # pragma: no cover - compiled
    # Work items first:last of (group of ``per`` images, output block), in that order; one
    # thread. The group's output planes run one after another as one flat output; for each
    # pair of its vectors, every tap is two masked loads at one shift of a plane as wide as
    # the output (four where a vector spans two images): the image itself at stride 1, else
    # one of its strided sub-images (phases), split once per group into a buffer that stays
    # in cache. With ``two``, a second conv (x2, weights2, ...: a shortcut) adds into the same
    # accumulators. masks[0] / masks[1]: a full group's, the last group's.
    _wide_vectors()
    n, channels, channels2 = x.shape[0], x.shape[1], x2.shape[1]
    n_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    positions = oh * ow
    blocks = weights.shape[0]
    rows, plane, needed, shifts = _geometry(x, weights.shape[2], weights.shape[3], pad_h,
                                            pad_w, sy, sx, ow, masks[0])
    rows2, plane2, needed2, shifts2 = _geometry(x2, weights2.shape[2], weights2.shape[3],
                                                pad2_h, pad2_w, sy2, sx2, ow, masks2[0])
    strided, strided2 = sy > 1 or sx > 1, two and (sy2 > 1 or sx2 > 1)
    istride, istride2 = channels * sy * sx * plane, channels2 * sy2 * sx2 * plane2  # an image
    phases = np.empty(per * istride if strided else 1, dtype=np.float32)
    phases2 = np.empty(per * istride2 if strided2 else 1, dtype=np.float32)
    src = phases if strided else x.reshape(x.size)
    src2 = phases2 if strided2 else x2.reshape(x2.size)
    flat_w, flat_w2 = weights.reshape(weights.size), weights2.reshape(weights2.size)
    flat_out, flat_res = out.reshape(out.size), res.reshape(res.size)
    acc = _stack_floats(256)  # OUT_BLOCK * PAIR floats, a literal
    per_block = channels * weights.shape[2] * weights.shape[3] * OUT_BLOCK
    per_block2 = channels2 * weights2.shape[2] * weights2.shape[3] * OUT_BLOCK
    ostride = n_out * positions  # an image of the output
    split = -1
    for item in range(first, last):
        group, blk = item // blocks, item % blocks
        img0 = group * per
        full = min(per, n - img0) == per
        m, m2 = (masks[0], masks2[0]) if full else (masks[1], masks2[1])
        if group != split:
            for g in range(min(per, n - img0)):
                if strided:
                    _split_phases(x, img0 + g, sy, sx, rows, ow, needed,
                                  phases[g * istride:(g + 1) * istride])
                if strided2:
                    _split_phases(x2, img0 + g, sy2, sx2, rows2, ow, needed2,
                                  phases2[g * istride2:(g + 1) * istride2])
            split = group
        ibase = 0 if strided else img0 * istride
        ibase2 = 0 if strided2 else img0 * istride2
        obase = (img0 * n_out + blk * OUT_BLOCK) * positions
        for v in range(0, m.shape[0], 2):
            _fill(acc, bias, blk * OUT_BLOCK, 2)
            _add_taps(acc, flat_w, blk * per_block, src, ibase, istride, positions,
                      sy * sx * plane, m, shifts, v, channels, image, offset, lanes)
            if two:
                _add_taps(acc, flat_w2, blk * per_block2, src2, ibase2, istride2, positions,
                          sy2 * sx2 * plane2, m2, shifts2, v, channels2, image, offset, lanes)
            o0, o1 = m[v, -1, 0], m[v + 1, -1, 0]  # the lanes that are output positions
            a0 = obase + image[v] * ostride + offset[v]
            a1 = obase + image[v + 1] * ostride + offset[v + 1]
            _store_seg(acc, flat_out, a0, a0 + ostride - positions, a1,
                       a1 + ostride - positions, positions,
                       min(OUT_BLOCK, n_out - blk * OUT_BLOCK), o0 & lanes[v], o0 & ~lanes[v],
                       o1 & lanes[v + 1], o1 & ~lanes[v + 1], relu, flat_res, add)


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _direct_conv(x, weights, bias, pad_h, pad_w, sy, sx, masks, x2, weights2, pad2_h, pad2_w,
                 sy2, sx2, masks2, two, relu, res, add, out, per, image, offset, lanes,
                 chunks):  # pragma: no cover - compiled
    # (group of images, output block) items in ``chunks`` contiguous ranges, one per thread.
    items = -(-x.shape[0] // per) * weights.shape[0]
    for t in numba.prange(chunks):
        _conv_items(x, weights, bias, pad_h, pad_w, sy, sx, masks, x2, weights2, pad2_h,
                    pad2_w, sy2, sx2, masks2, two, relu, res, add, out, per, image, offset,
                    lanes, t * items // chunks, (t + 1) * items // chunks)


def _images_per_item(positions: int, n: int, most: int = 16, waste: float = 0.03) -> int:
    """Images whose output planes one work item runs as one flat output: the fewest (up to
    ``most``) that leave at most ``waste`` of the vector pairs' lanes empty, else the emptiest.
    A 7 x 7 plane alone fills 49 of 64 lanes, seven in a row 343 of 352; a 28 x 28 plane fills
    784 of 800 alone. Planes smaller than a vector stay one per item."""
    if positions < BLOCK:
        return 1

    def empty(g: int) -> float:
        return (-(-g * positions // PAIR) * PAIR - g * positions) / (g * positions)

    best = 1
    for g in range(1, max(1, min(n, most)) + 1):
        if empty(g) <= waste:
            return g
        if empty(g) < empty(best):
            best = g
    return best


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
    per = _images_per_item(oh * ow, n)
    vectors = -(-per * oh * ow // PAIR) * 2  # flat output vectors of a group, in pairs
    last = n - (-(-n // per) - 1) * per  # images in the last group

    def masks_of(x, kernel, pad, strides):
        return np.stack([_tap_masks(x.shape[2], x.shape[3], oh, ow, pad[0], pad[1], *kernel,
                                    *strides, vectors, g) for g in (per, last)])

    masks = masks_of(x, kernel_size, padding, stride)
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
        masks2 = masks_of(x2, kernel2, padding2, stride2)
    chunks = max(1, min(numba.get_num_threads(), -(-n // per) * weights.shape[0]))
    _direct_conv(x, weights, bias, padding[0], padding[1], stride[0], stride[1], masks,
                 x2, weights2, padding2[0], padding2[1], stride2[0], stride2[1], masks2,
                 shortcut is not None, bool(relu), out if residual is None else residual,
                 residual is not None, out, per, *_segments(oh * ow, per, vectors), chunks)
    return out
