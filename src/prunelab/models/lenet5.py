"""LeNet-5 (LeCun et al., 1998) for 28x28 grey images, with ReLU and max-pooling.

conv1 6@5x5 (padding 2, so 28x28 behaves like the original 32x32) -> ReLU -> max-pool 2
-> conv2 16@5x5 -> ReLU -> max-pool 2 -> flatten (16*5*5 = 400) -> fc1 120 -> ReLU
-> fc2 84 -> ReLU -> head 10.

Init: Kaiming-normal (fan-in, ReLU gain) weights for every conv and linear layer, zero biases.

>>> import torch
>>> net = build_lenet5(LeNet5Config(), torch.Generator().manual_seed(0))
>>> net(torch.zeros(2, 784)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models.base import IMAGE_SHAPE, as_images, check_positive_int, materialise

__all__ = ["LeNet5", "LeNet5Config", "build_lenet5"]

_KERNEL = 5
"""Side of both convolution kernels."""


@dataclass(frozen=True)
class LeNet5Config:
    """Options of LeNet-5; the layer widths are the classic 6, 16, 120, 84."""

    num_classes: int = 10
    """Output logits."""
    padding: int = 2
    """Zero padding of conv1 on each side (2: 28x28 input acts like LeNet's 32x32)."""
    bias: bool = True
    """Whether conv and linear layers carry a bias."""

    def __post_init__(self) -> None:
        check_positive_int("num_classes", self.num_classes)
        if not isinstance(self.padding, int) or isinstance(self.padding, bool) or self.padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {self.padding!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be True or False, got {self.bias!r}")

    @property
    def feature_side(self) -> int:
        """Side of conv2's pooled feature map (5 for padding 2)."""
        side = (IMAGE_SHAPE[1] + 2 * self.padding - _KERNEL + 1) // 2
        return (side - _KERNEL + 1) // 2


class LeNet5(nn.Module):
    """LeNet-5 with readable layer names: ``conv1``, ``conv2``, ``fc1``, ``fc2``, ``head``."""

    def __init__(self, config: LeNet5Config) -> None:
        super().__init__()
        bias = config.bias
        self.conv1 = nn.Conv2d(IMAGE_SHAPE[0], 6, _KERNEL, padding=config.padding, bias=bias)
        self.conv2 = nn.Conv2d(6, 16, _KERNEL, bias=bias)
        self.fc1 = nn.Linear(16 * config.feature_side**2, 120, bias=bias)
        self.fc2 = nn.Linear(120, 84, bias=bias)
        self.head = nn.Linear(84, config.num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(as_images(x))), 2)  # (N, 6, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2).flatten(1)  # (N, 16 * 5 * 5)
        h = F.relu(self.fc2(F.relu(self.fc1(h))))
        return self.head(h)


def _init_kaiming(module: nn.Conv2d | nn.Linear, generator: torch.Generator | None) -> None:
    nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def build_lenet5(config: LeNet5Config, generator: torch.Generator | None = None) -> LeNet5:
    """A LeNet-5 initialised from ``generator`` (see the module docstring for the scheme)."""
    rules = {nn.Conv2d: _init_kaiming, nn.Linear: _init_kaiming}
    return materialise(lambda: LeNet5(config), rules, generator)
