"""A small vision transformer (Dosovitskiy et al., 2021) for 28x28x1 images.

Patches of ``patch x patch`` pixels (7: 16 patches) are flattened and embedded by one
``nn.Linear`` (the same map as a Conv2d with kernel = stride = patch, but an ordinary linear
layer, so pruning treats it like every other projection); a class token is prepended when
``pool="cls"``; a learned position embedding is added. Then ``depth`` pre-LayerNorm blocks,
``x + attn(norm1(x))`` and ``x + mlp(norm2(x))`` with GELU, a final LayerNorm, the class token
(or the mean over tokens) and a linear head. Attention has its own ``q``, ``k``, ``v`` and
``proj`` linear layers (no ``nn.MultiheadAttention``), the MLP ``fc1`` and ``fc2``.

Init (as timm's ViT): truncated normal, std 0.02 cut at +-2 std, for every linear weight, the
class token and the position embedding; zero biases; LayerNorm gain 1 and shift 0.

>>> import torch
>>> net = build_vit(ViTConfig(), torch.Generator().manual_seed(0))
>>> net(torch.zeros(2, 784)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models.base import (
    IMAGE_SHAPE,
    as_images,
    check_positive_int,
    init_layer_norm,
    materialise,
)

__all__ = ["POOLS", "Attention", "Block", "FeedForward", "ViTConfig", "VisionTransformer",
           "build_vit", "patchify"]

POOLS = ("cls", "mean")
"""How the token sequence becomes one vector: the class token, or the mean over tokens."""

_INIT_STD = 0.02
"""Std of the truncated-normal init of weights and embeddings."""


@dataclass(frozen=True)
class ViTConfig:
    """Shape of the vision transformer."""

    patch: int = 7
    """Side of a square patch; must divide 28 (7 gives 4 x 4 = 16 patches)."""
    dim: int = 64
    """Token width."""
    depth: int = 4
    """Transformer blocks."""
    heads: int = 4
    """Attention heads per block; must divide ``dim``."""
    mlp_dim: int = 128
    """Hidden width of each block's MLP."""
    pool: str = "cls"
    """One of ``POOLS``: read out the class token, or average all tokens."""
    num_classes: int = 10
    """Output logits."""

    def __post_init__(self) -> None:
        for field in ("patch", "dim", "depth", "heads", "mlp_dim", "num_classes"):
            check_positive_int(field, getattr(self, field))
        if IMAGE_SHAPE[1] % self.patch:
            raise ValueError(f"patch must divide the image side {IMAGE_SHAPE[1]}, "
                             f"got {self.patch!r}")
        if self.dim % self.heads:
            raise ValueError(f"heads must divide dim={self.dim}, got {self.heads!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {self.pool!r}")

    @property
    def num_patches(self) -> int:
        """Patches per image (16 for patch 7)."""
        return (IMAGE_SHAPE[1] // self.patch) ** 2

    @property
    def num_tokens(self) -> int:
        """Sequence length: the patches, plus the class token under ``pool="cls"``."""
        return self.num_patches + (self.pool == "cls")


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, patches, C * patch * patch), patches in row-major order.

    Each patch is flattened in (channel, row, column) order, as a Conv2d weight is.

    >>> patchify(torch.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 1].tolist()
    [2.0, 3.0, 6.0, 7.0]
    """
    n, c, h, w = images.shape
    grid = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), -1)


class Attention(nn.Module):
    """Multi-head self-attention from four plain linear layers: ``q``, ``k``, ``v``, ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        # Fixed at build time so that pruning q/k features later does not rescale the logits.
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, h: torch.Tensor) -> torch.Tensor:
        """(N, T, heads * d) -> (N, heads, T, d)."""
        n, t, _ = h.shape
        return h.reshape(n, t, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (N, heads, T, d)
        return self.proj(out.transpose(1, 2).reshape(n, t, -1))


class FeedForward(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """``patch_embed`` (+ ``cls_token``) + ``pos_embed`` -> ``blocks`` -> ``norm`` -> ``head``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.patch = config.patch
        self.patch_embed = nn.Linear(IMAGE_SHAPE[0] * config.patch**2, config.dim)
        self.cls_token: nn.Parameter | None = None
        if config.pool == "cls":
            self.cls_token = nn.Parameter(torch.empty(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.empty(1, config.num_tokens, config.dim))
        self.blocks = nn.Sequential(
            *(Block(config.dim, config.heads, config.mlp_dim) for _ in range(config.depth)))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(patchify(as_images(x), self.patch))  # (N, patches, dim)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        h = self.norm(self.blocks(tokens + self.pos_embed))  # (N, tokens, dim)
        pooled = h[:, 0] if self.cls_token is not None else h.mean(dim=1)
        return self.head(pooled)


def _trunc_normal(tensor: torch.Tensor, generator: torch.Generator | None) -> None:
    nn.init.trunc_normal_(tensor, std=_INIT_STD, a=-2 * _INIT_STD, b=2 * _INIT_STD,
                          generator=generator)


def _init_linear(module: nn.Linear, generator: torch.Generator | None) -> None:
    _trunc_normal(module.weight, generator)
    nn.init.zeros_(module.bias)


def _init_embeddings(module: VisionTransformer, generator: torch.Generator | None) -> None:
    if module.cls_token is not None:
        _trunc_normal(module.cls_token, generator)
    _trunc_normal(module.pos_embed, generator)


def build_vit(config: ViTConfig, generator: torch.Generator | None = None) -> VisionTransformer:
    """A ViT initialised from ``generator`` (see the module docstring for the scheme)."""
    rules = {VisionTransformer: _init_embeddings, nn.Linear: _init_linear,
             nn.LayerNorm: init_layer_norm}
    return materialise(lambda: VisionTransformer(config), rules, generator)
