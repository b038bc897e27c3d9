"""The MLP, built from a config. No training code.

>>> import torch
>>> net = build_mlp(MLPConfig(hidden=(32, 16)), torch.Generator().manual_seed(0))
>>> net(torch.zeros(5, 784)).shape
torch.Size([5, 10])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MLP", "MLPConfig", "build_mlp", "linear_layers"]


@dataclass(frozen=True)
class MLPConfig:
    """Shape of an MLP: input -> hidden... -> classes, ReLU between layers."""

    input_size: int = 784
    """Features per sample (28 x 28 pixels)."""
    hidden: tuple[int, ...] = (1000, 1000, 500, 200)
    """Width of each hidden layer, in order."""
    num_classes: int = 10
    """Output logits."""
    bias: bool = False
    """Whether Linear layers carry a bias (the original challenge has none)."""

    def __post_init__(self) -> None:
        for field, value in (("input_size", self.input_size), ("num_classes", self.num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        hidden = tuple(self.hidden)
        if any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {list(self.hidden)!r}")
        object.__setattr__(self, "hidden", hidden)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Every layer width from input to output."""
        return (self.input_size, *self.hidden, self.num_classes)


class MLP(nn.Module):
    """ReLU MLP of ``nn.Linear`` layers; inputs of any shape are flattened per sample."""

    def __init__(self, sizes: tuple[int, ...], bias: bool = False) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {sizes!r}")
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, bias=bias)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)


def build_mlp(config: MLPConfig, generator: torch.Generator | None = None) -> MLP:
    """An MLP with Glorot-uniform weights (Keras' default) and zero biases."""
    net = MLP(config.sizes, bias=config.bias)
    with torch.no_grad():
        for layer in net.layers:
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()
    return net


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every ``nn.Linear`` of ``model`` with its qualified name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
