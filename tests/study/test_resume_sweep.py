"""A sweep killed mid-way (SIGKILL) and run again computes only the missing (method, k) rows;
two processes on one run folder: the second is refused, no row is lost or duplicated."""

import json
import shutil
import time

import pytest

from prunelab import data as data_mod
from prunelab.study.lock import LOCK_FILE
from prunelab.study.runfolder import load_results

from .. import procs
from ..conftest import assert_one_line_error, invoke, registered_tiny_data

SWEEP = ["--methods", "random-unit,weight,unit", "--sparsities", "0,50,90", "--device", "cpu"]
MEASURED = ("seconds", "peak_memory_mb")  # wall time and memory: the only columns allowed to vary


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset spec, data dir, a run folder with a tiny trained model and no results)."""
    root = tmp_path_factory.mktemp("resume")
    with registered_tiny_data(root) as spec:
        result = invoke("train", "--epochs", "1", "--hidden", "32,16", "--batch-size", "64",
                        "--device", "cpu", "--data-dir", root / "data", "--out", root / "model")
        assert result.exit_code == 0, result.output
        yield spec, root / "data", root / "model"


def _copy(trained, dest):
    shutil.copytree(trained[2], dest)
    return dest


def _fixed(rows):
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in rows]


def test_killed_sweep_computes_only_missing_rows(trained, tmp_path, monkeypatch):
    spec, data_dir, _ = trained
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist", spec)
    run = _copy(trained, tmp_path / "killed")
    proc = procs.start(spec, "sweep", run, *SWEEP, "--data-dir", data_dir, delay=0.3)
    procs.kill_when(proc, lambda: procs.rows_in(run / "results.json") >= 1)
    before = load_results(run).rows
    assert 1 <= len(before) < 9  # random-unit's later rows must not depend on its earlier ones

    result = invoke("sweep", run, *SWEEP, "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    after = load_results(run).rows
    assert after[: len(before)] == before  # kept as they were, wall times included: not redone
    whole = _copy(trained, tmp_path / "whole")
    assert invoke("sweep", whole, *SWEEP, "--data-dir", data_dir).exit_code == 0
    assert _fixed(after) == _fixed(load_results(whole).rows)
    assert len({(r["method"], r["sparsity_pct"]) for r in after}) == 9


def test_rows_of_other_settings_are_redone(trained, tmp_path, monkeypatch):
    """A row is reused only when computed with the same settings (here: BatchNorm
    re-estimation, recorded per row); another model's results are never reused."""
    spec, data_dir, _ = trained
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist", spec)
    run = _copy(trained, tmp_path / "r")
    args = ["--methods", "weight", "--sparsities", "0,50", "--data-dir", data_dir]
    assert invoke("sweep", run, *args).exit_code == 0
    first = load_results(run).rows
    assert invoke("sweep", run, *args).exit_code == 0
    assert load_results(run).rows == first  # all reused
    assert invoke("sweep", run, *args, "--bn-recalibrate").exit_code == 0
    redone = load_results(run).rows
    assert [r["bn_recalibrated"] for r in redone] == [False, True]
    assert redone[1]["seconds"] != first[1]["seconds"]


def test_second_process_on_a_run_folder_is_refused(trained, tmp_path, monkeypatch):
    spec, data_dir, _ = trained
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist", spec)
    run = _copy(trained, tmp_path / "busy")
    args = ["--methods", "weight,unit", "--sparsities", "0,50", "--data-dir", data_dir]
    proc = procs.start(spec, "sweep", run, *args, delay=0.25)
    try:
        while procs.rows_in(run / "results.json") < 1:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        busy = f"is in use by another prunelab process (pid {proc.pid})"
        assert_one_line_error(invoke("sweep", run, *args), str(run), busy)
        assert_one_line_error(invoke("run", "--epochs", "1", "--hidden", "32,16",
                                     "--batch-size", "64", "--out", run, *args), busy)
        assert proc.poll() is None  # the refusals did not disturb it
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = load_results(run).rows
    assert [(r["method"], r["sparsity_pct"]) for r in rows] == [
        ("weight", 0), ("weight", 50), ("unit", 0), ("unit", 50)]
    result = invoke("sweep", run, *args)  # the lock went with its process
    assert result.exit_code == 0, result.output
    assert load_results(run).rows == rows
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 1
    assert (run / LOCK_FILE).is_file()
