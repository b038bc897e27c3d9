import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab import data as data_mod
from prunelab.data import DataFile, DatasetSpec, find_or_fetch, load_dataset, read_idx, verify_file

from .conftest import REPO_DATA, idx_bytes, make_dataset_dir, write_idx


def test_read_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3)).astype(np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.array([[1, -2], [70000, 3]], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") * 2 + arr.tobytes()
    (tmp_path / "x.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), arr.astype(np.int32))


def test_wrong_idx_header(tmp_path):
    raw = bytearray(idx_bytes(np.zeros((2, 2), np.uint8)))
    raw[2] = 0x42  # unknown type code
    (tmp_path / "x.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match="bad IDX header"):
        read_idx(tmp_path / "x.gz")


def test_idx_payload_shorter_than_header_says(tmp_path):
    raw = idx_bytes(np.zeros((4, 3), np.uint8))[:-2]
    (tmp_path / "x.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match=r"declares shape \(4, 3\)"):
        read_idx(tmp_path / "x.gz")


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    (tmp_path / "x.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="not a readable gzip"):
        read_idx(tmp_path / "x.gz")


def test_not_gzip_at_all(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"hello, not gzip")
    with pytest.raises(ValueError, match="not a readable gzip"):
        read_idx(tmp_path / "x.gz")


def test_checksum_mismatch_names_file_expected_and_actual(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(b"abc")
    want = DataFile("f.gz", "0" * 32, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(ValueError) as err:
        verify_file(path, want)
    msg = str(err.value)
    assert str(path) in msg and "0" * 32 in msg and hashlib.md5(b"abc").hexdigest() in msg


def test_load_dataset_from_data_dir(tiny_data_dir):
    data = load_dataset("fashion-mnist", data_dir=tiny_data_dir)
    assert data.train_x.shape == (512, 784) and data.test_x.shape == (128, 784)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert 0.0 <= float(data.train_x.min()) and float(data.train_x.max()) == 1.0
    raw = read_idx(tiny_data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(data.train_x[3].numpy(), raw[3].reshape(-1) / 255.0, rtol=1e-6)


def test_env_var_data_dir(tiny_data_dir, monkeypatch):
    monkeypatch.setenv("PRUNELAB_DATA", str(tiny_data_dir))
    assert len(load_dataset("fashion-mnist").test_y) == 128


def test_corrupt_file_in_data_dir_is_rejected(tiny_data_dir):
    path = tiny_data_dir / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="checksum mismatch.*t10k-labels"):
        load_dataset("fashion-mnist", data_dir=tiny_data_dir)


def test_download_into_cache_from_mirror(tmp_path, monkeypatch):
    spec = make_dataset_dir(tmp_path / "mirror", "fashion-mnist")
    mirror = (tmp_path / "mirror" / "fashion-mnist").as_uri() + "/"
    spec = DatasetSpec(spec.name, ("file:///nonexistent-mirror/", mirror), *spec.files())
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist", spec)
    data = load_dataset("fashion-mnist")
    assert data.train_x.shape == (512, 784)
    cached = data_mod.cache_dir() / "fashion-mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(f.name for f in spec.files())


def test_download_with_bad_checksum_leaves_nothing_in_cache(tmp_path):
    spec = make_dataset_dir(tmp_path / "mirror", "fashion-mnist")
    mirror = (tmp_path / "mirror" / "fashion-mnist").as_uri() + "/"
    bad = DataFile(spec.train_labels.name, "f" * 32, "f" * 64)
    spec = DatasetSpec(spec.name, (mirror,), spec.train_images, bad, spec.test_images,
                       spec.test_labels)
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        find_or_fetch(spec, bad)
    assert not (data_mod.cache_dir() / "fashion-mnist" / bad.name).exists()


def test_no_data_and_no_network_says_where_to_put_files(tmp_path, monkeypatch):
    spec = make_dataset_dir(tmp_path / "elsewhere", "mnist")
    monkeypatch.setitem(data_mod.DATASETS, "mnist", spec)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "PRUNELAB_DATA" in msg and str(data_mod.cache_dir() / "mnist") in msg


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.parametrize(("name", "mean", "std"), [("fashion-mnist", 0.2860, 0.3530),
                                                   ("mnist", 0.1307, 0.3081)])
def test_real_files(name, mean, std):
    data = load_dataset(name, data_dir=REPO_DATA, download=False)
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert float(data.train_x.mean()) == pytest.approx(mean, abs=1e-4)
    assert float(data.train_x.std()) == pytest.approx(std, abs=1e-4)
    if name == "fashion-mnist":  # balanced: 1,000 test images per class
        assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert set(data.train_y.unique().tolist()) == set(range(10))


def _spread(spec: DatasetSpec, src: Path, places: list[Path]) -> None:
    """Copy ``spec``'s four files from ``src/<name>`` into every ``place/<name>``."""
    for place in places:
        (place / spec.name).mkdir(parents=True)
        for f in spec.files():
            shutil.copy(src / spec.name / f.name, place / spec.name / f.name)


def test_search_order_data_dir_cache_checkout_download(tmp_path, monkeypatch):
    spec = make_dataset_dir(tmp_path / "mirror", "mnist")
    spec = DatasetSpec(spec.name, ((tmp_path / "mirror" / "mnist").as_uri() + "/",),
                       *spec.files())
    monkeypatch.setitem(data_mod.DATASETS, "mnist", spec)
    data_dir, checkout, cache = tmp_path / "data", tmp_path / "checkout" / "data", tmp_path / "c"
    monkeypatch.setenv("PRUNELAB_CACHE", str(cache))
    monkeypatch.setattr(data_mod, "checkout_data_dir", lambda: checkout)
    _spread(spec, tmp_path / "mirror", [data_dir, cache, checkout])
    file = spec.test_labels
    found = [find_or_fetch(spec, file, data_dir, download=False)]
    (data_dir / "mnist" / file.name).unlink()
    found.append(find_or_fetch(spec, file, data_dir, download=False))
    (cache / "mnist" / file.name).unlink()
    found.append(find_or_fetch(spec, file, data_dir, download=False))
    (checkout / "mnist" / file.name).unlink()
    found.append(find_or_fetch(spec, file, data_dir))  # downloaded from the mirror
    assert found == [data_dir / "mnist" / file.name, cache / "mnist" / file.name,
                     checkout / "mnist" / file.name, cache / "mnist" / file.name]
    assert (cache / "mnist" / file.name).read_bytes() == (
        tmp_path / "mirror" / "mnist" / file.name).read_bytes()


def test_checkout_data_is_found_without_data_dir_cache_or_network(monkeypatch):
    """The repository's own data/ folder holds the genuine files and is found by default."""
    monkeypatch.undo()  # the real checkout_data_dir, but still an empty cache:
    monkeypatch.setenv("PRUNELAB_CACHE", str(REPO_DATA.parent / ".no-such-cache"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    assert data_mod.checkout_data_dir() == REPO_DATA
    spec = data_mod.DATASETS["mnist"]
    path = find_or_fetch(spec, spec.test_labels, download=False)
    assert path == REPO_DATA / "mnist" / spec.test_labels.name
    assert len(load_dataset("mnist", download=False).test_y) == 10000


def test_tampered_checkout_file_is_refused(tmp_path, monkeypatch):
    spec = data_mod.DATASETS["mnist"]
    checkout = tmp_path / "data"
    _spread(spec, REPO_DATA, [checkout])
    target = checkout / "mnist" / spec.test_labels.name
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF
    target.write_bytes(bytes(raw))
    monkeypatch.setattr(data_mod, "checkout_data_dir", lambda: checkout)
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", download=False)
    msg = str(err.value)
    assert msg.startswith("checksum mismatch for") and str(target) in msg
    assert spec.test_labels.md5 in msg and "\n" not in msg


def test_checkout_data_dir_needs_a_source_checkout(tmp_path, monkeypatch):
    """An installed copy (no pyproject.toml two levels up) never picks up a stray data/."""
    fake = tmp_path / "site-packages" / "prunelab" / "data.py"
    (tmp_path / "data").mkdir()
    monkeypatch.undo()
    monkeypatch.setattr(data_mod, "__file__", str(fake))
    assert data_mod.checkout_data_dir() is None
    (tmp_path / "pyproject.toml").write_text("")
    assert data_mod.checkout_data_dir() == tmp_path / "data"
