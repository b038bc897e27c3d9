"""Shared fixtures: tiny generated IDX datasets registered under the real dataset names."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prunelab import data as data_mod
from prunelab.data import DataFile, DatasetSpec

# As the study commands set it before any computation (prunelab.train.strict_blas): the tests
# compare numbers computed in this process with numbers from spawned workers.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
"""The genuine IDX files the repository ships (``data/``)."""


def idx_bytes(arr: np.ndarray) -> bytes:
    """Raw IDX encoding of a uint8 array (the format of the MNIST files)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(idx_bytes(arr), mtime=0))


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Learnable 28x28 images: class c lights up a 6x6 block whose place depends on c."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + (c // 5) * 12, 1 + (c % 5) * 5
        images[i, r : r + 6, col : col + 5] = 255
    return images


def make_dataset_dir(root: Path, name: str, n_train: int = 512, n_test: int = 128) -> DatasetSpec:
    """Write four IDX gzip files under ``root/name`` and return a spec with their checksums."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        arrays[f"{split}-images-idx3-ubyte.gz"] = make_images(labels, rng)
        arrays[f"{split}-labels-idx1-ubyte.gz"] = labels
    files = []
    for fname, arr in arrays.items():
        path = root / name / fname
        write_idx(path, arr)
        raw = path.read_bytes()
        files.append(DataFile(fname, hashlib.md5(raw).hexdigest(), hashlib.sha256(raw).hexdigest()))
    return DatasetSpec(name, ("file:///nonexistent-prunelab-mirror/",), *files)


def invoke(*args):
    """Run the ``prunelab`` CLI in-process; arguments may be paths or numbers."""
    from prunelab.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *needles: str, alone: bool = False) -> None:
    """A non-zero exit whose last line is the one ``Error:`` line, holding every needle.

    ``alone``: nothing else was printed either.
    """
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert not alone or len(lines) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: torch's thread pool only adds overhead on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's cache or data dir in tests, nor the checkout's data/
    (tests that want the genuine files pass ``REPO_DATA`` or patch ``checkout_data_dir``)."""
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    monkeypatch.setattr(data_mod, "checkout_data_dir", lambda: None)


@contextmanager
def registered_tiny_data(root: Path) -> Iterator[DatasetSpec]:
    """A tiny generated ``fashion-mnist`` in ``root/data``, registered while the block runs
    (for module-scoped fixtures; spawned workers get the spec with their jobs)."""
    spec = make_dataset_dir(root / "data", "fashion-mnist")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(data_mod.DATASETS, "fashion-mnist", spec)
        yield spec


@pytest.fixture
def tiny_data_dir(tmp_path, monkeypatch) -> Path:
    """A data dir with a tiny generated ``fashion-mnist``, registered with its checksums."""
    spec = make_dataset_dir(tmp_path / "data", "fashion-mnist")
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist", spec)
    return tmp_path / "data"
