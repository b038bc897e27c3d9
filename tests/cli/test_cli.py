import csv
import json
import os
import stat

import pytest

from prunelab.files import atomic_write
from prunelab.study import sweep as sweep_mod
from prunelab.study.runfolder import RESULT_COLUMNS, load_results

from ..conftest import assert_one_line_error, invoke

TINY = ["--epochs", "1", "--hidden", "32,16", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture
def trained_run(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", *TINY, "--data-dir", tiny_data_dir, "--out", out,
                    "--sparsities", "0,50,90")
    assert result.exit_code == 0, result.output
    return out


def test_run_end_to_end(trained_run, tiny_data_dir):
    out = trained_run
    for name in ("config.json", "model.safetensors", "history.json", "results.csv",
                 "results.json", "report.md"):
        assert (out / name).is_file(), name
    for plot in ("accuracy_vs_sparsity", "loss_vs_sparsity", "accuracy_vs_params"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
        assert (out / "plots" / f"{plot}.svg").read_text().lstrip().startswith("<?xml")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert [(r["method"], float(r["sparsity_pct"])) for r in rows] == [
        ("weight", 0), ("weight", 50), ("weight", 90), ("unit", 0), ("unit", 50), ("unit", 90)]
    results = load_results(out)
    k0 = [r for r in results.rows if r["sparsity_pct"] == 0]
    assert all(r["accuracy"] == results.dense["accuracy"] for r in k0)
    assert results.dense["accuracy"] > 0.2  # one short epoch; chance is 0.1
    unit90 = next(r for r in results.rows if r["method"] == "unit" and r["sparsity_pct"] == 90)
    assert unit90["effective_sparsity"] > unit90["zero_fraction"]  # dead next-layer inputs
    report = (out / "report.md").read_text()
    assert "| k (%)" in report and "## Analysis" in report
    assert "plots/accuracy_vs_sparsity.png" in report
    cost = report.split("## Cost of pruning")[1].split("## Analysis")[0]
    assert "| weight " in cost and "| unit " in cost
    assert f"{100 * results.dense['accuracy']:.2f} %" in report
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and 0 <= history[0]["train_accuracy"] <= 1


def test_run_reuses_a_model_trained_the_same_way(trained_run, tiny_data_dir):
    before = (trained_run / "model.safetensors").read_bytes()
    result = invoke("run", *TINY, "--data-dir", tiny_data_dir, "--out", trained_run,
                    "--sparsities", "0,50")
    assert result.exit_code == 0 and "reusing the model" in result.output
    assert (trained_run / "model.safetensors").read_bytes() == before
    result = invoke("run", *TINY[:1], "2", *TINY[2:], "--data-dir", tiny_data_dir,
                    "--out", trained_run, "--sparsities", "0")
    assert result.exit_code == 0 and "trained" in result.output
    assert len(json.loads((trained_run / "history.json").read_text())) == 2


def test_sweep_keeps_other_methods_rows(trained_run, tiny_data_dir):
    result = invoke("sweep", trained_run, "--data-dir", tiny_data_dir, "--methods", "unit",
                    "--sparsities", "25")
    assert result.exit_code == 0, result.output
    keys = {(r["method"], r["sparsity_pct"]) for r in load_results(trained_run).rows}
    assert ("unit", 25) in keys and ("weight", 90) in keys and ("unit", 90) in keys


def test_interrupted_sweep_keeps_earlier_results(trained_run, tiny_data_dir, monkeypatch):
    calls = {"n": 0}
    real = sweep_mod.evaluate

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # dense, then two rows, then the crash
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "evaluate", flaky)
    model = (trained_run / "model.safetensors").read_bytes()
    result = invoke("sweep", trained_run, "--data-dir", tiny_data_dir, "--sparsities", "60,70,80")
    assert result.exit_code == 130
    assert (trained_run / "model.safetensors").read_bytes() == model
    rows = list(csv.DictReader((trained_run / "results.csv").open()))
    assert ("weight", "60.0") in {(r["method"], r["sparsity_pct"]) for r in rows}
    assert ("weight", "80.0") not in {(r["method"], r["sparsity_pct"]) for r in rows}
    assert not list(trained_run.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--sparsities", "0,150"], ["percents in [0, 100]", "150"]),
        (["--sparsities", "-5"], ["percents in [0, 100]"]),
        (["--sparsities", "ten"], ["'ten'"]),
        (["--methods", "weight,magic"], ["magic", "unit"]),
        (["--hidden", "100,-3"], ["positive integers"]),
        (["--hidden", "100,abc"], ["positive integers"]),
        (["--epochs", "0"], ["epochs must be a positive integer"]),
        (["--sparsities", "50,50"], ["repeated sparsity"]),
    ],
)
def test_bad_run_options(tiny_data_dir, tmp_path, args, needles):
    result = invoke("run", *TINY, "--data-dir", tiny_data_dir, "--out", tmp_path / "r", *args)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_unknown_dataset_is_a_usage_error(tmp_path):
    result = invoke("run", "--dataset", "cifar", "--out", tmp_path)
    assert result.exit_code == 2 and "cifar" in result.output and "Traceback" not in result.output


def test_sweep_and_report_need_a_run(tmp_path):
    assert_one_line_error(invoke("sweep", tmp_path), "no trained model")
    assert_one_line_error(invoke("sweep", tmp_path / "missing"), "does not exist")
    assert_one_line_error(invoke("report", tmp_path), "no sweep results")


def test_corrupt_data_is_a_one_line_error(tiny_data_dir, tmp_path):
    path = tiny_data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    result = invoke("train", *TINY, "--data-dir", tiny_data_dir, "--out", tmp_path / "r")
    assert_one_line_error(result, "checksum mismatch", "train-images-idx3-ubyte.gz", "expected")


def test_no_data_no_network_is_a_one_line_error(tiny_data_dir, tmp_path):
    result = invoke("train", *TINY, "--data-dir", tmp_path / "empty", "--out", tmp_path / "r")
    assert_one_line_error(result, "could not be downloaded", "PRUNELAB_DATA")


def test_atomic_write_replaces_and_leaves_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "results.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temporary left
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
