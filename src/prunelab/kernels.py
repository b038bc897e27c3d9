"""Sparse matrix x dense matrix kernels for weight-pruned layers, compiled with numba.

Activations are kept *feature-major*, ``h`` of shape (in, batch), so each nonzero weight
``W[r, j]`` does one axpy over a contiguous row ``h[j, :]``. Large batches are cut into tiles
of ``TILE`` samples that each thread owns (its slice of the activations stays in its L2
cache); small batches are split over output rows instead. A single sample goes by input
columns instead (``csc_matvec``), skipping the columns of zero inputs: after a ReLU, and for
background pixels, most inputs are zero.

A whole network of such layers runs in one compiled call, ``chain_matmul``: each thread takes
tiles of ``CHAIN_TILE`` samples through every layer (its activations never leave its cache and
no thread waits for another between layers); a batch too small for a tile per thread is split
over each layer's output rows instead. Its accumulator is a stack buffer (``_stack_floats``):
numba's arrays live on the heap, where the compiler must assume they may overlap the
activations, and reloads and stores the accumulator for every nonzero.

The functions are compiled on first call and cached on disk (``cache=True``); ``warm_up``
triggers the compilation so that no timed call pays for it.

>>> import numpy as np
>>> w = np.array([[0.0, 2.0], [1.0, 0.0]], dtype=np.float32)
>>> indptr, indices, data = csr_arrays(w)
>>> h = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)  # (in=2, batch=2)
>>> csr_matmul(indptr, indices, data, h, relu=False)
array([[6., 8.],
       [1., 2.]], dtype=float32)
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = [
    "CHAIN_TILE", "SERIAL_WORK", "TILE", "chain_matmul", "chain_matvec", "csc_arrays",
    "csc_matvec", "csr_arrays", "csr_matmul", "pack_chain", "pack_csr_chain", "warm_up",
]

TILE = 256
"""Samples per batch tile: 1000 features x 256 samples x 4 bytes = 1 MiB, half an L2."""

CHAIN_TILE = 64
"""Samples per tile in ``chain_matmul``, a compile-time constant. Measured (AVX-512, numba 0.68):
64 compiles to four 16-lane FMAs per nonzero into four accumulator registers; 32 is unrolled
into scalar code, 5-7x slower; 128 was within 10 % of 64 at batch 1024, half as fast at batch
64 (padding), and doubles the cache each thread needs."""

SERIAL_WORK = 200_000
"""Below this many multiply-adds a call stays on one thread: waking others costs more."""


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
    out[:] = 0.0
    for j in range(colptr.size - 1):
        v = x[j]
        if v != 0.0:
            for p in range(colptr[j], colptr[j + 1]):
                out[rows[p]] += data[p] * v
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
                for p in range(colptr[c0 + j], colptr[c0 + j + 1]):
                    out[rows[p]] += data[p] * v
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


@numba.njit(cache=True, fastmath=True, nogil=True)
def _block(indptr, indices, data, h, out, relu, r0, r1, s, m):  # pragma: no cover - compiled
    # Rows r0:r1 of out[:, s:s+m] from all of h (in, m); a private acc lets the axpy vectorise.
    acc = np.empty(m, dtype=np.float32)
    for r in range(r0, r1):
        acc[:] = 0.0
        for p in range(indptr[r], indptr[r + 1]):
            w = data[p]
            j = indices[p]
            for b in range(m):
                acc[b] += w * h[j, b]
        for b in range(m):
            v = acc[b]
            out[r, s + b] = 0.0 if relu and v < 0.0 else v


@numba.njit(cache=True, fastmath=True, nogil=True)
def _dots(indptr, indices, data, x, out, relu, r0, r1):  # pragma: no cover - compiled
    # One sample: a dot product per row. Four partial sums hide the FP add latency.
    for r in range(r0, r1):
        v0 = v1 = v2 = v3 = np.float32(0.0)
        p, stop = indptr[r], indptr[r + 1]
        while p + 4 <= stop:
            v0 += data[p] * x[indices[p]]
            v1 += data[p + 1] * x[indices[p + 1]]
            v2 += data[p + 2] * x[indices[p + 2]]
            v3 += data[p + 3] * x[indices[p + 3]]
            p += 4
        while p < stop:
            v0 += data[p] * x[indices[p]]
            p += 1
        v = (v0 + v1) + (v2 + v3)
        out[r] = 0.0 if relu and v < 0.0 else v


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _by_rows(indptr, indices, data, h, out, relu, chunks):  # pragma: no cover - compiled
    n_out = indptr.size - 1
    n = h.shape[1]
    step = (n_out + chunks - 1) // chunks
    for c in numba.prange(chunks):
        r0 = min(c * step, n_out)
        r1 = min(r0 + step, n_out)
        if n == 1:
            _dots(indptr, indices, data, h.reshape(h.shape[0]), out.reshape(out.shape[0]), relu,
                  r0, r1)
        else:
            _block(indptr, indices, data, h, out, relu, r0, r1, 0, n)


@numba.njit(cache=True, fastmath=True, nogil=True)
def _serial(indptr, indices, data, h, out, relu):  # pragma: no cover - compiled
    if h.shape[1] == 1:  # reshape (not h[:, 0]) keeps the contiguous layout known to numba
        _dots(indptr, indices, data, h.reshape(h.shape[0]), out.reshape(out.shape[0]), relu,
              0, indptr.size - 1)
    else:
        _block(indptr, indices, data, h, out, relu, 0, indptr.size - 1, 0, h.shape[1])


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _by_tiles(indptr, indices, data, h, out, relu, tile):  # pragma: no cover - compiled
    n = h.shape[1]
    for t in numba.prange((n + tile - 1) // tile):
        s = t * tile
        # Pack the tile: rows of a strided slice alias in the caches (rows 4 KiB apart at 1024).
        packed = np.ascontiguousarray(h[:, s:min(s + tile, n)])
        _block(indptr, indices, data, packed, out, relu, 0, indptr.size - 1, s, packed.shape[1])


def csr_matmul(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, h: np.ndarray,
               relu: bool, out: np.ndarray | None = None) -> np.ndarray:
    """``W @ h`` (then ReLU when ``relu``) for CSR ``W`` (out, in) and feature-major ``h``.

    ``h`` is a C-contiguous float32 (in, batch) array; returns (out, batch).
    """
    n = h.shape[1]
    if out is None:
        out = np.empty((indptr.size - 1, n), dtype=np.float32)
    if data.size * n < SERIAL_WORK or numba.get_num_threads() == 1:
        _serial(indptr, indices, data, h, out, relu)
    elif n >= 2 * TILE:
        _by_tiles(indptr, indices, data, h, out, relu, TILE)
    else:  # too few samples to tile: split the output rows between threads
        _by_rows(indptr, indices, data, h, out, relu, 4 * numba.get_num_threads())
    return out


def pack_csr_chain(layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   biases: list[np.ndarray | None],
                   input_index: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flat arrays for ``chain_matmul``: each layer's ``csr_arrays`` and bias (``None``: zeros),
    and the input features the first layer reads, in order."""
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
            np.ascontiguousarray(input_index, dtype=np.int64))


@intrinsic
def _stack_floats(typingctx, n):  # pragma: no cover - compiled
    """A float32 buffer of literal size ``n`` on the stack (uninitialised), as a pointer."""
    if not isinstance(n, types.IntegerLiteral):
        return None

    def codegen(context, builder, signature, args):
        buf = cgutils.alloca_once(builder, ir.ArrayType(ir.FloatType(), n.literal_value))
        return builder.bitcast(buf, ir.FloatType().as_pointer())

    return types.CPointer(types.float32)(n), codegen


@numba.njit(cache=True, fastmath=True, nogil=True)
def _tile_rows(indptr, indices, data, bias, hin, hout, relu, r0, r1):  # pragma: no cover
    # Rows r0:r1 of hout (out, CHAIN_TILE) from hin (in, CHAIN_TILE). The accumulator lives on
    # the stack, so the compiler knows it aliases nothing and keeps it in vector registers
    # (measured 1.5x faster than a heap array); unsigned indices skip the wraparound checks.
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
def _load_tile(x, s, index, tile, j0, j1):  # pragma: no cover - compiled
    # Samples s: s+CHAIN_TILE of batch-major x, features index[j0:j1], into rows j0:j1 of the
    # feature-major tile; the columns past the batch are zeroed.
    m = min(CHAIN_TILE, x.shape[0] - s)
    for j in range(j0, j1):
        f = index[j]
        for b in range(m):
            tile[j, b] = x[s + b, f]
        for b in range(m, CHAIN_TILE):
            tile[j, b] = 0.0


@numba.njit(cache=True, fastmath=True, nogil=True)
def _store_tile(tile, s, out):  # pragma: no cover - compiled
    for b in range(min(CHAIN_TILE, out.shape[0] - s)):
        for r in range(out.shape[1]):
            out[s + b, r] = tile[r, b]


@numba.njit(cache=True, fastmath=True, nogil=True)
def _layer_args(indptr, bias, ptr_off, bias_off, sizes, layer):  # pragma: no cover - compiled
    return (indptr[ptr_off[layer]:ptr_off[layer] + sizes[layer] + 1],
            bias[bias_off[layer]:bias_off[layer] + sizes[layer]])


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _chain_tiles(indptr, indices, data, bias, ptr_off, bias_off, sizes, index, x, out,
                 work):  # pragma: no cover - compiled
    n_tiles = (x.shape[0] + CHAIN_TILE - 1) // CHAIN_TILE
    n_threads = work.shape[0]
    n_layers = sizes.size
    for t in numba.prange(n_threads):  # thread t takes tiles t, t + n_threads, ...
        a, b = work[t, 0], work[t, 1]
        for tile in range(t, n_tiles, n_threads):
            _load_tile(x, tile * CHAIN_TILE, index, a, 0, index.size)
            for layer in range(n_layers):
                ptr, bs = _layer_args(indptr, bias, ptr_off, bias_off, sizes, layer)
                src, dst = (a, b) if layer % 2 == 0 else (b, a)
                _tile_rows(ptr, indices, data, bs, src, dst, layer < n_layers - 1, 0,
                           sizes[layer])
            _store_tile(b if n_layers % 2 == 1 else a, tile * CHAIN_TILE, out)


@numba.njit(cache=True, parallel=True, fastmath=True, nogil=True)
def _chain_rows(indptr, indices, data, bias, ptr_off, bias_off, sizes, index, x, out,
                work, chunks):  # pragma: no cover - compiled
    # One tile (x.shape[0] <= CHAIN_TILE), each layer's rows split over the threads.
    a, b = work[0, 0], work[0, 1]
    step = (index.size + chunks - 1) // chunks
    for c in numba.prange(chunks):  # the tile's transpose alone would take a tenth of the time
        _load_tile(x, 0, index, a, min(c * step, index.size), min((c + 1) * step, index.size))
    n_layers = sizes.size
    for layer in range(n_layers):
        ptr, bs = _layer_args(indptr, bias, ptr_off, bias_off, sizes, layer)
        src, dst = (a, b) if layer % 2 == 0 else (b, a)
        n_out = sizes[layer]
        step = (n_out + chunks - 1) // chunks
        for c in numba.prange(chunks):
            r0 = min(c * step, n_out)
            _tile_rows(ptr, indices, data, bs, src, dst, layer < n_layers - 1, r0,
                       min(r0 + step, n_out))
    _store_tile(b if n_layers % 2 == 1 else a, 0, out)


_WORKSPACES: dict[tuple[int, int, int], np.ndarray] = {}


def _workspace(width: int, threads: int) -> np.ndarray:
    """Scratch activations for ``chain_matmul``, two tiles per kernel thread, kept per calling
    thread and size. Measured (weight-pruned 95 %, batch 64, 2 threads): 0.33 ms per call
    instead of 0.37 ms with two fresh 256 KiB tiles per call."""
    key = (threading.get_ident(), width, threads)
    work = _WORKSPACES.get(key)
    if work is None:
        work = _WORKSPACES[key] = np.zeros((threads, 2, width, CHAIN_TILE), dtype=np.float32)
    return work


def chain_matmul(packed: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    """A whole ReLU network (``pack_csr_chain``) on batch-major ``x`` (batch, features), in one
    compiled call; returns (batch, outputs) float32.

    Tiles of ``CHAIN_TILE`` samples go to the threads in turn; a batch of less than a tile per
    thread is split over each layer's rows. A small job stays on one thread.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    sizes = packed[6]
    out = np.empty((x.shape[0], int(sizes[-1])), dtype=np.float32)
    n_tiles = -(-x.shape[0] // CHAIN_TILE)
    if n_tiles == 0:
        return out
    threads = 1 if packed[2].size * x.shape[0] < SERIAL_WORK else numba.get_num_threads()
    width = max(packed[7].size, int(sizes.max()))
    if 1 < threads and n_tiles < threads:
        _chain_rows(*packed, x, out, _workspace(width, 1), 2 * threads)
    else:
        _chain_tiles(*packed, x, out, _workspace(width, min(threads, n_tiles)))
    return out


def warm_up() -> None:
    """Compile (or load from the cache) every kernel variant."""
    w = np.eye(3, dtype=np.float32)
    arrays = csr_arrays(w)
    for batch in (1, 64, 2 * TILE):
        h = np.ones((3, batch), dtype=np.float32)
        out = np.empty_like(h)
        _serial(*arrays, h, out, True)
        _by_rows(*arrays, h, out, True, 2)
        _by_tiles(*arrays, h, out, True, TILE)
    csc_matvec(*csc_arrays(w), np.ones(3, dtype=np.float32), 3, relu=True)
    chain_matvec(pack_chain([csc_arrays(w)], np.arange(3), [3]), np.ones(3, dtype=np.float32))
    packed = pack_csr_chain([arrays, arrays], [None, None], np.arange(3))
    x = np.ones((1, 3), dtype=np.float32)
    work = _workspace(3, 1)
    _chain_tiles(*packed, x, np.empty((1, 3), dtype=np.float32), work)
    _chain_rows(*packed, x, np.empty((1, 3), dtype=np.float32), work, 2)
