"""Sparse matrix x dense matrix kernels for weight-pruned layers, compiled with numba.

``chain_matmul`` runs a chain of CSR layers (one layer, or a whole network) in one compiled
call. Each thread takes tiles of ``CHAIN_TILE`` samples through every layer: the tile is kept
*feature-major*, (features, CHAIN_TILE), so each nonzero weight ``W[r, j]`` does one axpy over
a contiguous row ``h[j, :]``; its activations never leave the thread's cache and no thread
waits for another between layers. A batch too small for a tile per thread is split over each
layer's output rows instead, if the network is big enough to pay for the activations the
threads then exchange. The accumulator is a stack buffer (``_stack_floats``): numba's arrays
live on the heap, where the compiler must assume they may overlap the activations, and it then
reloads and stores the accumulator for every nonzero (measured 1.5x slower). The tile loops are
compiled for 512-bit vectors (``_wide_vectors``), the tiles start on cache lines, and a
batch-major input enters a tile by 16 x 16 register transposes (``_transpose_block``).

Where the time goes (weight-pruned 95 % seed MLP, batch 1024, ``benchmarks/kernel_bounds.py``):
1.8-2.5 ns per nonzero and 64-sample tile on one thread, layer by layer (in this VM's faster
state; all figures here drop together in its slow one); the input's transposes add 5 %. This
core runs 4.2 16-lane multiply-adds with an L1 operand per ns (8 accumulators), 0.95 ns for a
nonzero's four, and the kernel runs at about half that rate. With the column indices folded so
that every activation read hits L1 (the same nonzeros and instructions), a nonzero takes 1.4-1.7
ns: a fifth to a quarter of the time is activation rows read from L2 (0.20-0.23 of the whole
network as packed, 0.24-0.31 in the trained order of its units). A layer's rows, 1000 x 256
bytes, are five times this core's L1 (48 KiB), and an unstructured pattern shares few columns
between nearby rows: an L1 that kept the 150 most recently used rows would serve 16-35 % of the
reads in the trained order, 27-49 % with the hidden units renumbered so that consecutive rows
share columns, as ``pack_csr_chain`` does (``locality_order``; 0-8 % faster at batch 64-10,000).
In L1, what a nonzero takes beyond the 0.95 ns of its multiply-adds is its index and value
loads, its address and the loop. Measured no better, within this VM's drift of about 10 %: a
second set of accumulators (two rows at once: 9 % faster with every read in L1, no faster as
packed), premultiplied row offsets, one 64-bit word per nonzero for its index and value, tiles
of 128 or 256 samples, tiles of 16 or 32 (a smaller working set, but two or four times the index
work per sample), blocking the rows or the columns for L1 (too few nonzeros per block at 1-5 %
density), software prefetches, and huge pages for the tiles.

A single sample goes by input columns instead (``csc_matvec``, ``chain_matvec``), skipping
the columns of zero inputs: after a ReLU, and for background pixels, most inputs are zero.

The functions are compiled on first call and cached on disk (``cache=True``); ``warm_up``
triggers the compilation so that no timed call pays for it.

>>> import numpy as np
>>> w = np.array([[0.0, 2.0], [1.0, 0.0]], dtype=np.float32)
>>> packed = pack_csr_chain([csr_arrays(w)], [None], np.arange(2))
>>> x = np.array([[1.0, 3.0], [2.0, 4.0]], dtype=np.float32)  # (batch=2, in=2)
>>> chain_matmul(packed, x)
array([[6., 1.],
       [8., 2.]], dtype=float32)
>>> chain_matmul(packed, x.T, by_feature=True)  # (in, batch) -> (out, batch)
array([[6., 8.],
       [1., 2.]], dtype=float32)
"""

from __future__ import annotations

import functools
import threading

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "CHAIN_TILE", "SERIAL_WORK", "chain_matmul", "chain_matvec", "csc_arrays", "csc_matvec",
    "csr_arrays", "locality_order", "pack_chain", "pack_conv", "pack_csr_chain", "sparse_conv2d",
    "tile_samples", "warm_up",
]

CHAIN_TILE = 64
"""Samples per tile in ``chain_matmul`` for large batches, a compile-time constant. Measured
(AVX-512, numba 0.68): 64 compiles to four 16-lane FMAs per nonzero into four accumulator
registers (``_wide_vectors``; eight 8-lane ones without it); 128 was within 10 % of 64 at batch
1024, half as fast at batch 64 (padding), and doubles the cache each thread needs. Tiles of 16
and 32 samples (small batches, a batch of 64 on two threads) are written as explicit vector
code (``_tile_rows_narrow``)."""

SERIAL_WORK = 200_000
"""Below this many multiply-adds a call stays on one thread: waking others costs more."""

ROWS_SPLIT_NNZ = 150_000
"""A batch of one tile (at most 16 samples on two threads, see ``tile_samples``) is split over
the threads by rows only from this many nonzeros: each thread then reads the activations the
other wrote, from the other core's cache, at every layer. Measured with 16-sample tiles
(weight-pruned seed MLP, batch 4 / 8 / 16, 2 threads against 1, ms): 121k nonzeros
0.113 / 0.098 / 0.091 against 0.100 / 0.100 / 0.095 (no gain), 240k 0.173 / 0.162 / 0.138
against 0.190 / 0.188 / 0.182, 479k 0.21-0.22 against 0.34-0.35."""


def csr_arrays(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr int32, indices int32, data float32) of a dense (out, in) matrix's nonzeros."""
    weight = np.asarray(weight, dtype=np.float32)
    rows, cols = np.nonzero(weight)
    indptr = np.zeros(weight.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=weight.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int32), weight[rows, cols].astype(np.float32)


def csc_arrays(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colptr int32, rows int32, data float32): the nonzeros of (out, in) ``weight`` by column."""
    return csr_arrays(np.asarray(weight, dtype=np.float32).T)


@numba.njit(cache=True, fastmath=True, nogil=True)
def _scatter(colptr, rows, data, x, out, relu):  # pragma: no cover - compiled
    # One sample, by input: a zero input (ReLU output, background pixel) skips its whole column.
    # Unsigned indices: no wraparound check per nonzero.
    out[:] = 0.0
    for j in range(colptr.size - 1):
        v = x[j]
        if v != 0.0:
            for p in range(np.uint64(colptr[j]), np.uint64(colptr[j + 1])):
                out[np.uint64(rows[p])] += data[p] * v
    if relu:
        for r in range(out.size):
            if out[r] < 0.0:
                out[r] = 0.0


def csc_matvec(colptr: np.ndarray, rows: np.ndarray, data: np.ndarray, x: np.ndarray,
               n_out: int, relu: bool) -> np.ndarray:
    """``W @ x`` (then ReLU) for one sample ``x`` (in,), ``W`` given by ``csc_arrays``."""
    out = np.empty(n_out, dtype=np.float32)
    _scatter(colptr, rows, data, x, out, relu)
    return out


def pack_chain(layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]], input_index: np.ndarray,
               n_outs: list[int]) -> tuple[np.ndarray, ...]:
    """Flat arrays for ``chain_matvec``: each bias-free layer's ``csc_arrays`` and output width,
    and the input features the first layer reads."""
    nnz = [d.size for _, _, d in layers]
    starts = np.cumsum(nnz) - nnz  # where each layer's nonzeros begin in the flat arrays
    colptr = np.concatenate([c.astype(np.int64) + s
                             for (c, _, _), s in zip(layers, starts, strict=True)])
    col_off = np.cumsum([0] + [c.size for c, _, _ in layers]).astype(np.int64)
    sizes = np.array(n_outs, dtype=np.int64)
    return (colptr, np.concatenate([r for _, r, _ in layers]),
            np.concatenate([d for _, _, d in layers]), col_off, sizes,
            np.ascontiguousarray(input_index, dtype=np.int64))


@numba.njit(cache=True, fastmath=True, nogil=True)
def _chain(colptr, rows, data, col_off, sizes, index, x):  # pragma: no cover - compiled
    cur = np.empty(index.size, dtype=np.float32)
    for j in range(index.size):
        cur[j] = x[index[j]]
    n_layers = sizes.size
    for layer in range(n_layers):
        out = np.zeros(sizes[layer], dtype=np.float32)
        c0 = col_off[layer]
        for j in range(col_off[layer + 1] - c0 - 1):
            v = cur[j]
            if v != 0.0:
                # unsigned indices: no wraparound check per nonzero (measured 1.1-1.4x)
                for p in range(np.uint64(colptr[c0 + j]), np.uint64(colptr[c0 + j + 1])):
                    out[np.uint64(rows[p])] += data[p] * v
        if layer < n_layers - 1:
            for r in range(out.size):
                if out[r] < 0.0:
                    out[r] = 0.0
        cur = out
    return cur


def chain_matvec(packed: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    """A whole bias-free ReLU network on one sample ``x`` (features,) in one compiled call.

    For a single sample, Python overhead between layers costs as much as the sparse work.
    """
    return _chain(*packed, x)


LOCALITY_WINDOW = 3
"""Rows ``locality_order`` looks back on: the next row shares the most columns with these."""

LOCALITY_WORK = 200_000_000
"""Above this many score updates (the sum over columns of their nonzeros squared, plus rows
squared) a layer keeps its row order: ordering would take about a second."""


@numba.njit(cache=True, nogil=True)
def _greedy_order(indptr, indices, n_cols, window):  # pragma: no cover - compiled
    n = indptr.size - 1
    colptr = np.zeros(n_cols + 1, np.int64)
    for p in range(indices.size):
        colptr[indices[p] + 1] += 1
    for j in range(n_cols):
        colptr[j + 1] += colptr[j]
    rows_of = np.empty(indices.size, np.int64)  # the rows of each column (CSC pattern)
    fill = colptr[:-1].copy()
    for r in range(n):
        for p in range(indptr[r], indptr[r + 1]):
            rows_of[fill[indices[p]]] = r
            fill[indices[p]] += 1
    score = np.zeros(n, np.int64)  # columns shared with the last `window` rows chosen
    done = np.zeros(n, np.bool_)
    order = np.empty(n, np.int64)
    cur = 0
    for r in range(n):  # start with the longest row
        if indptr[r + 1] - indptr[r] > indptr[cur + 1] - indptr[cur]:
            cur = r
    for k in range(n):
        order[k] = cur
        done[cur] = True
        for p in range(indptr[cur], indptr[cur + 1]):
            for q in range(colptr[indices[p]], colptr[indices[p] + 1]):
                score[rows_of[q]] += 1
        if k >= window:
            old = order[k - window]
            for p in range(indptr[old], indptr[old + 1]):
                for q in range(colptr[indices[p]], colptr[indices[p] + 1]):
                    score[rows_of[q]] -= 1
        best = -1
        for r in range(n):
            if not done[r] and (best < 0 or score[r] > score[best]):
                best = r
        cur = best
    return order


def locality_order(indptr: np.ndarray, indices: np.ndarray, n_cols: int,
                   window: int = LOCALITY_WINDOW) -> np.ndarray:
    """An order of a CSR matrix's rows in which consecutive rows share columns: greedily, the
    next row is the one sharing the most columns with the last ``window`` rows (ties: the
    first). ``chain_matmul`` reads each nonzero's activation row from L1 only if a recent row
    read it too; with the hidden units renumbered in this order (``pack_csr_chain``), an L1
    keeping the 150 most recently used rows of the seed MLP's 95 %-pruned layers serves
    27-49 % of the reads instead of 16-35 %. The identity where ordering would cost too much
    (``LOCALITY_WORK``)."""
    n = indptr.size - 1
    if indices.size and not 0 <= int(indices.min()) <= int(indices.max()) < n_cols:
        raise ValueError(f"column indices must lie in 0..{n_cols - 1}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    counts = np.bincount(indices, minlength=n_cols).astype(np.int64)
    if int((counts * counts).sum()) + n * n > LOCALITY_WORK:
        return np.arange(n)
    return _greedy_order(np.asarray(indptr, np.int64), np.asarray(indices, np.int64),
                         n_cols, window)


def _renumbered(layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                biases: list[np.ndarray | None]) -> tuple[list, list]:
    """The layers and biases with every hidden layer's units in ``locality_order``: each such
    layer's rows and bias permuted, and the next layer's columns with them. The network's
    function is unchanged (the last layer keeps its order); each row's columns stay sorted."""
    layers, biases = list(layers), list(biases)
    for i in range(len(layers) - 1):
        ptr, idx, val = layers[i]
        order = locality_order(ptr, idx, int(idx.max()) + 1 if idx.size else 0)
        lengths = np.diff(ptr)[order]
        new_ptr = np.zeros(ptr.size, ptr.dtype)
        np.cumsum(lengths, out=new_ptr[1:])
        take = np.repeat(ptr[:-1][order] - new_ptr[:-1], lengths) + np.arange(int(lengths.sum()))
        layers[i] = (new_ptr, idx[take], val[take])
        if biases[i] is not None:
            biases[i] = np.asarray(biases[i])[order]
        position = np.empty_like(order)
        position[order] = np.arange(order.size)  # old unit -> its new row
        nptr, nidx, nval = layers[i + 1]
        cols = position[nidx]
        rows = np.repeat(np.arange(nptr.size - 1), np.diff(nptr))
        sort = np.lexsort((cols, rows))
        layers[i + 1] = (nptr, cols[sort].astype(nidx.dtype), nval[sort])
    return layers, biases


def pack_csr_chain(layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   biases: list[np.ndarray | None], input_index: np.ndarray,
                   relu_last: bool = False, locality: bool = True) -> tuple:
    """Flat arrays for ``chain_matmul``: each layer's ``csr_arrays`` and bias (``None``: zeros),
    the input features the first layer reads, in order, and whether the last layer's output
    goes through a ReLU too (every other layer's does).

    When the features read are at least half of those up to the last one, the first layer
    reads the input's own columns instead of a gathered copy: a batch then goes into the
    kernel's tiles by whole-block transposes (``_load_tile``), which cost less than gathering
    the few features skipped would save.

    With ``locality``, the hidden units are renumbered so that consecutive rows share columns
    (``locality_order``): the same network, measured 0-8 % faster at batch 64-10,000 (seed MLP,
    95 % and 99 % of weights pruned, 2 threads, interleaved with the given order in one
    process), for 0.06 s more packing."""
    if locality and len(layers) > 1:
        layers, biases = _renumbered(layers, biases)
    index = np.ascontiguousarray(input_index, dtype=np.int64)
    direct = index.size == 0 or 2 * index.size >= int(index.max()) + 1
    if direct and index.size and not np.array_equal(index, np.arange(index.size)):
        first = layers[0]
        layers = [(first[0], index[first[1]].astype(np.int32), first[2]), *layers[1:]]
        index = np.arange(int(index.max()) + 1, dtype=np.int64)
    nnz = [d.size for _, _, d in layers]
    starts = np.cumsum(nnz) - nnz
    indptr = np.concatenate([p.astype(np.int64) + s for (p, _, _), s in zip(layers, starts,
                                                                             strict=True)])
    sizes = np.array([p.size - 1 for p, _, _ in layers], dtype=np.int64)
    bias = np.concatenate([np.zeros(n, np.float32) if b is None else np.asarray(b, np.float32)
                           for b, n in zip(biases, sizes, strict=True)])
    ptr_off = np.concatenate([[0], np.cumsum(sizes + 1)]).astype(np.int64)
    bias_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return (indptr, np.concatenate([i for _, i, _ in layers]),
            np.concatenate([d for _, _, d in layers]), bias, ptr_off, bias_off, sizes,
            index, bool(relu_last), bool(direct))


@intrinsic
def _stack_floats(typingctx, n):  # pragma: no cover - compiled
    """A float32 buffer of literal size ``n`` on the stack (uninitialised), as a pointer."""
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        buf = cgutils.alloca_once(builder, ir.ArrayType(ir.FloatType(), n.literal_value))
        return builder.bitcast(buf, ir.FloatType().as_pointer())

    return types.CPointer(types.float32)(n), codegen


@intrinsic
def _stack_vectors(typingctx, n):  # pragma: no cover - compiled
    """``_stack_floats`` of a literal ``n`` x ``BLOCK`` floats."""
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        buf = cgutils.alloca_once(builder, ir.ArrayType(ir.FloatType(), n.literal_value * BLOCK))
        return builder.bitcast(buf, ir.FloatType().as_pointer())

    return types.CPointer(types.float32)(n), codegen


BLOCK = 16
"""Side of the square blocks ``_load_tile`` transposes in registers (one AVX-512 vector)."""


def _butterfly(n: int, h: int) -> tuple[list[int], list[int]]:
    # Shuffle masks of one stage of an n x n transpose: rows i and i + h exchange the blocks
    # of h columns that sit on the wrong side of the diagonal.
    lo = [c if c & h == 0 else n + c - h for c in range(n)]
    hi = [c + h if c & h == 0 else n + c for c in range(n)]
    return lo, hi


@intrinsic
def _transpose_block(typingctx, src, r0, c0, dst, d0, e0):  # pragma: no cover - compiled
    """``dst[d0 + i, e0 + j] = src[r0 + j, c0 + i]`` for i, j < ``BLOCK`` (2-D float32 arrays
    with unit stride along rows): ``BLOCK`` vector loads, log2(BLOCK) stages of two-input
    shuffles, ``BLOCK`` vector stores. Measured 0.32 ns per element against 1.0 for the
    element-by-element loop (which LLVM does not vectorise), a 1024 x 784 batch in 0.3 ms."""
    def codegen(context, builder, signature, args):
        vec = ir.VectorType(ir.FloatType(), BLOCK)
        i64 = ir.IntType(64)

        def pointer(index, row, col):
            aryty = signature.args[index]
            ary = context.make_array(aryty)(context, builder, args[index])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [row, col],
                                           wraparound=False)
            return builder.bitcast(ptr, vec.as_pointer())

        rows = [builder.load(pointer(0, builder.add(args[1], ir.Constant(i64, j)), args[2]),
                             align=4) for j in range(BLOCK)]
        h = BLOCK // 2
        while h:
            lo, hi = (ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), m)
                      for m in _butterfly(BLOCK, h))
            for i in range(BLOCK):
                if i & h == 0:
                    a, b = rows[i], rows[i + h]
                    rows[i], rows[i + h] = (builder.shuffle_vector(a, b, lo),
                                            builder.shuffle_vector(a, b, hi))
            h //= 2
        for i in range(BLOCK):
            builder.store(rows[i], pointer(3, builder.add(args[4], ir.Constant(i64, i)), args[5]),
                          align=4)
        return context.get_dummy_value()

    return types.void(src, types.int64, types.int64, dst, types.int64, types.int64), codegen


@intrinsic
def _wide_vectors(typingctx):  # pragma: no cover - compiled
    """Let LLVM vectorise the calling function with the CPU's widest vectors. LLVM's x86
    tuning prefers 256-bit vectors even on AVX-512 CPUs (wide units can lower the clock); the
    tile loops here are bound by loads and multiply-adds, and with 512-bit vectors a nonzero's
    64 samples take 4 FMAs instead of 8: measured 1.4x faster (weight-pruned 95 % and 99 %,
    batch 64-1024, 1 thread, interleaved A/B in one process). A CPU without AVX-512 keeps its
    own widest vectors."""
    def codegen(context, builder, signature, args):
        # llvmlite's attribute set only admits a fixed list of names: add the string attribute
        # to the underlying set directly.
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.void(), codegen


def _vector_at(builder, pointer, k):
    # The k-th BLOCK-float vector from ``pointer`` (a float*).
    vec = ir.VectorType(ir.FloatType(), BLOCK)
    return builder.bitcast(builder.gep(pointer, [ir.Constant(ir.IntType(64), BLOCK * k)]),
                           vec.as_pointer())


def _splat(builder, value):
    vec = ir.VectorType(ir.FloatType(), BLOCK)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value,
                                 ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK))


def _row_pointer(context, builder, aryty, ary, row):
    ary = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, ary,
                                    [row, ir.Constant(ir.IntType(64), 0)], wraparound=False)


# Intrinsics on a stack accumulator of ``n`` x ``BLOCK`` floats (``n`` a literal), written as
# explicit vector operations: fill with a value, add a scalar times a tile row, store to a tile
# row with an optional ReLU, add another accumulator. Written as plain loops, a 16- or 32-sample
# row is unrolled into scalars and LLVM vectorises the loop over the *nonzeros* instead, with
# gathers (measured 5-7x slower); 64 samples are long enough to escape that.


@intrinsic
def _vfill(typingctx, acc, value, n):  # pragma: no cover - compiled
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        splat = _splat(builder, args[1])
        for k in range(n.literal_value):
            builder.store(splat, _vector_at(builder, args[0], k), align=4)
        return context.get_dummy_value()

    return types.void(acc, value, n), codegen


@intrinsic
def _vaxpy(typingctx, acc, w, h, row, n):  # pragma: no cover - compiled
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        src = _row_pointer(context, builder, signature.args[2], args[2], args[3])
        splat = _splat(builder, args[1])
        for k in range(n.literal_value):  # tile rows start on cache lines (_aligned)
            x = builder.load(_vector_at(builder, src, k), align=64)
            a = builder.load(_vector_at(builder, args[0], k), align=4)
            builder.store(builder.fadd(a, builder.fmul(splat, x, flags=["fast"]),
                                       flags=["fast"]), _vector_at(builder, args[0], k),
                          align=4)
        return context.get_dummy_value()

    return types.void(acc, w, h, row, n), codegen


@intrinsic
def _vstore(typingctx, acc, h, row, relu, n):  # pragma: no cover - compiled
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        dst = _row_pointer(context, builder, signature.args[1], args[1], args[2])
        zero = ir.Constant(ir.VectorType(ir.FloatType(), BLOCK), [0.0] * BLOCK)
        for k in range(n.literal_value):
            a = builder.load(_vector_at(builder, args[0], k), align=4)
            cut = builder.select(builder.fcmp_ordered("<", a, zero), zero, a)
            builder.store(builder.select(args[3], cut, a), _vector_at(builder, dst, k),
                          align=64)
        return context.get_dummy_value()

    return types.void(acc, h, row, relu, n), codegen


@intrinsic
def _vmerge(typingctx, acc, other, n):  # pragma: no cover - compiled
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        for k in range(n.literal_value):
            a = builder.load(_vector_at(builder, args[0], k), align=4)
            b = builder.load(_vector_at(builder, args[1], k), align=4)
            builder.store(builder.fadd(a, b, flags=["fast"]), _vector_at(builder, args[0], k),
                          align=4)
        return context.get_dummy_value()

    return types.void(acc, other, n), codegen


@numba.njit(cache=True, fastmath=True, nogil=True)
def _tile_rows_narrow(indptr, indices, data, bias, hin, hout, relu, r0, r1,
                      vectors):  # pragma: no cover - compiled
    # _tile_rows for tiles of 16 or 32 samples (``vectors``, a literal 1 or 2, per row). Even
    # and odd nonzeros go to two accumulators (one dependency chain each): 0.66-0.70 instead
    # of 0.77-0.78 ns per nonzero with 16 samples (1000 x 1000, 1 and 5 % density, one
    # thread); 4 % for 32.
    numba.literally(vectors)
    acc, odd = _stack_vectors(vectors), _stack_vectors(vectors)
    for r in range(r0, r1):
        _vfill(acc, bias[r], vectors)
        _vfill(odd, np.float32(0.0), vectors)
        p, end = np.uint64(indptr[r]), np.uint64(indptr[r + 1])
        while p + np.uint64(1) < end:
            _vaxpy(acc, data[p], hin, np.uint64(indices[p]), vectors)
            _vaxpy(odd, data[p + np.uint64(1)], hin, np.uint64(indices[p + np.uint64(1)]),
                   vectors)
            p += np.uint64(2)
        if p < end:
            _vaxpy(acc, data[p], hin, np.uint64(indices[p]), vectors)
        _vmerge(acc, odd, vectors)
        _vstore(acc, hout, np.uint64(r), relu, vectors)


@numba.njit(cache=True, fastmath=True, nogil=True)
def _rows_of_width(indptr, indices, data, bias, hin, hout, relu, r0, r1):  # pragma: no cover
    # The row kernel for the tile's width (16, 32 or CHAIN_TILE samples).
    width = hin.shape[1]
    if width == 16:
        _tile_rows_narrow(indptr, indices, data, bias, hin, hout, relu, r0, r1, 1)
    elif width == 32:
        _tile_rows_narrow(indptr, indices, data, bias, hin, hout, relu, r0, r1, 2)
    else:
        _tile_rows(indptr, indices, data, bias, hin, hout, relu, r0, r1)


@numba.njit(cache=True, fastmath=True, nogil=True)
def _tile_rows(indptr, indices, data, bias, hin, hout, relu, r0, r1):  # pragma: no cover
    # Rows r0:r1 of hout (out, CHAIN_TILE) from hin (in, CHAIN_TILE). The accumulator lives on
    # the stack, so the compiler knows it aliases nothing and keeps it in vector registers
    # (measured 1.5x faster than a heap array); unsigned indices skip the wraparound checks.
    _wide_vectors()
    acc = numba.carray(_stack_floats(CHAIN_TILE), CHAIN_TILE)
    for r in range(r0, r1):
        acc[:] = bias[r]
        for p in range(np.uint64(indptr[r]), np.uint64(indptr[r + 1])):
            w, h = data[p], hin[np.uint64(indices[p])]
            for b in range(CHAIN_TILE):
                acc[b] += w * h[b]
        for b in range(CHAIN_TILE):
            v = acc[b]
            hout[r, b] = 0.0 if relu and v < 0.0 else v


@numba.njit(cache=True, fastmath=True, nogil=True)
def _load_tile(x, by_feature, s, index, tile, j0, j1, direct):  # pragma: no cover - compiled
    # Samples s: s+width of x (batch, features), or (features, batch) when by_feature,
    # features index[j0:j1], into rows j0:j1 of the feature-major tile (features, width); the
    # columns past the batch are zeroed. With ``direct`` (index[j] == j), a batch-major x is
    # transposed in BLOCK x BLOCK blocks in registers where whole blocks fit.
    width = tile.shape[1]
    m = min(width, (x.shape[1] if by_feature else x.shape[0]) - s)
    if direct and not by_feature:
        jb = j0 + (j1 - j0) // BLOCK * BLOCK
        mb = m // BLOCK * BLOCK
        for j in range(j0, jb, BLOCK):
            for b in range(0, mb, BLOCK):
                _transpose_block(x, np.int64(s + b), np.int64(j), tile, np.int64(j), np.int64(b))
        for j in range(j0, j1):
            for b in range(mb if j < jb else 0, m):
                tile[j, b] = x[s + b, j]
            for b in range(m, width):
                tile[j, b] = 0.0
        return
    for j in range(j0, j1):
        f = index[j]
        if by_feature:
            for b in range(m):
                tile[j, b] = x[f, s + b]
        else:
            for b in range(m):
                tile[j, b] = x[s + b, f]
        for b in range(m, width):
            tile[j, b] = 0.0


@numba.njit(cache=True, fastmath=True, nogil=True)
def _store_tile(tile, s, out, by_feature):  # pragma: no cover - compiled
    width = tile.shape[1]
    if by_feature:  # out is (outputs, batch)
        for r in range(out.shape[0]):
            for b in range(min(width, out.shape[1] - s)):
                out[r, s + b] = tile[r, b]
    else:
        for b in range(min(width, out.shape[0] - s)):
            for r in range(out.shape[1]):
                out[s + b, r] = tile[r, b]


@numba.njit(cache=True, fastmath=True, nogil=True)
def _layer_args(indptr, bias, ptr_off, bias_off, sizes, layer):  # pragma: no cover - compiled
    return (indptr[ptr_off[layer]:ptr_off[layer] + sizes[layer] + 1],
            bias[bias_off[layer]:bias_off[layer] + sizes[layer]])


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _chain_tiles(indptr, indices, data, bias, ptr_off, bias_off, sizes, index, relu_last, direct,
                 x, by_feature, out, work):  # pragma: no cover - compiled
    _wide_vectors()  # this function's own copy of _tile_rows (inlined) is vectorised here
    n = x.shape[1] if by_feature else x.shape[0]
    width = work.shape[3]  # samples per tile: 16, 32 or CHAIN_TILE
    n_tiles = (n + width - 1) // width
    n_threads = work.shape[0]
    n_layers = sizes.size
    for t in numba.prange(n_threads):  # thread t takes tiles t, t + n_threads, ...
        a, b = work[t, 0], work[t, 1]
        for tile in range(t, n_tiles, n_threads):
            _load_tile(x, by_feature, tile * width, index, a, 0, index.size, direct)
            for layer in range(n_layers):
                ptr, bs = _layer_args(indptr, bias, ptr_off, bias_off, sizes, layer)
                src, dst = (a, b) if layer % 2 == 0 else (b, a)
                _rows_of_width(ptr, indices, data, bs, src, dst,
                               relu_last or layer < n_layers - 1, 0, sizes[layer])
            _store_tile(b if n_layers % 2 == 1 else a, tile * width, out, by_feature)


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _chain_rows(indptr, indices, data, bias, ptr_off, bias_off, sizes, index, relu_last, direct,
                x, by_feature, out, work, chunks):  # pragma: no cover - compiled
    # One tile (a batch of at most CHAIN_TILE), each layer's rows split over the threads.
    _wide_vectors()
    a, b = work[0, 0], work[0, 1]
    step = -(-index.size // (chunks * BLOCK)) * BLOCK  # whole transpose blocks per chunk
    for c in numba.prange(chunks):  # the tile's transpose alone would take a tenth of the time
        _load_tile(x, by_feature, 0, index, a, min(c * step, index.size),
                   min((c + 1) * step, index.size), direct)
    n_layers = sizes.size
    for layer in range(n_layers):
        ptr, bs = _layer_args(indptr, bias, ptr_off, bias_off, sizes, layer)
        src, dst = (a, b) if layer % 2 == 0 else (b, a)
        n_out = sizes[layer]
        step = (n_out + chunks - 1) // chunks
        for c in numba.prange(chunks):
            r0 = min(c * step, n_out)
            _rows_of_width(ptr, indices, data, bs, src, dst, relu_last or layer < n_layers - 1,
                           r0, min(r0 + step, n_out))
    _store_tile(b if n_layers % 2 == 1 else a, 0, out, by_feature)


_LOCAL = threading.local()


def _workspace(features: int, threads: int, samples: int = CHAIN_TILE) -> np.ndarray:
    """Scratch activations for ``chain_matmul``, two tiles of at least ``features`` rows of
    ``samples`` per kernel thread, kept per calling thread (and freed with it); a wider one
    replaces it when needed. Measured (weight-pruned 95 %, batch 64, 2 threads): 0.33 ms per
    call instead of 0.37 ms with two fresh 256 KiB tiles per call.

    The tiles start on a cache line (numpy's own buffers start 16 bytes past one here), so
    each 256-byte activation row is four cache lines, not five: measured 15-25 % faster
    (weight-pruned 95 % and 99 %, batch 64-1024, 1 thread, interleaved with the unaligned
    version in one process). Rows of 16 and 32 samples are one and two cache lines."""
    spaces = getattr(_LOCAL, "spaces", None)
    if spaces is None:
        spaces = _LOCAL.spaces = {}
    work = spaces.get((threads, samples))
    if work is None or work.shape[2] < features:
        work = spaces[threads, samples] = _aligned((threads, 2, features, samples))
    return work


TILE_COST = {16: 0.68, 32: 0.55, CHAIN_TILE: 0.52}
"""ns per nonzero and 16 samples in a tile of 16, 32 or ``CHAIN_TILE`` samples (one thread, a
1000 x 1000 layer at 1 and 5 % density; the wider tiles spend less on each nonzero's index and
value)."""


@functools.lru_cache(maxsize=1024)
def tile_samples(batch: int, threads: int) -> int:
    """Samples per tile for ``batch`` on ``threads``: the width whose tiles, dealt to the
    threads in rounds, cost least (``TILE_COST``). Batch 64 on two threads: two tiles of 32 (one
    per thread) instead of one of 64 that a single thread would run; batch 10: one tile of 16,
    not 64 mostly empty samples."""
    def cost(width: int) -> float:
        tiles = -(-batch // width)
        rounds = -(-tiles // threads)
        return rounds * width / 16 * TILE_COST[width]

    return min(TILE_COST, key=cost)


def _aligned(shape: tuple[int, ...], line: int = 64) -> np.ndarray:
    """Zeroed float32 array of ``shape`` whose data starts on a ``line``-byte boundary."""
    n = int(np.prod(shape))
    raw = np.zeros(n + line // 4, dtype=np.float32)
    start = (-raw.ctypes.data % line) // 4
    return raw[start:start + n].reshape(shape)


def chain_matmul(packed: tuple, x: np.ndarray, by_feature: bool = False) -> np.ndarray:
    """A whole ReLU network (``pack_csr_chain``) on ``x`` in one compiled call: ``x`` is
    (batch, features) and the result (batch, outputs) float32, or with ``by_feature`` both
    feature-major, (features, batch) and (outputs, batch).

    Tiles of 16, 32 or ``CHAIN_TILE`` samples (``tile_samples``) go to the threads in turn;
    a batch of less than a tile per thread is split over each layer's rows when the network is
    big enough (``ROWS_SPLIT_NNZ``). A small job stays on one thread.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    sizes = packed[6]
    n = x.shape[1] if by_feature else x.shape[0]
    out = np.empty((int(sizes[-1]), n) if by_feature else (n, int(sizes[-1])), dtype=np.float32)
    if n == 0:
        return out
    nnz = packed[2].size
    threads = 1 if nnz * n < SERIAL_WORK else numba.get_num_threads()
    samples = tile_samples(n, threads)
    n_tiles = -(-n // samples)
    features = max(packed[7].size, *sizes.tolist())  # a numpy max costs 3 us here
    if 1 < threads and n_tiles < threads and nnz >= ROWS_SPLIT_NNZ:
        _chain_rows(*packed, x, by_feature, out, _workspace(features, 1, samples), 2 * threads)
    else:
        _chain_tiles(*packed, x, by_feature, out,
                     _workspace(features, min(threads, n_tiles), samples))
    return out


def pack_conv(weight: np.ndarray, groups: int = 1,
              dilation: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzeros of a conv weight (out, in / groups, kh, kw) for ``sparse_conv2d``, by output
    channel: (ptr int64 (out + 1), taps int64 (nnz, 3): input channel of the whole input, row
    and column offset of the tap (dilation applied), values float32 (nnz,))."""
    weight = np.asarray(weight, dtype=np.float32)
    out_ch, in_per_group = weight.shape[:2]
    o, c, i, j = np.nonzero(weight)  # row-major: sorted by output channel
    ptr = np.zeros(out_ch + 1, dtype=np.int64)
    np.cumsum(np.bincount(o, minlength=out_ch), out=ptr[1:])
    group = o // (out_ch // groups)
    taps = np.stack([group * in_per_group + c, i * dilation[0], j * dilation[1]], axis=1)
    return ptr, np.ascontiguousarray(taps, dtype=np.int64), weight[o, c, i, j]


@numba.njit(cache=True, fastmath=True, nogil=True, inline="always")
def _wrapped(plane, saved, y0, y1, w, lo, hi, start, end, restore):  # pragma: no cover
    # Columns lo:hi of rows y0:y1 of a flattened plane that lie in start:end: copied into
    # ``saved``, or with ``restore`` back from it.
    k = 0
    for y in range(y0, y1):
        for xo in range(lo, hi):
            i = y * w + xo
            if start <= i < end:
                if restore:
                    plane[i] = saved[k]
                else:
                    saved[k] = plane[i]
                k += 1


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _sparse_conv(x, ptr, taps, values, bias, stride_h, stride_w, pad_h, pad_w,
                 out):  # pragma: no cover - compiled
    # Each (image, output channel) plane is its bias plus, per nonzero tap, the input channel's
    # plane shifted by the tap and scaled by its weight; the plane stays in L1 while its taps
    # are added. Stride 1 with as many output as input columns (a "same" conv): the shift is
    # one offset in the flattened planes, so a tap is one long vectorised axpy, and the
    # columns it wraps into from the next or previous row are saved before and put back after
    # (exactly). Otherwise a tap is an axpy per output row. The axpys run over slices: with a
    # signed index numba checks for negative indices and LLVM does not vectorise (10x slower).
    n, n_out, oh, ow = out.shape
    h, w = x.shape[2], x.shape[3]
    flat = stride_h == 1 and stride_w == 1 and ow == w
    widest = 0
    for p in range(taps.shape[0]):
        widest = max(widest, abs(taps[p, 2] - pad_w))
    x_planes = x.reshape(n, x.shape[1], h * w)  # flattened planes (views)
    out_planes = out.reshape(n, n_out, oh * ow)
    for t in numba.prange(n * n_out):
        img, o = t // n_out, t % n_out
        plane = out[img, o]
        dst_f = out_planes[img, o]
        b = bias[o]
        for y in range(oh):
            for xo in range(ow):
                plane[y, xo] = b
        saved = np.empty(max(1, oh * widest), dtype=np.float32)
        for p in range(ptr[o], ptr[o + 1]):
            dy, dx, v = taps[p, 1] - pad_h, taps[p, 2] - pad_w, values[p]
            if flat:
                y0, y1 = max(0, -dy), min(oh, h - dy)
                if y0 >= y1:
                    continue
                off = dy * w + dx
                start, end = max(y0 * w, -off), min(y1 * w, h * w - off)
                lo, hi = (w - dx, w) if dx > 0 else (0, -dx)  # columns that wrap
                _wrapped(dst_f, saved, y0, y1, w, lo, hi, start, end, False)
                seg_s = x_planes[img, taps[p, 0], start + off:end + off]
                seg_d = dst_f[start:end]
                for i in range(seg_d.size):  # slices: no signed index to check, vectorised
                    seg_d[i] += v * seg_s[i]
                _wrapped(dst_f, saved, y0, y1, w, lo, hi, start, end, True)
                continue
            # output columns whose input column xo * stride_w + dx lies in [0, w)
            x0 = max(0, -(dx // stride_w)) if dx < 0 else 0
            x1 = min(ow, (w - 1 - dx) // stride_w + 1) if w - 1 - dx >= 0 else 0
            for y in range(oh):
                iy = y * stride_h + dy
                if 0 <= iy < h and x0 < x1:
                    seg_d = plane[y, x0:x1]
                    seg_s = x[img, taps[p, 0], iy,
                              x0 * stride_w + dx:(x1 - 1) * stride_w + dx + 1:stride_w]
                    for i in range(seg_d.size):
                        seg_d[i] += v * seg_s[i]


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _split_phases(x, sh, sw, used, out):  # pragma: no cover - compiled
    # out[i, c * sh * sw + ry * sw + rx, y, x] = x[i, c, y * sh + ry, x * sw + rx], else 0,
    # for the phases ry * sw + rx that are used
    n, channels, h, w = x.shape
    ph, pw = out.shape[2], out.shape[3]
    for t in numba.prange(n * channels):
        i, c = t // channels, t % channels
        for ry in range(sh):
            for rx in range(sw):
                if not used[ry * sw + rx]:
                    continue
                dst = out[i, c * sh * sw + ry * sw + rx]
                for y in range(ph):
                    iy = y * sh + ry
                    for xo in range(pw):
                        ix = xo * sw + rx
                        dst[y, xo] = x[i, c, iy, ix] if iy < h and ix < w else 0.0


def sparse_conv2d(x: np.ndarray, packed: tuple[np.ndarray, np.ndarray, np.ndarray],
                  bias: np.ndarray, out_channels: int, kernel_size: tuple[int, int],
                  stride: tuple[int, int], padding: tuple[int, int],
                  dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """A 2-D convolution of ``x`` (N, C, H, W) float32 with the sparse weight ``pack_conv``
    made, plus ``bias`` (out,): (N, out, OH, OW) float32, zero padding, any stride, dilation
    and groups (taps carry their input channel). Work is one vectorised update per nonzero tap
    (per output row where a tap's shift is not one offset of the flattened planes), so it
    scales with the nonzeros, not with the weight's size.

    A strided conv is first split into its stride phases (input rows and columns by their
    remainder modulo the stride, zero-filled to equal sizes): tap (i, j) then reads one phase
    at stride 1, and when the phases are as wide as the output (odd kernels padded by half,
    as a ResNet's downsampling convs) each tap is one flat update again."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, channels, h, w = x.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    out = np.empty((n, out_channels, max(oh, 0), max(ow, 0)), dtype=np.float32)
    if not out.size:
        return out
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    sh, sw = stride
    if (sh, sw) != (1, 1) and -(-w // sw) == ow:
        ph, pw = -(-h // sh), -(-w // sw)
        ptr, taps, values = packed
        dy, dx = taps[:, 1] - padding[0], taps[:, 2] - padding[1]
        used = np.zeros(sh * sw, dtype=np.bool_)  # phases no tap reads are not split out
        used[(dy % sh) * sw + dx % sw] = True
        phases = np.empty((n, channels * sh * sw, ph, pw), dtype=np.float32)
        _split_phases(x, sh, sw, used, phases)
        phase_taps = np.stack([taps[:, 0] * (sh * sw) + (dy % sh) * sw + dx % sw,
                               dy // sh, dx // sw], axis=1)
        _sparse_conv(phases, ptr,
                     np.ascontiguousarray(phase_taps), values, bias, 1, 1, 0, 0, out)
        return out
    _sparse_conv(x, *packed, bias, sh, sw, padding[0], padding[1], out)
    return out


def warm_up() -> None:
    """Compile (or load from the cache) every kernel variant."""
    w = np.eye(3, dtype=np.float32)
    arrays = csr_arrays(w)
    csc_matvec(*csc_arrays(w), np.ones(3, dtype=np.float32), 3, relu=True)
    chain_matvec(pack_chain([csc_arrays(w)], np.arange(3), [3]), np.ones(3, dtype=np.float32))
    packed = pack_csr_chain([arrays, arrays], [None, None], np.arange(3))
    x = np.ones((1, 3), dtype=np.float32)
    for samples in TILE_COST:
        work = _workspace(3, 1, samples)
        for by_feature in (False, True):
            _chain_tiles(*packed, x, by_feature, np.empty((1, 3), dtype=np.float32), work)
            _chain_rows(*packed, x, by_feature, np.empty((1, 3), dtype=np.float32), work, 2)
    for stride in (1, 2):
        sparse_conv2d(np.ones((1, 1, 3, 3), dtype=np.float32), pack_conv(np.ones((1, 1, 3, 3))),
                      np.zeros(1), 1, (3, 3), (stride, stride), (1, 1))
    from prunelab.inference.direct_conv import direct_conv2d, pack_direct  # imports this module

    for residual in (None, np.ones((1, 1, 3, 3), dtype=np.float32)):
        direct_conv2d(np.ones((1, 1, 3, 3), dtype=np.float32), pack_direct(np.ones((1, 1, 3, 3))),
                      1, (3, 3), (1, 1), relu=True, residual=residual)
