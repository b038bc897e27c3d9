"""`prunelab compact` and `prunelab bench`: results, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import prunelab
from prunelab.cli import cli
from prunelab.inference.export import spec_path
from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import apply_weights, prune
from prunelab.study.runfolder import RunConfig, save_run

from ..conftest import assert_one_line_error, invoke


@pytest.fixture()
def run_dir(tmp_path):
    config = RunConfig(model=MLPConfig(hidden=(32, 16)))
    save_run(tmp_path / "run", config, build_mlp(config.model, torch.Generator().manual_seed(0)),
             [])
    return tmp_path / "run"


def _fails_in_one_line(args, needle):
    assert_one_line_error(invoke(*args), needle, alone=True)


def test_compact_writes_a_loadable_model(run_dir, tmp_path):
    out = tmp_path / "small.safetensors"
    result = CliRunner().invoke(cli, ["compact", str(run_dir), "--method", "weight",
                                      "--sparsity", "90", "--out", str(out),
                                      "--backend", "csr-numba"])
    assert result.exit_code == 0, result.output
    net = prunelab.load_model(out)
    assert net.plan == ("csr-numba",) * 3
    model = prunelab.load_run(run_dir).model
    pruned = apply_weights(model, prune(model, "weight", 0.9))
    x = torch.rand(5, 784)
    with torch.no_grad():
        assert (net(x) - pruned(x)).abs().max() <= 1e-4


def test_compact_bad_input(run_dir, tmp_path):
    out = str(tmp_path / "m.safetensors")
    base = ["compact", str(run_dir), "--method", "weight", "--out", out]
    _fails_in_one_line([*base, "--sparsity", "50", "--batch-size", "0"], "batch size")
    _fails_in_one_line([*base, "--sparsity", "50", "--backend", "fpga"], "unknown backend")
    _fails_in_one_line([*base, "--sparsity", "150"], "[0, 100]")
    _fails_in_one_line(["compact", str(tmp_path / "none"), "--method", "weight", "--sparsity",
                        "50", "--out", out], "does not exist")


def test_bench_bad_input(run_dir):
    _fails_in_one_line(["bench", str(run_dir), "--batch-sizes", "64,0"], "batch size")
    _fails_in_one_line(["bench", str(run_dir), "--batch-sizes", "-5"], "batch size")
    _fails_in_one_line(["bench", str(run_dir), "--backends", "dense,warp"], "unknown backend")


def test_bench_writes_table(run_dir):
    result = CliRunner().invoke(cli, ["bench", str(run_dir), "--no-check", "--sparsities", "90",
                                      "--methods", "unit", "--batch-sizes", "2",
                                      "--repeats", "2"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "bench.csv").is_file() and (run_dir / "plots/bench_speedup.png").is_file()
    assert "| unit" in result.output


def test_model_info_and_a_model_file_that_does_not_chain(run_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    args = ["compact", str(run_dir), "--method", "unit", "--sparsity", "50", "--out", str(out),
            "--backend", "dense"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = CliRunner().invoke(cli, ["model-info", str(out)])
    assert result.exit_code == 0 and "[784, 16, 8, 10]" in result.output, result.output
    spec = json.loads(spec_path(out).read_text())
    spec["layers"][1]["in"] = 9  # 16 outputs feed a layer that takes 9
    spec_path(out).write_text(json.dumps(spec))
    _fails_in_one_line(["model-info", str(out)], "layer 1")


@pytest.mark.parametrize("method", ["weight", "unit"])
def test_compact_also_writes_onnx_that_computes_the_same(run_dir, tmp_path, method):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    out, onnx_file = tmp_path / "small.safetensors", tmp_path / "small.onnx"
    result = CliRunner().invoke(cli, ["compact", str(run_dir), "--method", method, "--sparsity",
                                      "90", "--out", str(out), "--backend", "csr-numba",
                                      "--onnx", str(onnx_file)])
    assert result.exit_code == 0, result.output
    model = onnx.load(onnx_file)
    onnx.checker.check_model(model)
    net = prunelab.load_model(out)
    x = torch.rand(7, 784)  # another batch size than the one traced: the batch axis is dynamic
    got = ReferenceEvaluator(model).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - net(x).numpy()).max() <= 1e-4
    # Only the compacted weights are stored (MatMul may keep them transposed).
    stored = sorted(sorted(t.dims) for t in model.graph.initializer if len(t.dims) == 2)
    assert stored == sorted(sorted(layer.shape) for layer in net.layers)


def test_onnx_without_the_onnx_package_is_a_one_line_error(run_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    _fails_in_one_line(["compact", str(run_dir), "--method", "unit", "--sparsity", "50", "--out",
                        str(tmp_path / "m.safetensors"), "--onnx", str(tmp_path / "m.onnx")],
                       "prunelab[onnx]")
    assert not (tmp_path / "m.safetensors").exists()  # refused before any work


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family", ["lenet5", "resnet", "vit"])
def test_bench_times_every_zoo_model_beside_onnx_runtime(family, tmp_path, tiny_data_dir):
    from prunelab.models import build_model
    from prunelab.study.runfolder import read_bench

    from ..inference.test_structural import SMALL

    config = RunConfig(model=SMALL[family], family=family)
    save_run(tmp_path / family, config,
             build_model(family, SMALL[family], torch.Generator().manual_seed(0)), [])
    result = invoke("bench", tmp_path / family, "--methods", "weight,unit", "--sparsities",
                    "0,90", "--batch-sizes", "1,16", "--repeats", "1", "--no-check",
                    "--data-dir", tiny_data_dir)  # a ResNet's BatchNorm is re-estimated
    assert result.exit_code == 0, result.output
    rows = read_bench(tmp_path / family)
    backends = {r["backend"] for r in rows}
    assert {"dense", "dense-kernels", "masked", "compacted", "sparse", "onnx-dense",
            "onnx-compacted", "auto"} <= backends
    assert len(rows) == 2 * 2 * 2 * len(backends)
    for r in rows:  # every ratio against the fastest dense runtime of its own batch
        same = [o for o in rows if (o["method"], o["sparsity_pct"], o["batch_size"]) ==
                (r["method"], r["sparsity_pct"], r["batch_size"])]
        best = min(o["latency_ms"] for o in same
                   if o["backend"] in ("dense", "dense-kernels", "onnx-dense"))
        assert r["speedup_vs_best_dense"] == pytest.approx(best / r["latency_ms"])
    unit = [r for r in rows if r["method"] == "unit" and r["sparsity_pct"] == 90]
    assert all(r["flop_ratio"] > 1 for r in unit)


def test_bench_checks_every_backend_of_a_conv_net_against_the_masked_model(tmp_path,
                                                                            tiny_data_dir):
    out = tmp_path / "lenet"
    assert invoke("train", "--model", "lenet5", "--epochs", "1", "--device", "cpu",
                  "--data-dir", tiny_data_dir, "--out", out).exit_code == 0
    result = invoke("bench", out, "--methods", "unit", "--sparsities", "50", "--batch-sizes",
                    "4", "--repeats", "1", "--data-dir", tiny_data_dir)
    assert result.exit_code == 0, result.output
    from prunelab.study.runfolder import read_bench

    rows = read_bench(out)
    assert all(r["max_abs_diff"] == "" or float(r["max_abs_diff"]) < 1e-4 for r in rows)
    assert any(r["backend"] == "onnx-compacted" and r["max_abs_diff"] != "" for r in rows)
    assert (out / "plots" / "bench_speedup.png").is_file()


def test_bench_without_onnx_runtime_warns_in_one_line_and_runs_the_rest(run_dir, monkeypatch,
                                                                         caplog):
    import prunelab.study.speed as speed
    from prunelab.study.runfolder import read_bench

    monkeypatch.setattr(speed, "onnxruntime_available", lambda: False)
    result = invoke("bench", run_dir, "--no-check", "--sparsities", "90", "--methods", "unit",
                    "--batch-sizes", "2", "--repeats", "1")
    assert result.exit_code == 0, result.output
    assert "pip install 'prunelab[onnx]'" in caplog.text
    backends = {r["backend"] for r in read_bench(run_dir)}
    assert "auto" in backends and not backends & {"onnx-dense", "onnx-compacted"}
    assert "dense-kernels" not in backends  # an MLP has no convs to fuse
