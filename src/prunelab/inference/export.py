"""Save a compacted network as safetensors plus a small JSON of its layers; load it back.

``save_model(net, "model.safetensors")`` writes the tensors and ``model.json`` beside them:
the input size, and per layer its (out, in) shape, backend and whether it has a bias. Sparse
layers are stored as CSR arrays, so a 99 % sparse model file is ~1/50 of the dense one.
``load_model`` returns a plain ``torch.nn.Module`` (a ``CompactMLP``) that runs it.
``export_onnx`` writes the network as ONNX (pixel gather, then MatMul/Gemm and Relu nodes, a
dynamic batch axis) for runtimes outside Python; sparse layers are stored dense there.

>>> import tempfile, torch
>>> from pathlib import Path
>>> from prunelab.inference.compact import compact
>>> from prunelab.models.mlp import MLPConfig, build_mlp
>>> net = compact(build_mlp(MLPConfig(hidden=(8,)), torch.Generator().manual_seed(0)))
>>> path = Path(tempfile.mkdtemp()) / "small.safetensors"
>>> save_model(net, path).name
'small.json'
>>> load_model(path).sizes
(784, 8, 10)
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from prunelab.files import atomic_write
from prunelab.inference.compact import CompactMLP
from prunelab.inference.layers import LAYER_BACKENDS, DenseLayer, check_backend
from prunelab.inference.zoofile import GRAPH_FORMAT, load_graph, save_graph

__all__ = [
    "FORMAT",
    "check_onnx",
    "check_onnxruntime",
    "export_onnx",
    "load_model",
    "onnxruntime_available",
    "onnxruntime_session",
    "run_onnx",
    "save_model",
    "spec_path",
]

FORMAT = "prunelab-compact-mlp"
VERSION = 1


def spec_path(path: Path) -> Path:
    """The JSON that describes the model file ``path``."""
    return Path(path).with_suffix(".json")


def _layer_tensors(i: int, layer: DenseLayer) -> dict[str, torch.Tensor]:
    key = f"layers.{i}."
    if layer.backend == "dense":
        out = {key + "weight": layer.weight}
    else:  # sparse layers keep their CSR arrays: the file shrinks with the weights
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            w = layer.dense_weight().to_sparse_csr()
        out = {key + "crow_indices": w.crow_indices().int(),
               key + "col_indices": w.col_indices().int(), key + "values": w.values()}
    if layer.bias is not None:
        out[key + "bias"] = layer.bias.flatten()
    return out


def save_model(net: nn.Module, path: Path, family: str | None = None,
               config: Any = None) -> Path:
    """Write ``net`` to ``path`` (safetensors) and its layer spec; returns the spec's path.

    ``net`` is a ``CompactMLP``, or a (compacted) zoo model of ``family`` built from ``config``
    (``zoofile``: rebuilt by ``load_model`` from prunelab's zoo alone). A module prunelab could
    not rebuild is refused: export it to ONNX instead."""
    if not isinstance(net, CompactMLP):
        if family is None:
            raise TypeError(f"save_model takes a CompactMLP or a zoo model with its family and "
                            f"config; a {type(net).__name__} cannot be rebuilt from a file "
                            "(export it with export_onnx instead)")
        return save_graph(net, Path(path), family, config)
    path = Path(path)
    tensors = {"input_index": net.input_index}
    for i, layer in enumerate(net.layers):
        tensors.update(_layer_tensors(i, layer))
    spec = {
        "format": FORMAT, "version": VERSION, "input_size": net.input_size, "chunk": net.chunk,
        "layers": [{"out": layer.shape[0], "in": layer.shape[1], "backend": layer.backend,
                    "bias": layer.bias is not None} for layer in net.layers],
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, safetensors.torch.save(tensors))
    atomic_write(spec_path(path), json.dumps(spec, indent=2) + "\n")
    return spec_path(path)


def _read_spec(path: Path) -> dict[str, Any]:
    spec_file = spec_path(path)
    if not spec_file.is_file():
        raise FileNotFoundError(f"{path}: its layer spec {spec_file.name} is missing")
    try:
        spec = json.loads(spec_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec_file}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") not in (FORMAT, GRAPH_FORMAT):
        raise ValueError(f"{spec_file}: not a prunelab model spec ({FORMAT} or {GRAPH_FORMAT})")
    if spec.get("version") != VERSION:
        raise ValueError(f"{spec_file}: format version {spec.get('version')!r}, "
                         f"this prunelab reads version {VERSION}")
    return spec


def _weight(tensors: dict[str, torch.Tensor], i: int, entry: dict[str, Any]) -> torch.Tensor:
    key, shape = f"layers.{i}.", (int(entry["out"]), int(entry["in"]))
    if key + "weight" in tensors:
        return tensors[key + "weight"]
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            tensors[key + "crow_indices"].long(), tensors[key + "col_indices"].long(),
            tensors[key + "values"], shape, check_invariants=True).to_dense()


def _layer(tensors: dict[str, torch.Tensor], i: int, entry: dict[str, Any],
           last: bool) -> DenseLayer:
    shape = (int(entry["out"]), int(entry["in"]))
    w = _weight(tensors, i, entry)
    if tuple(w.shape) != shape:
        raise ValueError(f"layer {i}: weight is {tuple(w.shape)}, spec says {shape}")
    bias = tensors[f"layers.{i}.bias"] if entry["bias"] else None
    if bias is not None and bias.shape != (shape[0],):
        raise ValueError(f"layer {i}: bias is {tuple(bias.shape)}, spec says ({shape[0]},)")
    return LAYER_BACKENDS[check_backend(entry["backend"])](w, bias, relu=not last)


def load_model(path: Path | str) -> nn.Module:
    """The network saved by ``save_model`` at ``path``, ready to run (inference only): a
    ``CompactMLP``, or the compacted zoo module."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    spec = _read_spec(path)
    if spec["format"] == GRAPH_FORMAT:
        return load_graph(path, spec)
    try:
        tensors = safetensors.torch.load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        entries = spec["layers"]
        layers = [_layer(tensors, i, e, i == len(entries) - 1) for i, e in enumerate(entries)]
        return CompactMLP(int(spec["input_size"]), tensors["input_index"], layers,
                          spec.get("chunk"))
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: does not match its spec ({type(e).__name__}: {e})") from None


class _PlainMLP(nn.Module):
    """``net`` as standard torch ops only (gather, Linear, ReLU): what the ONNX exporter traces."""

    def __init__(self, net: CompactMLP) -> None:
        super().__init__()
        self.register_buffer("index", net.input_index.clone())
        self.gather = net.input_index.numel() != net.input_size or not torch.equal(
            net.input_index, torch.arange(net.input_size))
        self.linears = nn.ModuleList()
        for layer in net.layers:
            out_f, in_f = layer.shape
            linear = nn.Linear(in_f, out_f, bias=layer.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(layer.dense_weight())
                if layer.bias is not None:
                    linear.bias.copy_(layer.bias.flatten())
            self.linears.append(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        if self.gather:
            h = h.index_select(1, self.index)
        for i, linear in enumerate(self.linears):
            h = linear(h)
            if i < len(self.linears) - 1:
                h = torch.relu(h)
        return h


def check_onnx() -> None:
    """An ``ImportError`` naming the fix when the ``onnx`` package (torch's exporter needs it) is
    missing."""
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx package: pip install 'prunelab[onnx]'")


def export_onnx(net: nn.Module, path: Path | str, opset: int = 17,
                example_inputs: torch.Tensor | None = None) -> Path:
    """Write ``net`` to ``path`` as an ONNX model, input ``input`` (batch, features) float32,
    output ``logits`` (batch, classes); the batch axis is dynamic. Written atomically.

    ``net`` is a ``CompactMLP`` (exported as gather, Gemm and Relu) or any module that takes
    ``example_inputs`` (default: one 784-pixel image, the zoo's input)."""
    check_onnx()
    if isinstance(net, CompactMLP):
        plain, example = _PlainMLP(net).eval(), torch.zeros(1, net.input_size)
    else:
        plain = net.eval()
        example = torch.zeros(1, 784) if example_inputs is None else example_inputs[:1]
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter is "legacy" since torch 2.9
        warnings.simplefilter("ignore")
        torch.onnx.export(plain, (example,), buf, input_names=["input"],
                          output_names=["logits"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    atomic_write(Path(path), buf.getvalue())
    return Path(path)


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime (the ``onnx`` extra) is installed."""
    return importlib.util.find_spec("onnxruntime") is not None


def check_onnxruntime() -> None:
    """An ``ImportError`` naming the extra when ONNX Runtime is missing."""
    if not onnxruntime_available():
        raise ImportError("running ONNX files needs ONNX Runtime: pip install 'prunelab[onnx]'")


def onnxruntime_session(path: Path | str, threads: int | None = None,
                        profile_prefix: str | None = None):
    """An ONNX Runtime CPU session on ``path``: ``threads`` intra-op threads (default torch's),
    thread spinning off (spinning threads would steal the cores from whatever runs next).
    With ``profile_prefix``, ONNX Runtime records every node's time; ``session.end_profiling()``
    writes them to a JSON file starting with that prefix and returns its name."""
    check_onnxruntime()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor) -> torch.Tensor:
    """``session``'s logits for the float32 batch ``x``."""
    return torch.from_numpy(session.run(["logits"], {"input": x.detach().float().numpy()})[0])
