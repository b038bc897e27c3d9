"""The ViT: plain linear projections, checked against torch's own attention and Conv2d."""

from __future__ import annotations

import torch
from torch import nn

from prunelab.models import ViTConfig, build_vit
from prunelab.models.vit import Attention, patchify


def test_no_multihead_attention_and_every_projection_is_linear():
    net = build_vit(ViTConfig(), torch.Generator().manual_seed(0))
    assert not any(isinstance(m, nn.MultiheadAttention) for m in net.modules())
    for block in net.blocks:
        for layer in (block.attn.q, block.attn.k, block.attn.v, block.attn.proj,
                      block.mlp.fc1, block.mlp.fc2):
            assert type(layer) is nn.Linear
        assert block.mlp.fc1.weight.shape == (128, 64)
    assert type(net.patch_embed) is nn.Linear and net.patch_embed.weight.shape == (64, 49)
    assert net.pos_embed.shape == (1, 17, 64) and net.cls_token.shape == (1, 1, 64)
    names = {name for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert {"blocks.0.attn.q", "blocks.3.attn.proj", "blocks.2.mlp.fc2", "head"} <= names


def test_mean_pool_has_no_class_token():
    net = build_vit(ViTConfig(pool="mean"), torch.Generator().manual_seed(0))
    assert net.cls_token is None and net.pos_embed.shape == (1, 16, 64)
    assert net(torch.rand(3, 784)).shape == (3, 10)


def test_attention_matches_torch_multihead_attention():
    gen = torch.Generator().manual_seed(0)
    attn = Attention(dim=16, heads=4)
    for layer in (attn.q, attn.k, attn.v, attn.proj):
        layer.weight.data = torch.randn(layer.weight.shape, generator=gen)
        layer.bias.data = torch.randn(layer.bias.shape, generator=gen)
    ref = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]))
        ref.out_proj.weight.copy_(attn.proj.weight)
        ref.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 5, 16, generator=gen)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_patch_embedding_is_a_strided_conv():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(1, 8, kernel_size=7, stride=7)
    embed = nn.Linear(49, 8)
    with torch.no_grad():
        embed.weight.copy_(conv.weight.flatten(1))
        embed.bias.copy_(conv.bias)
    images = torch.rand(3, 1, 28, 28, generator=gen)
    expected = conv(images).flatten(2).transpose(1, 2)  # (N, 16, 8), patches row-major
    torch.testing.assert_close(embed(patchify(images, 7)), expected)
