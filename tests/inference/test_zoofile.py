"""Compacted zoo models saved, rebuilt without the pruning code, exported and run by ONNX
Runtime."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.inference.export import (
    export_onnx,
    load_model,
    onnxruntime_session,
    run_onnx,
    save_model,
)
from prunelab.inference.structural import TOLERANCE, compact_graph, max_difference
from prunelab.pruning import PruneContext, apply_weights, prune
from prunelab.pruning.batchnorm import recalibrate_batchnorm

from .test_structural import SMALL, _inputs, _zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def _compacted(family: str):
    x = _inputs(48, 20)
    net = _zoo(family, x)
    masked = recalibrate_batchnorm(apply_weights(net, prune(
        net, "unit-act-refit", 0.5, context=PruneContext(calibration=x))), x)
    with torch.no_grad():
        if family == "vit":  # and a dead head, so the file must carry the head count
            masked.blocks[0].attn.v.weight[:8] = 0
            masked.blocks[0].attn.v.bias[:8] = 0
    return masked, compact_graph(masked, x[:2])[0]


@pytest.mark.parametrize("family", ["lenet5", "resnet", "vit"])
def test_a_compacted_zoo_model_round_trips_and_runs_in_onnx_runtime(family, tmp_path) -> None:
    masked, net = _compacted(family)
    path = tmp_path / "m.safetensors"
    save_model(net, path, family, SMALL[family])
    back = load_model(path)
    x = _inputs(300, 21)
    with torch.no_grad():
        assert max_difference(back(x), net(x)) == 0.0  # the same tensors, the same modules
        assert max_difference(back(x), masked(x)) <= TOLERANCE
    if family == "vit":
        assert back.blocks[0].attn.heads == 3
    export_onnx(back, tmp_path / "m.onnx")
    session = onnxruntime_session(tmp_path / "m.onnx", threads=1)
    for batch in (1, 7, 300):  # dynamic batch axis
        with torch.no_grad():
            assert max_difference(run_onnx(session, x[:batch]), masked(x[:batch])) <= TOLERANCE


def test_files_that_do_not_match_their_spec_are_refused(tmp_path) -> None:
    _, net = _compacted("resnet")
    path = tmp_path / "m.safetensors"
    spec_file = save_model(net, path, "resnet", SMALL["resnet"])
    good = json.loads(spec_file.read_text())
    bad = json.loads(spec_file.read_text())
    bad["modules"]["stages.0.0.conv1"]["shape"][0] += 1  # tensors no longer fit
    spec_file.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"stages\.0\.0\.conv1\.weight.*the spec needs"):
        load_model(path)
    bad = dict(good, family="transformer-xl")
    spec_file.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not a valid model spec.*unknown model"):
        load_model(path)
    bad = dict(good, modules={**good["modules"], "nowhere": {"type": "Linear"}})
    spec_file.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="modules resnet has not"):
        load_model(path)
    spec_file.write_text(json.dumps(good))
    path.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(path)


def test_a_module_prunelab_cannot_rebuild_is_refused_with_the_way_out(tmp_path) -> None:
    with pytest.raises(TypeError, match="cannot be rebuilt from a file.*export_onnx"):
        save_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def test_a_profiled_session_records_the_time_of_every_node_named_after_its_module(tmp_path):
    _, net = _compacted("resnet")
    export_onnx(net, tmp_path / "m.onnx")
    session = onnxruntime_session(tmp_path / "m.onnx", threads=1,
                                  profile_prefix=str(tmp_path / "prof"))
    x = _inputs(4, 22)
    with torch.no_grad():
        assert max_difference(run_onnx(session, x), net(x)) <= TOLERANCE  # profiling changes
    path = session.end_profiling()  # nothing it computes
    assert path.startswith(str(tmp_path / "prof"))
    with open(path) as f:
        nodes = [e for e in json.load(f) if e.get("cat") == "Node"
                 and e["name"].endswith("_kernel_time")]
    ops = {e["args"]["op_name"] for e in nodes}
    assert "Conv" in ops and all(e["dur"] >= 0 for e in nodes)
    assert any(e["name"].startswith("/head/") for e in nodes)  # export names nodes by module
