"""Same configuration and seeds => the same bits: model, results and report numbers, whether the
seeds run in this process (--workers 1, every core's threads) or in two spawned workers (one
thread each on 2 cores). Holds through MKL's strict reproducibility mode, which the study
commands and the grid's workers switch on (prunelab.train.strict_blas; tests/conftest.py does
it for this process)."""

import csv
import io
import json
import re

import pytest

from prunelab import data as data_mod
from prunelab.report import bandplots, plots

from .conftest import invoke, make_dataset_dir

RUN = ["run", "--epochs", "2", "--hidden", "32,16", "--batch-size", "64", "--device", "cpu",
       "--seeds", "0,1", "--methods", "weight,unit,random-unit", "--sparsities", "0,50,90"]
MEASURED = {"seconds", "peak_memory_mb"}  # wall time and memory: the only things that vary


def _table(text: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in MEASURED and not k.startswith("seconds")
             and not k.startswith("peak_memory")} for row in csv.DictReader(io.StringIO(text))]


def _report_numbers(text: str) -> list[str]:
    """Every number of report.md outside its timing and environment lines."""
    kept = [line for line in text.splitlines()
            if not re.search(r"seconds|time|memory|MB|threads|python|torch|cpu", line, re.I)]
    return re.findall(r"-?\d+\.\d+", "\n".join(kept))


def _no_pictures(draw, out_dir):
    """Plots hold no numbers the reports do not; drawing them is most of this test's time."""
    return []


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setitem(data_mod.DATASETS, "fashion-mnist",
                        make_dataset_dir(tmp_path / "data", "fashion-mnist"))
    monkeypatch.setattr(plots, "save_charts", _no_pictures)
    monkeypatch.setattr(bandplots, "save_charts", _no_pictures)
    for workers in ("1", "2"):
        result = invoke(*RUN, "--workers", workers, "--data-dir", tmp_path / "data",
                        "--out", tmp_path / f"w{workers}")
        assert result.exit_code == 0, result.output
    return tmp_path / "w1", tmp_path / "w2"


def test_same_bits_whatever_the_workers(runs):
    one, two = runs
    for seed in ("seed0", "seed1"):
        assert (one / seed / "model.safetensors").read_bytes() == \
            (two / seed / "model.safetensors").read_bytes(), seed
        a, b = ((d / seed / "results.csv").read_text() for d in runs)
        assert _table(a) == _table(b) and len(_table(a)) == 9
        dense = [json.loads((d / seed / "results.json").read_text())["dense"] for d in runs]
        assert dense[0] == dense[1]
    assert _table((one / "summary.csv").read_text()) == _table((two / "summary.csv").read_text())
    numbers = [_report_numbers((d / "report.md").read_text()) for d in runs]
    assert numbers[0] == numbers[1] and len(numbers[0]) > 20
    models = [(d / "seed0" / "model.safetensors").read_bytes() for d in runs]
    assert models[0] != (one / "seed1" / "model.safetensors").read_bytes()  # seeds do differ
