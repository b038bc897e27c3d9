"""Datasets: IDX reading, checksummed download, cache dir. Nothing about models.

Files are looked for, in order, in the data dir (argument or ``PRUNELAB_DATA``), then the user
cache (``PRUNELAB_CACHE``, else ``$XDG_CACHE_HOME/prunelab``, else ``~/.cache/prunelab``), then
the ``data/`` folder of a source checkout (the repository ships the genuine files), and are
otherwise downloaded into the cache. Every file is checked against its published checksum
before use, wherever it comes from.

>>> data = load_dataset("fashion-mnist")  # doctest: +SKIP
>>> data.train_x.shape, data.train_x.dtype
(torch.Size([60000, 784]), torch.float32)
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "test_set_fingerprint",
    "DataFile",
    "Dataset",
    "DatasetSpec",
    "cache_dir",
    "checkout_data_dir",
    "find_or_fetch",
    "load_dataset",
    "read_idx",
    "verify_file",
]

log = logging.getLogger(__name__)

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class DataFile:
    """One published gzip file and its checksums."""

    name: str
    """File name, e.g. ``train-images-idx3-ubyte.gz``."""
    md5: str
    """The published MD5 of the gzip file."""
    sha256: str
    """SHA-256 of the same gzip file."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's four IDX files come from."""

    name: str
    """Folder name under the data dir and cache, e.g. ``fashion-mnist``."""
    mirrors: tuple[str, ...]
    """Base URLs tried in order; a file's URL is ``mirror + file name``."""
    train_images: DataFile
    """Training images, (N, 28, 28) uint8."""
    train_labels: DataFile
    """Training labels, (N,) uint8."""
    test_images: DataFile
    """Test images."""
    test_labels: DataFile
    """Test labels."""

    def files(self) -> tuple[DataFile, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        train_images=DataFile(
            "train-images-idx3-ubyte.gz",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        train_labels=DataFile(
            "train-labels-idx1-ubyte.gz",
            "25c81989df183df01b3e8a0aad5dffbe",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        test_images=DataFile(
            "t10k-images-idx3-ubyte.gz",
            "bef4ecab320f06d8554ea6380940ec79",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        test_labels=DataFile(
            "t10k-labels-idx1-ubyte.gz",
            "bb300cfdad3c16e7a12a480ee83cd310",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        train_images=DataFile(
            "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        train_labels=DataFile(
            "train-labels-idx1-ubyte.gz",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        test_images=DataFile(
            "t10k-images-idx3-ubyte.gz",
            "9fb629c4189551a2d022fa330f9573f3",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        test_labels=DataFile(
            "t10k-labels-idx1-ubyte.gz",
            "ec29112dd5afa0611ce80d1b7f02629c",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    ),
}


@dataclass(frozen=True)
class Dataset:
    """Images flattened to float32 in [0, 1] and int64 labels, as CPU tensors."""

    name: str
    """Dataset name, a key of ``DATASETS``."""
    train_x: torch.Tensor
    """(N_train, 784) float32."""
    train_y: torch.Tensor
    """(N_train,) int64."""
    test_x: torch.Tensor
    """(N_test, 784) float32."""
    test_y: torch.Tensor
    """(N_test,) int64."""


def cache_dir() -> Path:
    """The user cache: ``PRUNELAB_CACHE``, else ``$XDG_CACHE_HOME/prunelab``, else ``~/.cache``."""
    if env := os.environ.get("PRUNELAB_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunelab"


def checkout_data_dir() -> Path | None:
    """The source checkout's ``data/`` folder, or None when prunelab is not run from one.

    ``src/prunelab/data.py`` -> the repository root, recognised by its ``pyproject.toml``; an
    installed wheel has neither, so it never picks up an unrelated ``data/`` folder.
    """
    root = Path(__file__).resolve().parents[2]
    data = root / "data"
    return data if (root / "pyproject.toml").is_file() and data.is_dir() else None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gzip-compressed IDX file into an array of its declared type and shape."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero, type_code, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX header {raw[:4].hex()} (expected 0000, a type code in "
            f"{sorted(hex(c) for c in _IDX_DTYPES)} and at least one dimension)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions but the file ends early")
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _IDX_DTYPES[type_code]
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize >= 2**62:  # even with a 0 in it
        raise ValueError(f"{path}: IDX header declares shape {shape}, too large for any array")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: np.prod would overflow
    if len(raw) - header_len != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header_len} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def verify_file(path: Path, expected: DataFile) -> None:
    """Raise ``ValueError`` naming the file and both checksums when ``path`` is not ``expected``."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    if md5.hexdigest() != expected.md5:
        raise ValueError(
            f"checksum mismatch for {path}: expected MD5 {expected.md5}, got {md5.hexdigest()}"
        )
    if sha.hexdigest() != expected.sha256:
        raise ValueError(
            f"checksum mismatch for {path}: expected SHA-256 {expected.sha256}, "
            f"got {sha.hexdigest()}"
        )


def _download(spec: DatasetSpec, file: DataFile, dest: Path, timeout: float) -> list[str]:
    """Try every mirror; on success ``dest`` holds the verified file. Returns the failures."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for mirror in spec.mirrors:
        url = mirror + file.name
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{file.name}.",
                                        suffix=".part")
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s", url)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            verify_file(tmp, file)
            os.replace(tmp, dest)  # only a verified file ever appears under its real name
            return []
        except (OSError, urllib.error.URLError, ValueError) as e:
            failures.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    return failures


def find_or_fetch(
    spec: DatasetSpec,
    file: DataFile,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Path of a verified copy of ``file``: data dir, cache, source checkout, else a download.

    The first folder holding the file wins; a file there that fails its checksum is an error
    (never silently skipped for the next place).
    """
    data_dir = data_dir if data_dir is not None else os.environ.get("PRUNELAB_DATA")
    cached = cache_dir() / spec.name / file.name
    checkout = checkout_data_dir()
    places = [Path(data_dir) / spec.name] if data_dir is not None else []
    places += [cached.parent] + ([checkout / spec.name] if checkout is not None else [])
    for place in places:
        if (place / file.name).is_file():
            verify_file(place / file.name, file)
            return place / file.name
    failures = _download(spec, file, cached, timeout) if download else ["downloads disabled"]
    if failures:
        where = " or ".join(str(p) for p in places)
        raise FileNotFoundError(
            f"{spec.name}: {file.name} is not in {where} and could not be "
            f"downloaded ({'; '.join(failures)}). Put the four IDX .gz files in "
            f"{cached.parent}/, or pass --data-dir / set PRUNELAB_DATA to a folder holding "
            f"{spec.name}/"
        )
    return cached


def _images(path: Path) -> torch.Tensor:
    arr = read_idx(path)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected (N, rows, cols) uint8 images, got {arr.dtype} {arr.shape}"
        )
    # uint8 -> float32 in [0, 1], flattened to (N, rows * cols).
    return torch.from_numpy(arr.reshape(len(arr), -1).astype(np.float32) / np.float32(255.0))


def _labels(path: Path, n_images: int) -> torch.Tensor:
    arr = read_idx(path)
    if arr.ndim != 1 or len(arr) != n_images:
        raise ValueError(f"{path}: expected {n_images} labels, got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.int64))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Dataset:
    """Load a dataset of ``DATASETS`` as tensors, fetching and verifying files as needed."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    paths = [find_or_fetch(spec, f, data_dir, download) for f in spec.files()]
    train_x, test_x = _images(paths[0]), _images(paths[2])
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=_labels(paths[1], len(train_x)),
        test_x=test_x,
        test_y=_labels(paths[3], len(test_x)),
    )


def test_set_fingerprint(data: Dataset) -> dict[str, object]:
    """What identifies a test set: name, size and a SHA-256 of its images and labels."""
    digest = hashlib.sha256(data.test_x.cpu().numpy().tobytes())
    digest.update(data.test_y.cpu().numpy().tobytes())
    return {"dataset": data.name, "size": len(data.test_y), "sha256": digest.hexdigest()}
