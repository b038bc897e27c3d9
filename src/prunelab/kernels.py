"""Sparse matrix x dense matrix kernels for weight-pruned layers, compiled with numba.

Activations are kept *feature-major*, ``h`` of shape (in, batch), so each nonzero weight
``W[r, j]`` does one axpy over a contiguous row ``h[j, :]``. Large batches are cut into tiles
of ``TILE`` samples that each thread owns (its slice of the activations stays in its L2
cache); small batches are split over output rows instead. A single sample goes by input
columns instead (``csc_matvec``), skipping the columns of zero inputs: after a ReLU, and for
background pixels, most inputs are zero.

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

import numba
import numpy as np

__all__ = [
    "SERIAL_WORK", "TILE", "chain_matvec", "csc_arrays", "csc_matvec", "csr_arrays",
    "csr_matmul", "pack_chain", "warm_up",
]

TILE = 256
"""Samples per batch tile: 1000 features x 256 samples x 4 bytes = 1 MiB, half an L2."""

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
