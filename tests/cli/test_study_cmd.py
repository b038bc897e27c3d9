"""``prunelab study STUDY.toml``: the study folder, a second run, and bad input as one line."""

import json
import sys
import time

import pytest

from prunelab.report import bandplots, html, plots

from ..conftest import assert_one_line_error, invoke

STUDY = """\
datasets = ["fashion-mnist"]
seeds = [0, 1]
methods = ["weight", "unit"]
sparsities = [0, 50, 90]

[train]
epochs = 1
batch_size = 64

[[models]]
model = "mlp"
options = { hidden = [32, 16] }

[[models]]
model = "mlp"
name = "mlp-bias"
options = { hidden = [16], bias = true }
"""


@pytest.fixture
def study_file(tiny_data_dir, tmp_path, monkeypatch):
    """The study above, pictures left out (drawing them is most of a report's time)."""
    for module in (plots, bandplots):
        monkeypatch.setattr(module, "save_charts", lambda draw, out_dir: [])
    monkeypatch.setattr(html, "_vega_bundle", lambda: "")
    path = tmp_path / "tiny.toml"
    path.write_text(STUDY)
    return path


def test_study_folder_reports_and_a_second_run(study_file, tiny_data_dir, tmp_path):
    out = tmp_path / "study"
    result = invoke("study", study_file, "--out", out, "--data-dir", tiny_data_dir,
                    "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "4 models with 1 worker(s) (local): 12 job(s)" in result.output  # 4 train, 8 sweep
    for group in ("mlp", "mlp-bias"):
        for seed in (0, 1):
            config = json.loads((out / "fashion-mnist" / group / f"seed{seed}" /
                                 "config.json").read_text())
            assert config["train"] == {**config["train"], "epochs": 1, "seed": seed}
        assert (out / "fashion-mnist" / group / "summary.csv").is_file()
    assert config["model"]["bias"] is True and config["model"]["hidden"] == [16]
    for name in ("report.md", "summary.csv", "jobs.json", "study.toml", "fashion-mnist/report.md",
                 "fashion-mnist/summary.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## fashion-mnist" in report and "| mlp-bias | unit" in report
    assert (out / "study.toml").read_text() == STUDY
    assert len(json.loads((out / "jobs.json").read_text())) == 12
    again = invoke("study", study_file, "--out", out, "--data-dir", tiny_data_dir)
    assert again.exit_code == 0, again.output
    assert "0 job(s)" in again.output and "12 already done" in again.output


@pytest.mark.parametrize("old, new, needle", [
    ('epochs = 1', 'epochs = 1\nepoch = 2', "tiny.toml:8: unknown key 'epoch' in [train]"),
    ('options = { hidden = [16], bias = true }', 'options = { hidden = [16], bais = true }',
     "tiny.toml:17: unknown model option(s) ['bais']"),
    ('"weight", "unit"', '"weight", "unti"', "tiny.toml:3: unknown pruning method 'unti'"),
    ('seeds = [0, 1]', 'seeds = [0, "1"]', "tiny.toml:2: seeds takes a list of integers"),
    ('model = "mlp"\nname', 'model = "mpl"\nname', "tiny.toml:15: unknown model 'mpl'"),
    ('[0, 50, 90]', '[0, 50, 900]', "tiny.toml:4: sparsities are percents in [0, 100]"),
    ('name = "mlp-bias"\n', '', "tiny.toml:14: two models are named 'mlp'"),
    ('[train]', '[train', "tiny.toml: not valid TOML"),
])
def test_bad_study_files_are_one_line_errors(study_file, tmp_path, old, new, needle):
    study_file.write_text(STUDY.replace(old, new))
    result = invoke("study", study_file, "--out", tmp_path / "s")
    assert_one_line_error(result, needle, alone=True)
    assert not (tmp_path / "s").exists()


def test_missing_study_file(tmp_path):
    assert_one_line_error(invoke("study", tmp_path / "none.toml"), "cannot read the study file")


def test_ray_errors_are_one_line_and_write_nothing(study_file, tmp_path, monkeypatch):
    start = time.perf_counter()
    result = invoke("study", study_file, "--out", tmp_path / "s", "--executor", "ray",
                    "--ray-address", "127.0.0.1:9")
    assert_one_line_error(result, "no Ray cluster answers at 127.0.0.1:9")
    assert time.perf_counter() - start < 10
    assert_one_line_error(invoke("run", "--seeds", "0,1", "--out", tmp_path / "r",
                                 "--ray-address", "127.0.0.1:9"),
                          "--ray-address needs --executor ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    result = invoke("study", study_file, "--out", tmp_path / "s", "--executor", "ray")
    assert_one_line_error(result, "needs Ray", "pip install 'prunelab[ray]'")
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


def test_run_seeds_on_ray(tiny_data_dir, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "r"
    result = invoke("run", "--epochs", "1", "--hidden", "8", "--batch-size", "128",
                    "--device", "cpu", "--seeds", "0,1", "--methods", "weight",
                    "--sparsities", "0,90", "--executor", "ray", "--workers", "2",
                    "--data-dir", tiny_data_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 seeds with 2 worker(s) (ray): 4 job(s)" in result.output
    assert {e["executor"] for e in json.loads((out / "jobs.json").read_text()).values()} == {
        "ray"}
    assert json.loads((out / "summary.json").read_text())["rows"][1]["n"] == 2
