"""Run-folder readers against damaged files: config.json, history.json, results.json and
model.safetensors (wrong shapes, dtypes, missing and extra tensors, random bytes, pickles). Each
bad file is one ValueError line naming it; nothing is written; nothing is unpickled."""

import json
import math
import pickle
import shutil

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

import prunelab
from prunelab.models import MLPConfig, build_model
from prunelab.study.checkpoint import CHECKPOINT_DIR, read_checkpoint
from prunelab.study.runfolder import (
    RunConfig,
    load_results,
    load_run,
    save_run,
    write_results,
)
from prunelab.train import TrainConfig

from .conftest import assert_one_line_error, invoke
from .fuzzing import fuzz
from .seedfakes import curves

CONFIG = RunConfig(model=MLPConfig(hidden=(8,)), train=TrainConfig(epochs=1))
NUMBERS = (st.integers(-10, 100) | st.sampled_from([2**40, 2**63, 10**30, -(2**63)])
           | st.floats(allow_nan=True, allow_infinity=True))
JSON = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A valid run folder (tiny MLP) with results."""
    run = tmp_path_factory.mktemp("fuzz") / "run"
    model = build_model("mlp", CONFIG.model, torch.Generator().manual_seed(0))
    save_run(run, CONFIG, model, [])
    dense, rows = curves(0)
    write_results(run, dense, rows, {"run": CONFIG.to_dict()})
    return run


@st.composite
def mutated(draw, base):
    """``base`` with one value somewhere replaced, or one key dropped, or a key added."""
    doc = json.loads(json.dumps(base))
    node = doc
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], dict | list) or not node[key]:
            break
        node = node[key]
    if not isinstance(node, dict | list) or not node:
        return draw(JSON)
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    key = draw(st.sampled_from(keys))
    action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    if action == "replace":
        node[key] = draw(JSON)
    elif action == "drop":
        del node[key]
    elif isinstance(node, dict):
        node[draw(st.text(max_size=8))] = draw(JSON)
    else:
        node.append(draw(JSON))
    return doc


def _snapshot(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def _one_line(e: Exception, *names: str) -> None:
    text = str(e)
    assert "\n" not in text and any(name in text for name in names), text


@pytest.fixture
def copy(folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    return run


@fuzz(400)
@given(doc=mutated(CONFIG.to_dict()))
def test_config_json(copy, doc):
    (copy / "config.json").write_text(json.dumps(doc))
    before = _snapshot(copy)
    try:
        run = load_run(copy)
    except ValueError as e:
        _one_line(e, "config.json", "model.safetensors")
    else:  # accepted: a config that builds this very model
        assert run.config == RunConfig.from_dict(doc)
    assert _snapshot(copy) == before


@fuzz(400)
@given(doc=mutated({"dense": curves(0)[0], "rows": curves(0)[1][:2], "meta": {}}))
def test_results_json(copy, doc):
    (copy / "results.json").write_text(json.dumps(doc))
    try:
        results = load_results(copy)
    except ValueError as e:
        _one_line(e, "results.json")
        return
    for row in results.rows:  # accepted: every number a report uses is a number in range
        assert isinstance(row["method"], str) and 0 <= row["sparsity_pct"] <= 100
        assert 0 <= row["accuracy"] <= 1 and math.isfinite(row["params_remaining"])


@fuzz(200)
@given(doc=JSON | mutated([{"epoch": 1, "train_loss": 0.5}]))
def test_history_json(copy, doc):
    (copy / "history.json").write_text(json.dumps(doc))
    try:
        run = load_run(copy)
    except ValueError as e:
        _one_line(e, "history.json")
    else:
        assert all(isinstance(h, dict) for h in run.history)


DTYPES = [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.uint8, torch.bool]


@st.composite
def tensor_files(draw, base: dict) -> bytes:
    """``base`` (a state dict) with a tensor dropped, added, reshaped or retyped; or bytes."""
    tensors = dict(base)
    name = draw(st.sampled_from(sorted(tensors)))
    action = draw(st.sampled_from(["drop", "extra", "shape", "dtype", "bytes", "cut"]))
    if action == "drop":
        del tensors[name]
    elif action == "extra":
        tensors[draw(st.text(min_size=1, max_size=12))] = torch.zeros(draw(st.integers(0, 3)))
    elif action == "shape":
        shape = draw(st.lists(st.integers(0, 9), max_size=3))
        tensors[name] = torch.zeros(shape)
    elif action == "dtype":
        tensors[name] = tensors[name].to(draw(st.sampled_from(DTYPES)))
    elif action == "bytes":
        return draw(st.binary(max_size=64))
    blob = safetensors.torch.save(tensors)
    return blob[: draw(st.integers(0, len(blob)))] if action == "cut" else blob


@fuzz(300)
@given(blob=tensor_files({f"layers.{i}.weight": w for i, w in enumerate(
    [torch.zeros(8, 784), torch.zeros(10, 8)])}))
def test_model_safetensors(copy, blob):
    (copy / "model.safetensors").write_bytes(blob)
    before = _snapshot(copy)
    try:
        load_run(copy)
    except ValueError as e:
        _one_line(e, "model.safetensors")
    else:  # accepted: exactly the tensors the config makes (a shape drawn equal, say)
        tensors = safetensors.torch.load(blob)
        assert {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()} == {
            "layers.0.weight": (torch.float32, (8, 784)),
            "layers.1.weight": (torch.float32, (10, 8))}
    assert _snapshot(copy) == before


class _Boom:
    """Unpickling this creates ``marker``: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_loaded(copy, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"layers.0.weight": _Boom(marker)})
    assert not marker.exists()
    (copy / "model.safetensors").write_bytes(payload)
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_run(copy)
    assert_one_line_error(invoke("sweep", copy), "model.safetensors")
    torch.save({"layers.0.weight": _Boom(marker)}, copy / "model.safetensors")  # a .pt zip
    with pytest.raises(ValueError, match="model.safetensors"):
        load_run(copy)
    (copy / "small.safetensors").write_bytes(payload)  # prunelab.load_model's files
    (copy / "small.json").write_text(json.dumps({"format": "prunelab-compact-mlp",
                                                 "version": 1, "layers": []}))
    with pytest.raises((ValueError, FileNotFoundError)):
        prunelab.load_model(copy / "small.safetensors")
    assert_one_line_error(invoke("model-info", copy / "small.safetensors"), "small")
    state = copy / CHECKPOINT_DIR
    state.mkdir()
    (state / "epoch1.safetensors").write_bytes(payload)
    (state / "state.json").write_text(json.dumps({
        "format": "prunelab-train-checkpoint", "version": 1, "config": CONFIG.to_dict(),
        "epoch": 1, "tensors": "epoch1.safetensors",
        "sha256": __import__("hashlib").sha256(payload).hexdigest(),
        "history": [{}], "state": {}}))
    with pytest.raises(ValueError, match="epoch1.safetensors: not a usable training checkpoint"):
        read_checkpoint(copy, CONFIG)
    assert not marker.exists()


@pytest.mark.parametrize("content, needle", [
    ("[]", "not prunelab sweep results"),
    ('{"dense": {"accuracy": NaN, "loss": 1}, "rows": [], "meta": {}}', "accuracy"),
    ('{"dense": {"accuracy": 0.5, "loss": 1}, "rows": [{"method": "w"}], "meta": {}}',
     "granularity"),
    ('{"dense": {"accuracy": 0.5, "loss": 1}, "rows": [], "meta": 1e999}', "meta"),
    ("\udcff", "not valid JSON"),
])
def test_bad_results_through_the_cli(copy, content, needle):
    (copy / "results.json").write_bytes(content.encode(errors="surrogateescape"))
    before = _snapshot(copy)
    assert_one_line_error(invoke("report", copy), "results.json", needle)
    assert _snapshot(copy) == before and not (copy / "plots").exists()
