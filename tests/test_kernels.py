"""The numba CSR kernel against dense matrix products."""

from __future__ import annotations

import numpy as np
import pytest

from prunelab.kernels import TILE, csc_arrays, csc_matvec, csr_arrays, csr_matmul


@pytest.mark.parametrize("batch", [1, 3, 64, 2 * TILE + 5])
@pytest.mark.parametrize("relu", [True, False])
def test_matches_dense_product(batch, relu):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 50)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    w[3] = 0  # an empty row
    h = rng.standard_normal((50, batch)).astype(np.float32)
    expected = w @ h
    if relu:
        expected = np.maximum(expected, 0)
    got = csr_matmul(*csr_arrays(w), h, relu=relu)
    np.testing.assert_allclose(got, expected, atol=1e-5)


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
