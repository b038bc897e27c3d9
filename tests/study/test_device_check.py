"""scripts/device_check.py: a device's sweep against a reference, on the CPU against itself."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from tests.conftest import invoke

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_check.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_same_device_agrees_and_a_shifted_reference_fails(tmp_path, tiny_data_dir, capsys):
    run = tmp_path / "run"
    result = invoke("train", "--model", "lenet5", "--epochs", "1", "--data-dir", tiny_data_dir,
                    "--out", run)
    assert result.exit_code == 0, result.output
    main = runpy.run_path(str(SCRIPT), run_name="device_check")["main"]
    common = [str(run), "--device", "cpu", "--data-dir", str(tiny_data_dir), "--methods",
              "weight,refit-kron,no-such-method", "--sparsities", "50"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main([*common, "--out", str(first)]) == 1  # the unknown method is reported
    rows = json.loads(first.read_text())
    assert [(r["method"], r["k"]) for r in rows["rows"]] == [("weight", 50.0),
                                                              ("refit-kron", 50.0)]
    assert len(rows["errors"]) == 1 and "no-such-method" in rows["errors"][0]
    common[common.index("--methods") + 1] = "weight,refit-kron"
    assert main([*common, "--out", str(second), "--reference", str(first),
                 "--train-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "largest difference 0.00 points over 2 rows" in out
    assert "resumed after epoch 1: largest weight difference 0.0e+00 (a second" in out  # exact
    assert main([*common, "--out", str(second), "--reference", str(first),
                 "--grid-workers", "2"]) == 0  # as jobs in two spawned workers: the same rows
    assert "largest difference 0.00 points over 2 rows" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"device": "cpu", "rows": [{"model": "m"}]}')
    assert main([*common, "--out", str(tmp_path / "c.json"), "--reference", str(bad)]) == 2
    assert "bad.json is not this script's output" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    rows["rows"][1]["accuracy"] += 1.0  # as a device bug would move it
    first.write_text(json.dumps(rows))
    assert main([*common, "--out", str(second), "--reference", str(first)]) == 1
    assert "largest difference 1.00 points" in capsys.readouterr().out


def test_bad_inputs_are_one_line_errors_before_any_work(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT), run_name="device_check")["main"]
    out = tmp_path / "out.json"
    assert main([str(tmp_path / "nothing"), "--device", "cpu", "--out", str(out)]) == 2
    (tmp_path / "run").mkdir()
    assert main([str(tmp_path / "run"), "--device", "cpu", "--out", str(out)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert main([str(tmp_path / "run"), "--device", "no-such", "--out", str(out)]) == 2
    assert "no-such" in capsys.readouterr().err
    assert not out.exists()  # nothing written
