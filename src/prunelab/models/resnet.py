"""A CIFAR-style ResNet (He et al., 2016) adapted to 28x28x1 images.

stem: conv3x3 -> BN -> ReLU; then stages of BasicBlocks (conv3x3-BN-ReLU-conv3x3-BN, plus the
shortcut, then ReLU). Each stage after the first starts with stride 2 (28 -> 14 -> 7 for three
stages); a 1x1 conv + BN projects the shortcut where the shape changes. Global average pool, then
a linear head. Convs carry no bias (a BN follows each).

Init (as torchvision's ResNet): Kaiming-normal (fan-out, ReLU gain) conv weights; BN gain 1 and
shift 0; the head's weights uniform in +-1/sqrt(fan_in) (PyTorch's Linear default), bias zero.

>>> import torch
>>> net = build_resnet(ResNetConfig(), torch.Generator().manual_seed(0))
>>> net(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models.base import (
    IMAGE_SHAPE,
    as_images,
    check_positive_int,
    init_batch_norm,
    materialise,
)

__all__ = ["BasicBlock", "ResNet", "ResNetConfig", "build_resnet"]


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of the ResNet: one stage per width, ``blocks_per_stage`` blocks in each."""

    widths: tuple[int, ...] = (16, 32, 64)
    """Channels of each stage (the stem has the first stage's width)."""
    blocks_per_stage: int = 1
    """BasicBlocks in every stage."""
    num_classes: int = 10
    """Output logits."""

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w <= 0
                             for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive integers, "
                             f"got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        check_positive_int("blocks_per_stage", self.blocks_per_stage)
        check_positive_int("num_classes", self.num_classes)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual connection (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """``stem`` -> ``stages[i][j]`` (BasicBlocks) -> global average pool -> ``head``."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        widths = config.widths
        self.stem = nn.Sequential(
            _conv3x3(IMAGE_SHAPE[0], widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(config.blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(c_in, width, stride))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(as_images(x)))  # (N, widths[-1], 7, 7) for three stages
        return self.head(h.mean(dim=(2, 3)))


def _init_conv(module: nn.Conv2d, generator: torch.Generator | None) -> None:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu",
                            generator=generator)


def _init_head(module: nn.Linear, generator: torch.Generator | None) -> None:
    bound = 1 / math.sqrt(module.in_features)
    nn.init.uniform_(module.weight, -bound, bound, generator=generator)
    nn.init.zeros_(module.bias)


def build_resnet(config: ResNetConfig, generator: torch.Generator | None = None) -> ResNet:
    """A ResNet initialised from ``generator`` (see the module docstring for the scheme)."""
    rules = {nn.Conv2d: _init_conv, nn.BatchNorm2d: init_batch_norm, nn.Linear: _init_head}
    return materialise(lambda: ResNet(config), rules, generator)
