import json

import pytest
import torch

from prunelab import data as data_mod
from prunelab.study.executors import JobFailed, make_executor
from prunelab.study.runfolder import load_results, load_run

from ..conftest import assert_one_line_error, invoke, registered_tiny_data
from ..seedfakes import write_fake_run
from .test_cli import TINY

SWEEP = ["--sparsities", "0,50,90"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny fashion-mnist registered for this module (spawned workers get the registry)."""
    root = tmp_path_factory.mktemp("seeds")
    with registered_tiny_data(root):
        yield root


@pytest.fixture(scope="module")
def two_seeds(tiny):
    """``run --seeds 0,1`` with two parallel worker processes."""
    out = tiny / "run2"
    result = invoke("run", *TINY, *SWEEP, "--seeds", "0,1", "--workers", "2",
                    "--data-dir", tiny / "data", "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 seeds with 2 worker(s)" in result.output
    return out


def test_multi_seed_layout_and_summary(two_seeds):
    for s in (0, 1):
        for name in ("config.json", "model.safetensors", "history.json", "results.csv",
                     "results.json", "report.md"):
            assert (two_seeds / f"seed{s}" / name).is_file(), (s, name)
        config = json.loads((two_seeds / f"seed{s}" / "config.json").read_text())
        assert config["train"]["seed"] == s
    for name in ("summary.csv", "summary.json", "report.md", "report.html",
                 "plots/accuracy_vs_sparsity.png"):
        assert (two_seeds / name).is_file(), name
    summary = json.loads((two_seeds / "summary.json").read_text())
    per_seed = {s: load_results(two_seeds / f"seed{s}") for s in (0, 1)}
    row = next(r for r in summary["rows"] if r["method"] == "weight" and r["sparsity_pct"] == 50)
    accs = [next(r["accuracy"] for r in per_seed[s].rows
                 if r["method"] == "weight" and r["sparsity_pct"] == 50) for s in (0, 1)]
    assert row["n"] == 2 and row["accuracy_mean"] == pytest.approx(sum(accs) / 2)
    assert accs[0] != accs[1]  # two different models
    report = (two_seeds / "report.md").read_text()
    assert f"{100 * row['accuracy_mean']:.2f} ± " in report and "## Paired comparisons" in report


def test_worker_trains_the_same_model_as_a_single_seed_run(two_seeds, tiny):
    single = tiny / "single1"
    result = invoke("train", *TINY, "--seed", "1", "--data-dir", tiny / "data", "--out", single)
    assert result.exit_code == 0, result.output
    a, b = load_run(single).model.state_dict(), load_run(two_seeds / "seed1").model.state_dict()
    # Same seed and recipe; the worker ran with fewer threads, so allow rounding noise.
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_sweep_and_report_on_a_multi_seed_folder(two_seeds):
    result = invoke("sweep", two_seeds, "--workers", "1", "--sparsities", "95",
                    "--methods", "weight", "--data-dir", two_seeds.parent / "data")
    assert result.exit_code == 0, result.output
    summary = json.loads((two_seeds / "summary.json").read_text())
    assert {r["sparsity_pct"] for r in summary["rows"] if r["method"] == "weight"} == {
        0, 50, 90, 95}
    result = invoke("report", two_seeds)
    assert result.exit_code == 0, result.output
    assert "| 95 " in (two_seeds / "report.md").read_text()


@pytest.mark.parametrize("seeds, needle", [
    ("", "--seeds is empty"), (" , ", "--seeds is empty"), ("0,1,0", "repeated seed"),
    ("0,-1", "non-negative"), ("0,x", "'x'"), ("1.5", "'1.5'"),
])
def test_bad_seeds_are_one_line_errors(tmp_path, seeds, needle):
    assert_one_line_error(invoke("run", *TINY, "--seeds", seeds, "--out", tmp_path / "r"),
                          needle)
    assert not (tmp_path / "r").exists()


def test_parallel_worker_error_surfaces_as_one_line(tiny, tmp_path):
    bad = tmp_path / "data" / "fashion-mnist"
    bad.mkdir(parents=True)
    for f in data_mod.DATASETS["fashion-mnist"].files():
        (bad / f.name).write_bytes(b"not the file")
    result = invoke("run", *TINY, "--seeds", "0,1", "--workers", "2",
                    "--data-dir", tmp_path / "data", "--out", tmp_path / "r")
    assert_one_line_error(result, "checksum mismatch")  # found before any job starts
    assert not (tmp_path / "r").exists()


def test_executors_reject_bad_workers():
    with pytest.raises(ValueError, match="workers"):
        make_executor("local", workers=0)
    assert issubclass(JobFailed, RuntimeError)


def test_compare_cli(tmp_path):
    a = write_fake_run(tmp_path / "a")
    b = write_fake_run(tmp_path / "b", seeds=(0,))  # a single-seed folder
    result = invoke("compare", a, b, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "prunelab comparison: a, b" in text and "a/weight" in text and "b/unit" in text
    assert (tmp_path / "cmp" / "report.html").is_file()
    other = write_fake_run(tmp_path / "m", dataset="mnist")
    assert_one_line_error(invoke("compare", a, other, "--out", tmp_path / "x"),
                          "different test sets", "fashion-mnist", "mnist")
    assert_one_line_error(invoke("compare", a, "--out", tmp_path / "x"), "at least two")
