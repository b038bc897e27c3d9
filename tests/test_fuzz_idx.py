"""The IDX reader against random and damaged files: it returns exactly what the header declares
or raises one ValueError line naming the file; never another exception."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from prunelab import data as data_mod
from prunelab.data import DataFile, DatasetSpec, read_idx

from .conftest import assert_one_line_error, idx_bytes, invoke
from .fuzzing import fuzz

DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def idx_files(draw) -> bytes:
    """IDX files near the format: any magic, type code and dimensions, payloads a little short
    or long; a quarter of them valid."""
    zero = draw(st.sampled_from([b"\0\0", b"\0\1", b"\x1f\x8b"]) | st.binary(min_size=2,
                                                                             max_size=2))
    code = draw(st.sampled_from(sorted(DTYPES)) | st.integers(0, 255))
    dims = draw(st.lists(st.integers(0, 6) | st.sampled_from([2**16, 2**31, 2**32 - 1]),
                         max_size=5))
    ndim = draw(st.just(len(dims)) | st.integers(0, 255))
    itemsize = np.dtype(DTYPES.get(code, np.uint8)).itemsize
    size = int(np.prod(dims)) * itemsize if max(dims, default=0) <= 6 else draw(st.integers(0, 64))
    size = max(0, size + draw(st.sampled_from([0, 0, -1, 1, -itemsize, 7])))
    header = zero + bytes([code, ndim % 256]) + struct.pack(f">{len(dims)}I", *dims)
    return header + draw(st.binary(min_size=size, max_size=size))


def _check(path, raw: bytes) -> None:
    path.write_bytes(raw)
    try:
        arr = read_idx(path)
    except ValueError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
        return
    plain = gzip.decompress(raw)  # it read: the file was a well-formed IDX
    ndim = plain[3]
    shape = struct.unpack(f">{ndim}I", plain[4: 4 + 4 * ndim])
    assert plain[:2] == b"\0\0" and arr.shape == shape
    assert arr.dtype == np.dtype(DTYPES[plain[2]]).newbyteorder("=")
    assert arr.tobytes() == np.frombuffer(plain, DTYPES[plain[2]], offset=4 + 4 * ndim) \
        .astype(arr.dtype).tobytes()


@fuzz(600)
@given(raw=idx_files())
@example(raw=b"\0\0\x08\x04" + struct.pack(">4I", *[2**16] * 4))  # 2**64 elements: np.prod wraps
def test_idx_files(tmp_path, raw):
    _check(tmp_path / "f.gz", gzip.compress(raw, mtime=0))


@fuzz(300)
@given(raw=st.binary(max_size=200), cut=st.integers(0, 200), flip=st.integers(0, 255))
def test_random_bytes_and_damaged_gzip(tmp_path, raw, cut, flip):
    path = tmp_path / "f.gz"
    _check(path, raw)  # not gzip at all
    good = gzip.compress(idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4)), mtime=0)
    _check(path, good[: cut % len(good)])  # truncated
    damaged = bytearray(good)
    damaged[cut % len(good)] ^= flip or 1
    _check(path, bytes(damaged))  # one byte changed: a CRC or header error, or still valid
    _check(path, gzip.compress(raw, mtime=0))  # gzip of random bytes


def test_bad_idx_through_the_cli(tmp_path, monkeypatch):
    """A data file whose checksum is registered but whose content is not IDX: one line naming
    it, exit code 1, and no run folder."""
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    files = []
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        raw = gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 10, 28, 28) + b"\0" * 99)
        (folder / name).write_bytes(raw)
        files.append(DataFile(name, hashlib.md5(raw).hexdigest(),
                              hashlib.sha256(raw).hexdigest()))
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist",
                        DatasetSpec("fashion-mnist", ("file:///nonexistent/",), *files))
    result = invoke("train", "--epochs", "1", "--hidden", "8", "--data-dir", tmp_path / "data",
                    "--out", tmp_path / "run")
    assert_one_line_error(result, "train-images-idx3-ubyte.gz", "7840 bytes of data")
    assert result.exit_code == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dims", [(2**16,) * 4, (0, 2**32 - 1), (0, 2**32 - 1, 2**32 - 1)])
def test_declared_sizes_are_exact_integers(tmp_path, dims):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(b"\0\0\x08" + bytes([len(dims)])
                                   + struct.pack(f">{len(dims)}I", *dims)))
    if dims == (0, 2**32 - 1):
        assert read_idx(path).shape == dims  # zero elements: a valid, empty file
    else:  # 2**64 elements (np.prod wraps to 0), or no array of that shape can exist
        with pytest.raises(ValueError, match="f.gz: IDX header declares shape"):
            read_idx(path)
