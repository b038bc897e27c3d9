"""Saving a compacted network and loading it back with prunelab.load_model."""

from __future__ import annotations

import json

import pytest
import torch

import prunelab
from prunelab.inference.compact import compact
from prunelab.inference.export import save_model, spec_path
from prunelab.inference.layers import LAYER_BACKENDS
from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import apply_weights, prune

X = torch.rand(8, 784, generator=torch.Generator().manual_seed(0))


def _pruned(bias: bool = False):
    net = build_mlp(MLPConfig(hidden=(32, 16), bias=bias), torch.Generator().manual_seed(0))
    return apply_weights(net, prune(net, "weight", 0.9))


@pytest.mark.parametrize("backend", list(LAYER_BACKENDS))
@pytest.mark.parametrize("bias", [False, True])
def test_round_trip(tmp_path, backend, bias):
    pruned = _pruned(bias)
    net = compact(pruned, backend)
    spec = save_model(net, tmp_path / "m.safetensors")
    assert spec == tmp_path / "m.json" and json.loads(spec.read_text())["layers"][0]["in"] < 784
    loaded = prunelab.load_model(tmp_path / "m.safetensors")
    assert isinstance(loaded, torch.nn.Module)
    assert loaded.sizes == net.sizes and loaded.plan == net.plan
    with torch.no_grad():
        assert (loaded(X) - pruned(X)).abs().max() <= 1e-4


def _saved(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(compact(_pruned()), path)
    return path, json.loads(spec_path(path).read_text())


def test_shapes_that_do_not_chain_are_refused(tmp_path):
    path, spec = _saved(tmp_path)
    spec["layers"][1]["in"] += 1
    spec_path(path).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="layer 1"):
        prunelab.load_model(path)


def test_unknown_backend_in_spec_is_refused(tmp_path):
    path, spec = _saved(tmp_path)
    spec["layers"][0]["backend"] = "gpu-magic"
    spec_path(path).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="unknown layer backend 'gpu-magic'"):
        prunelab.load_model(path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prunelab.load_model(tmp_path / "nope.safetensors")
    path, _ = _saved(tmp_path)
    spec_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="m.json"):
        prunelab.load_model(path)


def test_loaded_model_evaluates_like_the_masked_one(tmp_path):
    pruned = _pruned()
    save_model(compact(pruned, "csr-numba"), tmp_path / "m.safetensors")
    y = torch.arange(8) % 10
    loaded = prunelab.load_model(tmp_path / "m.safetensors")
    assert prunelab.evaluate(loaded, X, y) == pytest.approx(prunelab.evaluate(pruned, X, y))
