"""A write that fails (full disk, read-only folder) leaves every earlier file intact, no
temporary file behind, and one error line naming the file that could not be written."""

import errno
import os
import tempfile

import pytest

from prunelab import files

from .conftest import assert_one_line_error, invoke

TINY = ["--epochs", "1", "--hidden", "16", "--batch-size", "64", "--device", "cpu"]


def _full_disk(monkeypatch, name: str) -> None:
    """Writes to a temporary file for ``name`` fail with ENOSPC (others go through)."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        if f"/.{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write = write
        return f

    monkeypatch.setattr(files.os, "fdopen", fdopen)


def _read_only(monkeypatch, folder) -> None:
    """``folder`` refuses new files: chmod, or (as root, whom chmod does not stop) mkstemp."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if str(dir) == str(folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def _files(run):
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


@pytest.fixture
def swept(tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", *TINY, "--data-dir", tiny_data_dir, "--out", run)
    assert result.exit_code == 0, result.output
    result = invoke("sweep", run, "--data-dir", tiny_data_dir, "--methods", "weight",
                    "--sparsities", "0,50")
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_failed_write_keeps_earlier_results(swept, tiny_data_dir, monkeypatch, failure):
    before = _files(swept)
    if failure == "full":
        _full_disk(monkeypatch, "results.json")
    else:
        _read_only(monkeypatch, swept)
    try:
        result = invoke("sweep", swept, "--data-dir", tiny_data_dir, "--methods", "unit",
                        "--sparsities", "50")
    finally:
        swept.chmod(0o755)
    assert_one_line_error(result, f"could not write {swept / 'results.json'}")
    assert "No space left" in result.output or "Permission denied" in result.output
    assert _files(swept) == before  # every earlier file as it was, no temporary left


def test_full_disk_while_saving_a_model(tiny_data_dir, tmp_path, monkeypatch):
    """The model file cannot be written: no config.json appears, so the half-saved run is
    never mistaken for a trained one, and the next training starts over."""
    real = os.fdopen
    _full_disk(monkeypatch, "model.safetensors")
    run = tmp_path / "run"
    result = invoke("train", *TINY, "--data-dir", tiny_data_dir, "--out", run)
    assert_one_line_error(result, f"could not write {run / 'model.safetensors'}",
                          "No space left on device")
    assert not (run / "config.json").exists() and not (run / "model.safetensors").exists()
    assert not list(run.glob(".*.tmp"))
    monkeypatch.setattr(files.os, "fdopen", real)  # the disk has room again
    result = invoke("train", *TINY, "--data-dir", tiny_data_dir, "--out", run)
    assert result.exit_code == 0 and "trained" in result.output, result.output
