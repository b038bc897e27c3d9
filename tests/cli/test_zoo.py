"""Every zoo family through the CLI: train, sweep, report, with model options and BatchNorm."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.data import load_dataset
from prunelab.inference.export import load_model
from prunelab.inference.structural import TOLERANCE, max_difference
from prunelab.pruning import METHODS
from prunelab.study.runfolder import load_results, load_run
from prunelab.study.speed import pruned_from_run

from ..conftest import assert_one_line_error, invoke

FAST = ["--epochs", "1", "--batch-size", "128", "--device", "cpu", "--sparsities", "0,50,90"]
FAMILIES = {
    "lenet5": [],
    "resnet": ["--model-opt", "widths=4,8", "--model-opt", "blocks_per_stage=1"],
    "vit": ["--model-opt", "dim=16", "--model-opt", "depth=1", "--model-opt", "heads=2",
            "--model-opt", "mlp_dim=32"],
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_sweeps_and_reports(family, tiny_data_dir, tmp_path):
    out = tmp_path / family
    result = invoke("run", "--model", family, *FAMILIES[family], *FAST,
                    "--methods", "weight,unit,global-weight,random-unit,wanda,refit-gradual",
                    "--calibration-size", "64",
                    "--data-dir", tiny_data_dir, "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == family
    run = load_run(out)
    assert type(run.model).__name__ == {"lenet5": "LeNet5", "resnet": "ResNet",
                                        "vit": "VisionTransformer"}[family]
    results = load_results(out)
    assert len(results.rows) == 6 * 3
    by_k = {(r["method"], r["sparsity_pct"]): r for r in results.rows}
    *pruned, head = by_k[("weight", 90)]["layers"]  # every layer but the output layer
    assert all(layer["zero_fraction"] == pytest.approx(0.9, abs=0.03) for layer in pruned)
    assert head["zero_fraction"] < 0.01
    assert by_k[("weight", 0)]["zero_fraction"] < 0.01
    # MACs count every output position: far more than the weights for conv nets and tokens
    assert by_k[("weight", 0)]["macs_per_sample"] > by_k[("weight", 0)]["params_total"]
    assert all(r["bn_recalibrated"] == (family == "resnet" and r["sparsity_pct"] > 0)
               for r in results.rows)
    assert results.meta["sweep"]["bn_recalibrate"] == (family == "resnet")
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    dense_size = by_k[("weight", 0)]["compact_params"]
    assert dense_size == by_k[("weight", 0)]["params_total"]  # nothing to remove at k = 0
    assert all(r["compact_params"] <= dense_size for r in results.rows)
    if family != "resnet":  # unit rows zero whole units; constants fold into the readers
        assert by_k[("unit", 50)]["compact_params"] < dense_size
    assert "live / compacted" in (out / "report.md").read_text()
    # the compacted model: saved, rebuilt without the run folder, equal to the masked model
    result = invoke("compact", out, "--method", "unit-act-refit", "--sparsity", "50",
                    "--out", tmp_path / "c.safetensors", "--onnx", tmp_path / "c.onnx",
                    "--data-dir", tiny_data_dir)
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime agrees with torch within" in result.output
    assert "channels" in result.output
    net = load_model(tmp_path / "c.safetensors")
    data = load_dataset("fashion-mnist", tiny_data_dir)
    _, masked = pruned_from_run(out, "unit-act-refit", 0.5, data)
    # k = 0 is the dense model, as in the sweep's row (a damped refit would move its weights)
    dense, at_zero = pruned_from_run(out, "unit-act-refit", 0.0, data)
    assert at_zero is not dense and at_zero.state_dict().keys() == dense.state_dict().keys()
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in at_zero.state_dict().items())
    x = torch.rand(20, 784)
    with torch.no_grad():
        assert max_difference(net(x), masked(x)) <= TOLERANCE
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in masked.parameters())
    info = invoke("model-info", tmp_path / "c.safetensors")
    assert info.exit_code == 0 and type(run.model).__name__ in info.output


def test_recipe_defaults_and_overrides(tiny_data_dir, tmp_path):
    out = tmp_path / "lenet"
    result = invoke("train", "--model", "lenet5", "--epochs", "1", "--lr", "0.002",
                    "--device", "cpu", "--data-dir", tiny_data_dir, "--out", out)
    assert result.exit_code == 0, result.output
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["epochs"] == 1 and train["lr"] == 0.002
    assert train["batch_size"] == 128 and train["optimizer"] == "adamw"  # the rest: the recipe's
    assert train["weight_decay"] == 0.2 and train["schedule"] == "onecycle"


def test_bn_recalibration_can_be_turned_off(tiny_data_dir, tmp_path):
    out = tmp_path / "resnet"
    result = invoke("run", "--model", "resnet", *FAMILIES["resnet"], *FAST, "--methods",
                    "weight", "--no-bn-recalibrate", "--data-dir", tiny_data_dir, "--out", out)
    assert result.exit_code == 0, result.output
    results = load_results(out)
    assert not any(r["bn_recalibrated"] for r in results.rows)


@pytest.mark.parametrize(("args", "match"), [
    (["--model", "alexnet"], "alexnet"),
    (["--model", "resnet", "--model-opt", "depth=3"], "unknown model option(s) ['depth']"),
    (["--model", "resnet", "--model-opt", "widths=a,b"], "widths takes an integer"),
    (["--model", "resnet", "--model-opt", "widths"], "KEY=VALUE"),
    (["--model", "vit", "--hidden", "32"], "--hidden is an mlp option"),
    (["--model", "vit", "--model-opt", "dim=30"], "dim"),
])
def test_bad_model_options_fail_in_one_line(args, match, tiny_data_dir, tmp_path):
    result = invoke("train", *args, "--epochs", "1", "--data-dir", tiny_data_dir,
                    "--out", tmp_path / "x")
    assert_one_line_error(result, match)
    assert not (tmp_path / "x").exists()


def test_methods_all_runs_every_registered_method_on_a_conv_net(tiny_data_dir, tmp_path):
    out = tmp_path / "lenet"
    assert invoke("train", "--model", "lenet5", "--epochs", "1", "--device", "cpu",
                  "--data-dir", tiny_data_dir, "--out", out).exit_code == 0
    result = invoke("sweep", out, "--methods", "all", "--sparsities", "50",
                    "--calibration-size", "64", "--data-dir", tiny_data_dir)
    assert result.exit_code == 0, result.output
    assert {r["method"] for r in load_results(out).rows} == set(METHODS)


def test_layers_select_what_a_sweep_prunes_and_a_new_selection_redoes_the_rows(tiny_data_dir,
                                                                              tmp_path):
    out = tmp_path / "lenet"
    base = ["--sparsities", "50", "--calibration-size", "64", "--data-dir", tiny_data_dir]
    bad = invoke("run", "--model", "lenet5", "--epochs", "1", "--methods", "weight",
                 "--layers", "conv*,nothing*", *base, "--out", out)
    assert_one_line_error(bad, "'nothing*' matches no prunable layer")
    assert not out.exists()  # refused before training
    result = invoke("run", "--model", "lenet5", "--epochs", "1", "--methods",
                    "weight,unit-obs", "--layers", "conv*", *base, "--out", out)
    assert result.exit_code == 0, result.output
    results = load_results(out)
    assert results.meta["sweep"]["layers"] == ["conv*"]
    for row in results.rows:
        assert row["pruned_layers"] == ["conv*"]
        zeros = {layer["name"]: layer["zero_fraction"] for layer in row["layers"]}
        assert zeros["conv1"] > 0.3 and zeros["conv2"] > 0.3
        if row["method"] == "weight":  # only the named layers lose weights
            assert zeros["fc1"] < 0.01 and zeros["fc2"] < 0.01
        else:  # fc1 reads conv2's removed channels: their columns are zero
            assert zeros["fc1"] >= 0.5
    first = {r["method"]: r["seconds"] for r in results.rows}
    result = invoke("sweep", out, "--methods", "weight,unit-obs", "--layers", "fc1", *base)
    assert result.exit_code == 0, result.output
    again = load_results(out).rows
    assert all(r["pruned_layers"] == ["fc1"] for r in again)  # other layers: rows redone
    assert {r["method"]: r["seconds"] for r in again} != first


def test_vit_heads_on_the_command_line(tiny_data_dir, tmp_path):
    out = tmp_path / "vit"
    args = ["--model", "vit", *FAMILIES["vit"], "--epochs", "1", "--sparsities", "50",
            "--calibration-size", "64", "--data-dir", tiny_data_dir, "--out", out]
    bad = invoke("run", *args, "--methods", "unit,random-unit", "--layers", "blocks.*.attn")
    assert_one_line_error(bad, "'random-unit' cannot prune attention heads")
    assert not out.exists()
    result = invoke("run", *args, "--methods", "unit,unit-obs", "--layers", "blocks.*.attn")
    assert result.exit_code == 0, result.output
    for row in load_results(out).rows:  # half of the two heads gone: their q, k, v rows
        zeros = {layer["name"]: layer["zero_fraction"] for layer in row["layers"]}
        assert zeros["blocks.0.attn.q"] == zeros["blocks.0.attn.v"] == 0.5
        assert row["compact_params"] < row["params_total"]  # the heads compact away
