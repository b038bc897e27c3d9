"""The numba CSR kernel against dense matrix products."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest

from prunelab.inference import kernels
from prunelab.inference.kernels import (
    CHAIN_TILE,
    chain_matmul,
    csc_arrays,
    csc_matvec,
    csr_arrays,
    pack_csr_chain,
    tile_samples,
)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, CHAIN_TILE, 5 * CHAIN_TILE + 5])
@pytest.mark.parametrize(("relu", "bias"), [(True, False), (False, False), (True, True)])
def test_one_feature_major_layer_matches_dense_product(batch, relu, bias, threads):
    """A single layer on (in, batch) activations, as ``CSRNumbaLayer`` runs it."""
    rng = np.random.default_rng(batch)
    w = rng.standard_normal((37, 500)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    w[3] = 0  # an empty row
    b = rng.standard_normal(37).astype(np.float32) if bias else None
    h = rng.standard_normal((500, batch)).astype(np.float32)
    expected = w @ h + (b[:, None] if bias else 0)
    if relu:
        expected = np.maximum(expected, 0)
    packed = pack_csr_chain([csr_arrays(w)], [b], np.arange(500), relu_last=relu)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = chain_matmul(packed, h, by_feature=True)
    finally:
        numba.set_num_threads(previous)
    assert got.shape == (37, batch)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_csr_arrays_of_known_matrix():
    indptr, indices, data = csr_arrays(np.array([[0, 1, 2], [0, 0, 0], [3, 0, 0]]))
    assert indptr.tolist() == [0, 2, 2, 3]
    assert indices.tolist() == [1, 2, 0]
    assert data.tolist() == [1.0, 2.0, 3.0]
    assert indptr.dtype == indices.dtype == np.int32 and data.dtype == np.float32


@pytest.mark.parametrize("relu", [True, False])
def test_single_sample_by_columns_matches_dense(relu):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((29, 40)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    x = np.maximum(rng.standard_normal(40), 0).astype(np.float32)  # ReLU-like: half zero
    expected = w @ x
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(csc_matvec(*csc_arrays(w), x, 29, relu), expected, atol=1e-5)


def _network(rng, sizes, density, bias, index=None):
    layers, biases, weights = [], [], []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
        w[rng.random(w.shape) > density] = 0
        w[1] = 0  # an empty row
        weights.append(w)
        layers.append(csr_arrays(w))
        biases.append(rng.standard_normal(n_out).astype(np.float32) if bias else None)
    index = np.arange(sizes[0]) if index is None else index
    return weights, biases, pack_csr_chain(layers, biases, index)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 5, CHAIN_TILE, CHAIN_TILE + 1, 5 * CHAIN_TILE + 3])
@pytest.mark.parametrize("bias", [False, True])
def test_whole_network_in_one_call_matches_dense_layers(batch, bias, threads):
    rng = np.random.default_rng(batch)
    sizes = (60, 45, 30, 7)
    weights, biases, packed = _network(rng, sizes, density=0.3, bias=bias,
                                       index=np.arange(10, 70))
    x = rng.random((batch, 90)).astype(np.float32)  # the net reads features 10..69
    h = x[:, 10:70]
    for i, w in enumerate(weights):
        h = h @ w.T + (biases[i] if bias else 0)
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = chain_matmul(packed, x)
    finally:
        numba.set_num_threads(previous)
    assert got.shape == (batch, 7)
    np.testing.assert_allclose(got, h, atol=1e-4)


def test_locality_order_puts_rows_that_share_columns_together():
    """Rows of four groups, each group on its own 20 columns, shuffled: the order takes each
    group's rows in one run (three changes of group, against about 30 in the given order)."""
    rng = np.random.default_rng(0)
    groups = rng.permutation(np.repeat(np.arange(4), 10))
    w = np.zeros((40, 80), np.float32)
    for r, g in enumerate(groups):
        w[r, rng.choice(20, size=6, replace=False) + 20 * g] = 1 + rng.random(6)
    w[groups == 2, 40] = 1  # group 2 has the longest rows: it goes first
    w[groups == 2, 41] = 1
    indptr, indices, _ = csr_arrays(w)
    order = kernels.locality_order(indptr, indices, 80)
    assert sorted(order.tolist()) == list(range(40))
    assert np.count_nonzero(np.diff(groups[order])) == 3
    assert np.count_nonzero(np.diff(groups)) > 20
    assert groups[order[0]] == 2


def test_locality_order_keeps_the_given_order_when_too_costly(monkeypatch):
    """Rows 0 and 2 share their columns: ordered, 2 follows 0; over budget, nothing moves."""
    w = np.zeros((4, 8), np.float32)
    w[[0, 2], :2] = 1
    w[1, 5] = w[3, 6] = 1
    indptr, indices, _ = csr_arrays(w)
    np.testing.assert_array_equal(kernels.locality_order(indptr, indices, 8), [0, 2, 1, 3])
    monkeypatch.setattr(kernels, "LOCALITY_WORK", 0)
    np.testing.assert_array_equal(kernels.locality_order(indptr, indices, 8), np.arange(4))


def test_locality_order_rejects_columns_past_the_width_and_an_empty_window():
    indptr, indices, _ = csr_arrays(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"column indices must lie in 0\.\.1"):
        kernels.locality_order(indptr, indices, 2)
    with pytest.raises(ValueError, match="window must be at least 1"):
        kernels.locality_order(indptr, indices, 3, window=0)


@pytest.mark.parametrize("bias", [False, True])
def test_hidden_units_renumbered_for_locality_compute_the_same(bias):
    """``pack_csr_chain`` renumbers the hidden units (rows, biases and the next layer's columns
    together); the outputs keep their order and equal the given order's."""
    rng = np.random.default_rng(11)
    weights, biases, _ = _network(rng, (50, 64, 40, 6), density=0.2, bias=bias)
    layers = [csr_arrays(w) for w in weights]
    plain = pack_csr_chain(layers, biases, np.arange(50), locality=False)
    local = pack_csr_chain(layers, biases, np.arange(50))
    assert not np.array_equal(plain[1], local[1])  # renumbered
    np.testing.assert_array_equal(np.sort(plain[2]), np.sort(local[2]))  # the same nonzeros
    indptr, indices = local[0], local[1]
    for start, end in zip(indptr[:-1], indptr[1:], strict=True):
        assert np.all(np.diff(indices[start:end]) > 0)  # each row's columns still sorted
    for batch in (1, 9, CHAIN_TILE + 7):
        x = rng.random((batch, 50)).astype(np.float32)
        np.testing.assert_allclose(chain_matmul(local, x), chain_matmul(plain, x),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(chain_matmul(local, x.T, by_feature=True),
                                   chain_matmul(plain, x.T, by_feature=True), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("kept", [0.2, 0.6, 1.0])
def test_input_features_gathered_or_read_in_place(kept):
    """Few features read: the tile gathers them; most: the first layer reads the input's own
    columns (transposed in register blocks, remainders element by element). Same result."""
    rng = np.random.default_rng(3)
    index = np.sort(rng.choice(203, size=int(kept * 203), replace=False))
    weights, _, packed = _network(rng, (index.size, 50, 9), density=0.4, bias=False, index=index)
    assert packed[-1] == (kept > 0.5)  # direct: the first layer reads x's columns
    for batch in (1, 17, CHAIN_TILE + 21):
        x = rng.random((batch, 203)).astype(np.float32)
        expected = np.maximum(x[:, index] @ weights[0].T, 0) @ weights[1].T
        np.testing.assert_allclose(chain_matmul(packed, x), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(chain_matmul(packed, x.T, by_feature=True), expected.T,
                                   rtol=1e-4, atol=1e-4)


def test_whole_network_work_is_split_both_ways(monkeypatch):
    """Big enough for threads: rows split for one tile, tiles for many (both paths exact)."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two threads")
    called = []
    for name in ("_chain_rows", "_chain_tiles"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, k=kernel, n=name: (called.append(n), k(*a)))
    rng = np.random.default_rng(7)
    index = np.arange(319, 19, -1)  # the input gather, split over the threads too
    weights, _, packed = _network(rng, (300, 600, 10), density=0.9, bias=False, index=index)
    previous = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        for batch in (12, 4 * CHAIN_TILE):
            x = rng.random((batch, 320)).astype(np.float32)
            expected = np.maximum(x[:, index] @ weights[0].T, 0) @ weights[1].T
            np.testing.assert_allclose(chain_matmul(packed, x), expected, rtol=1e-4, atol=1e-3)
    finally:
        numba.set_num_threads(previous)
    assert called == ["_chain_rows", "_chain_tiles"]


@pytest.mark.parametrize("samples", [16, 32, CHAIN_TILE])
@pytest.mark.parametrize("by_feature", [False, True])
def test_every_tile_width_matches_the_dense_network(samples, by_feature):
    """Tiles of 16 and 32 samples (explicit vector code) and of ``CHAIN_TILE`` give the same
    network, with biases, ReLUs and empty rows, for batches that fill no tile exactly."""
    rng = np.random.default_rng(samples)
    weights, biases, packed = _network(rng, (90, 130, 70, 11), density=0.3, bias=True)
    for batch in (1, samples - 3, 2 * samples + 5):
        x = rng.standard_normal((batch, 90)).astype(np.float32)
        expected = x
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            expected = expected @ w.T + b
            expected = np.maximum(expected, 0) if i < len(weights) - 1 else expected
        out = np.empty((11, batch) if by_feature else (batch, 11), dtype=np.float32)
        for threads in (1, 2):
            work = kernels._workspace(130, threads, samples)
            kernels._chain_tiles(*packed, np.ascontiguousarray(x.T) if by_feature else x,
                                 by_feature, out, work)
            np.testing.assert_allclose(out.T if by_feature else out, expected, rtol=1e-4,
                                       atol=1e-4)


@pytest.mark.parametrize(("batch", "threads", "samples"), [
    (1, 1, 16), (16, 1, 16), (17, 1, 32), (49, 1, CHAIN_TILE), (1000, 1, CHAIN_TILE),
    (10, 2, 16), (32, 2, 16), (64, 2, 32), (100, 2, CHAIN_TILE), (1024, 2, CHAIN_TILE),
])
def test_tile_width_follows_the_batch_and_threads(batch, threads, samples):
    """A batch of 64 on two threads: a tile of 32 each, not one of 64 for one thread; a
    small batch: a tile no wider than it needs."""
    assert tile_samples(batch, threads) == samples


def test_concurrent_calls_from_two_threads_do_not_share_scratch():
    """Each calling thread has its own scratch tiles (the kernels release the GIL)."""
    rng = np.random.default_rng(11)
    weights, _, packed = _network(rng, (120, 200, 10), density=0.5, bias=False)
    xs = [rng.random((3 * CHAIN_TILE + 1, 120)).astype(np.float32) for _ in range(2)]
    expected = [np.maximum(x @ weights[0].T, 0) @ weights[1].T for x in xs]
    errors = []

    def run(i):
        for _ in range(30):
            errors.append(float(np.abs(chain_matmul(packed, xs[i]) - expected[i]).max()))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 60 and max(errors) < 1e-3


def test_kernels_compile_and_agree_for_a_cpu_without_avx512(tmp_path):
    """The hand-written 16-lane vector code is legalised for AVX2 (two 8-lane halves): the
    kernels compiled for a Haswell CPU give the dense network's outputs at every tile width."""
    import os
    import subprocess
    import sys

    script = """
import numpy as np
from prunelab.inference import kernels
rng = np.random.default_rng(5)
ws = [rng.standard_normal(shape).astype(np.float32) for shape in ((40, 30), (7, 40))]
for w in ws:
    w[rng.random(w.shape) < 0.6] = 0
packed = kernels.pack_csr_chain([kernels.csr_arrays(w) for w in ws], [None, None], np.arange(30))
for batch in (3, 20, 50, 150):
    x = rng.standard_normal((batch, 30)).astype(np.float32)
    expected = np.maximum(x @ ws[0].T, 0) @ ws[1].T
    np.testing.assert_allclose(kernels.chain_matmul(packed, x), expected, rtol=1e-4, atol=1e-4)
asm = "".join(kernels._tile_rows_narrow.inspect_asm().values())
print("zmm" in asm)
"""
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path),
           "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma,+f16c,+sse4.2,+popcnt,+bmi,+bmi2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"  # no 512-bit registers in the Haswell build
