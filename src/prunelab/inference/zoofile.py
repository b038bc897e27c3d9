"""Save a compacted zoo model (any family) and rebuild it without the code that pruned it.

A compacted ``lenet5``/``resnet``/``vit`` is its family's module with smaller layers. The file
pair is the state dict (safetensors: tensors only, never a pickle) and a JSON spec: the family,
its config (as ``config.json`` writes it), and the shape of every Linear, Conv2d and BatchNorm
plus each attention module's head count. ``load_graph`` builds the family's module from the
config, resizes those layers to the spec's shapes and loads the tensors strictly (a missing,
extra or misshapen tensor is an error). Nothing but prunelab's zoo is needed to load it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from prunelab.files import atomic_write
from prunelab.models import MODELS, build_model
from prunelab.models.vit import Attention

__all__ = ["GRAPH_FORMAT", "graph_spec", "load_graph", "save_graph"]

GRAPH_FORMAT = "prunelab-compact-graph"
VERSION = 1

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def graph_spec(net: nn.Module, family: str, config: Any) -> dict[str, Any]:
    """The JSON spec of ``net``, a (compacted) module of zoo ``family`` built from ``config``."""
    if family not in MODELS:
        raise ValueError(f"unknown model {family!r}; choose from {sorted(MODELS)}")
    if not isinstance(config, MODELS[family].config_type):
        raise TypeError(f"model {family!r} takes a {MODELS[family].config_type.__name__}, "
                        f"got {type(config).__name__}")
    modules: dict[str, dict[str, Any]] = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            modules[name] = {"type": type(m).__name__, "shape": list(m.weight.shape),
                             "bias": m.bias is not None}
        elif isinstance(m, _BN):
            modules[name] = {"type": type(m).__name__, "features": m.num_features}
        elif isinstance(m, Attention):
            modules[name] = {"type": "Attention", "heads": m.heads}
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    return {"format": GRAPH_FORMAT, "version": VERSION, "family": family, "config": plain,
            "modules": modules}


def save_graph(net: nn.Module, path: Path, family: str, config: Any) -> Path:
    """Write ``net``'s tensors to ``path`` and its spec beside it (``.json``); returns the spec
    path. Both atomically, the tensors first."""
    spec = graph_spec(net, family, config)
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    path = Path(path)
    atomic_write(path, safetensors.torch.save(tensors))
    spec_file = path.with_suffix(".json")
    atomic_write(spec_file, json.dumps(spec, indent=2) + "\n")
    return spec_file


def _resize(module: nn.Module, entry: dict[str, Any], name: str) -> None:
    kind = entry.get("type")
    if kind != type(module).__name__ and not (kind == "Attention"
                                              and isinstance(module, Attention)):
        raise ValueError(f"module {name!r} is a {type(module).__name__}, the spec says {kind!r}")
    if isinstance(module, nn.Conv2d | nn.Linear):
        shape = [int(s) for s in entry["shape"]]
        if len(shape) != module.weight.dim() or min(shape) < 1:
            raise ValueError(f"module {name!r}: bad shape {shape}")
        module.weight = nn.Parameter(torch.empty(shape), requires_grad=False)
        if (module.bias is not None) != bool(entry["bias"]):
            raise ValueError(f"module {name!r}: bias does not match the spec")
        if module.bias is not None:
            module.bias = nn.Parameter(torch.empty(shape[0]), requires_grad=False)
        if isinstance(module, nn.Conv2d):
            module.out_channels, module.in_channels = shape[0], shape[1] * module.groups
        else:
            module.out_features, module.in_features = shape
    elif isinstance(module, _BN):
        n = int(entry["features"])
        module.num_features = n
        module.weight = nn.Parameter(torch.empty(n), requires_grad=False)
        module.bias = nn.Parameter(torch.empty(n), requires_grad=False)
        module.running_mean = torch.empty(n)
        module.running_var = torch.empty(n)
    else:
        heads = int(entry["heads"])
        if heads < 1:
            raise ValueError(f"module {name!r}: {heads} heads")
        module.heads = heads


def load_graph(path: Path, spec: dict[str, Any]) -> nn.Module:
    """The compacted zoo module saved at ``path`` with ``spec`` (``graph_spec``), in eval mode."""
    try:
        family = spec["family"]
        if family not in MODELS:
            raise ValueError(f"unknown model {family!r}")
        config = MODELS[family].config_type(**{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in spec["config"].items()})
        net = build_model(family, config, torch.Generator().manual_seed(0))
        modules = dict(net.named_modules())
        entries = spec["modules"]
        if set(entries) - set(modules):
            raise ValueError(f"the spec names modules {family} has not: "
                             f"{sorted(set(entries) - set(modules))[:3]}")
        for name, entry in entries.items():
            _resize(modules[name], entry, name)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path.with_suffix('.json')}: not a valid model spec ({first})"
                         ) from None
    try:
        tensors = safetensors.torch.load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    state = net.state_dict()
    problems = sorted(set(state) ^ set(tensors))
    if problems:
        raise ValueError(f"{path}: tensors do not match the spec (missing or extra: "
                         f"{problems[:3]})")
    for key, value in tensors.items():
        if value.shape != state[key].shape or value.dtype != state[key].dtype:
            raise ValueError(f"{path}: tensor {key!r} is {value.dtype} {tuple(value.shape)}, "
                             f"the spec needs {state[key].dtype} {tuple(state[key].shape)}")
    net.load_state_dict(tensors, strict=True)
    return net.eval()
