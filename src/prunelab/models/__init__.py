"""The model zoo: each family is built from a typed, frozen config; ``MODELS`` names them.

>>> import torch
>>> net = build_model("mlp", MLPConfig(hidden=(8,)), torch.Generator().manual_seed(0))
>>> [layer.out_features for layer in net.layers]
[8, 10]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.models.mlp import MLP, MLPConfig, build_mlp, linear_layers

__all__ = ["MLP", "MODELS", "MLPConfig", "ModelFamily", "build_mlp", "build_model",
           "linear_layers"]


@dataclass(frozen=True)
class ModelFamily:
    """How to build one family of networks."""

    config_type: type
    """The frozen dataclass holding the family's options."""
    build: Callable[[Any, torch.Generator | None], nn.Module]
    """(config, generator) -> a freshly initialised network."""


MODELS: dict[str, ModelFamily] = {
    "mlp": ModelFamily(MLPConfig, build_mlp),
}
"""Registered model families by name."""


def build_model(name: str, config: Any, generator: torch.Generator | None = None) -> nn.Module:
    """A new ``name`` network from ``config`` (initialised from ``generator`` when given)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    family = MODELS[name]
    if not isinstance(config, family.config_type):
        raise TypeError(f"model {name!r} takes a {family.config_type.__name__}, "
                        f"got {type(config).__name__}")
    return family.build(config, generator)
