"""Bad calibration / N:M input through the CLI: one-line errors, non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.study.runfolder import RunConfig, save_run
from prunelab.train import TrainConfig

from ..conftest import REPO_DATA, assert_one_line_error, invoke


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    config = RunConfig("fashion-mnist", MLPConfig(hidden=(8,)), TrainConfig(epochs=1))
    save_run(tmp_path / "run", config, build_mlp(config.model, torch.Generator().manual_seed(0)),
             [])
    return tmp_path / "run"


def _fails_in_one_line(args: list[str], match: str) -> None:
    assert_one_line_error(invoke(*args), match)


@pytest.mark.parametrize(("extra", "match"), [
    (["--methods", "wanda", "--calibration-size", "0"], "calibration size"),
    (["--methods", "wanda", "--calibration-size", "-5"], "calibration size"),
    (["--methods", "wanda-4:4"], "0 < N < M"),
    (["--methods", "sparsegpt-3:2"], "0 < N < M"),
])
def test_bad_sweep_options(run_dir: Path, extra: list[str], match: str) -> None:
    _fails_in_one_line(["sweep", str(run_dir), *extra], match)


def test_calibration_larger_than_training_set(run_dir: Path) -> None:
    _fails_in_one_line(["sweep", str(run_dir), "--methods", "wanda", "--calibration-size",
                        "60001", "--data-dir", str(REPO_DATA), "--sparsities", "50"], "1..60000")
