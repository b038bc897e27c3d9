"""Structural removal for any graph: compacted outputs equal the masked model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunelab
from prunelab.inference.structural import TOLERANCE, compact_graph, max_difference
from prunelab.models import MODELS, build_model
from prunelab.models.resnet import ResNetConfig
from prunelab.models.vit import ViTConfig
from prunelab.pruning import PruneContext, apply_weights, prune
from prunelab.pruning.batchnorm import recalibrate_batchnorm
from prunelab.pruning.sparsity import measure_sparsity

from ..pruning.test_targets import ResidualNet

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {
    "lenet5": MODELS["lenet5"].config_type(),
    "resnet": ResNetConfig(widths=(8, 16)),
    "vit": ViTConfig(dim=32, depth=2, heads=4, mlp_dim=48),
}


def _inputs(n: int, seed: int, features: int = 784) -> torch.Tensor:
    return torch.rand(n, features, generator=torch.Generator().manual_seed(seed))


def _zoo(name: str, x: torch.Tensor) -> nn.Module:
    net = build_model(name, SMALL[name], torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():  # trained-like BatchNorm: nonzero shifts, statistics of real inputs
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return recalibrate_batchnorm(net, x)


def _equal(masked: nn.Module, compacted: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return max_difference(compacted(x), masked(x))


@pytest.mark.parametrize("family", ["lenet5", "resnet", "vit"])
@pytest.mark.parametrize("method", ["unit-act-refit", "unit"])
def test_every_zoo_model_compacts_to_the_masked_outputs(family: str, method: str) -> None:
    x = _inputs(64, 0)
    net = _zoo(family, x)
    masked = recalibrate_batchnorm(apply_weights(net, prune(
        net, method, 0.5, context=PruneContext(calibration=x, example=x[:1]))), x)
    compacted, report = compact_graph(masked, x[:4])
    assert type(compacted) is type(net)
    held_out = _inputs(200, 7)  # neither the example nor the checks' probe
    assert _equal(masked, compacted, held_out) <= TOLERANCE
    before = measure_sparsity(masked, example=x[:1])
    after = measure_sparsity(compacted, example=x[:1])
    assert after.params_total < before.params_total
    assert after.params_remaining <= before.params_remaining
    assert report.channels
    if method == "unit-act-refit":  # readers' columns are zero: every zeroed unit goes
        assert not report.kept
        for name, (was, now) in report.channels.items():
            assert now == was - round(0.5 * was), name
        assert after.macs_per_sample == before.macs_per_sample  # exactly the live weights


class TwoBlockNet(nn.Module):
    """A user's module, none of the zoo's: a stem, two residual blocks with BatchNorm sharing
    the stem's channels, a 1x1 projection, a flatten into the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.a1, self.a2 = nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(12, 8, 1)
        self.b1, self.b2 = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(6)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x.reshape(-1, 1, 8, 8))))
        h = h + self.a2(torch.relu(self.a1(h)))
        h = torch.relu(h + self.b2(torch.relu(self.bn_b(self.b1(h)))))
        return self.head(nn.functional.max_pool2d(h, 2).flatten(1))


def test_a_users_residual_net_compacts_with_its_coupled_channels() -> None:
    x = _inputs(64, 2, 64)
    torch.manual_seed(0)
    net = recalibrate_batchnorm(TwoBlockNet().eval(), x)
    masked = recalibrate_batchnorm(apply_weights(net, prune(
        net, "unit-obs", 0.5, context=PruneContext(calibration=x))), x)
    with torch.no_grad():  # channel 2 of the stem's group: every writer zeroed, and a bias
        masked.stem.weight[2] = 0  # shift that makes it 0 after the ReLU (bn's beta < 0)
        masked.bn.bias[2] = -1.0
        masked.bn.running_mean[2] = 0
        for conv in (masked.a2, masked.b2):
            conv.weight[2] = 0
            conv.bias[2] = 0
    compacted, report = compact_graph(masked, x[:2])
    assert _equal(masked, compacted, _inputs(100, 3, 64)) <= TOLERANCE
    assert report.channels["a1"] == (12, 6) and report.channels["b1"] == (6, 3)
    # a2's output is added to the ReLU'd stem: channel 2 is 0 + 0, gone from the whole group
    assert compacted.stem.out_channels == 7 and compacted.a2.out_channels == 7
    assert compacted.head.in_features == 7 * 16  # the flatten: 16 columns per channel


def test_grouped_convs_keep_their_channels_and_say_so() -> None:
    x = _inputs(32, 2, 64)
    torch.manual_seed(0)
    net = recalibrate_batchnorm(ResidualNet().eval(), x)
    masked = apply_weights(net, prune(net, "unit", 0.5, layers=["block.0"]))
    compacted, report = compact_graph(masked, x[:2])
    assert _equal(masked, compacted, x) <= TOLERANCE
    assert "grouped Conv2d" in report.kept["block.0"][1]


def test_a_constant_reaching_a_padded_conv_stays_and_the_report_says_why() -> None:
    x = _inputs(64, 4)
    net = _zoo("resnet", x)
    conv1 = net.stages[0][0].conv1
    with torch.no_grad():
        conv1.weight[:3] = 0  # three channels zeroed, their readers untouched
        net.stages[0][0].bn1.bias[:3] = 0.7  # ReLU(0.7): a constant into conv2 (padding 1)
    net = recalibrate_batchnorm(net, x)
    compacted, report = compact_graph(net, x[:2])
    assert _equal(net, compacted, _inputs(50, 5)) <= TOLERANCE
    assert report.kept["stages.0.0.conv1"][0] == 3
    assert "zero-padded conv" in report.kept["stages.0.0.conv1"][1]
    assert compacted.stages[0][0].conv1.out_channels == 8


def test_a_constant_into_an_unpadded_conv_or_a_linear_folds_into_its_bias() -> None:
    x = _inputs(64, 6)
    net = _zoo("lenet5", x)  # conv2 has no padding; fc1 reads conv2 through a flatten
    with torch.no_grad():
        net.conv1.weight[:2] = 0  # bias kept: relu(b) -> pool -> conv2, a constant
        net.conv1.bias[:2] = torch.tensor([0.3, 0.2])
        net.conv2.weight[:4] = 0
        net.conv2.bias[:4] = 0.1
    compacted, report = compact_graph(net, x[:2])
    assert _equal(net, compacted, _inputs(100, 8)) <= TOLERANCE
    assert compacted.conv1.out_channels == 4 and compacted.conv2.out_channels == 12
    assert report.folded == 2 + 4 * 25  # two channels into conv2, four x 5x5 columns into fc1


def test_dead_attention_heads_are_removed() -> None:
    x = _inputs(32, 9)
    net = _zoo("vit", x)
    attn0, attn1 = net.blocks[0].attn, net.blocks[1].attn
    d = attn0.q.out_features // attn0.heads
    with torch.no_grad():
        attn0.v.weight[d:2 * d] = 0  # head 1 of block 0: its values are zero
        attn0.v.bias[d:2 * d] = 0
        attn1.proj.weight[:, 2 * d:4 * d] = 0  # heads 2 and 3 of block 1: nothing reads them
    compacted, report = compact_graph(net, x[:2])
    assert _equal(net, compacted, _inputs(60, 10)) <= TOLERANCE
    assert report.heads == {"blocks.0.attn": (4, 3), "blocks.1.attn": (4, 2)}
    assert compacted.blocks[1].attn.q.out_features == 2 * d
    assert compacted.blocks[1].attn.proj.in_features == 2 * d


def test_residual_stream_channels_under_layernorm_stay() -> None:
    x = _inputs(32, 11)
    net = _zoo("vit", x)
    with torch.no_grad():  # channel 5 of the residual stream zeroed by every writer
        net.patch_embed.weight[5] = 0
        net.patch_embed.bias[5] = 0
        for block in net.blocks:
            block.attn.proj.weight[5] = 0
            block.attn.proj.bias[5] = 0
            block.mlp.fc2.weight[5] = 0
            block.mlp.fc2.bias[5] = 0
    compacted, report = compact_graph(net, x[:2])
    assert _equal(net, compacted, x) <= TOLERANCE
    assert any("LayerNorm" in why for _, why in report.kept.values())
    assert compacted.patch_embed.out_features == 32


def test_nothing_zeroed_is_a_plain_copy_and_the_input_is_untouched() -> None:
    x = _inputs(16, 12)
    net = _zoo("resnet", x)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    pruned = apply_weights(net, prune(net, "unit-act-refit", 0.5,
                                      context=PruneContext(calibration=x)))
    compacted = prunelab.compact(pruned, example_inputs=x[:2])
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert compacted is not pruned
    same, report = compact_graph(net, x[:2])
    assert not report.channels and _equal(net, same, x) == 0.0


def test_bad_inputs_get_one_line_errors() -> None:
    x = _inputs(4, 13)
    net = _zoo("lenet5", x)
    with pytest.raises(ValueError, match=r"example_inputs of shape \(4, 783\) do not fit LeNet5"):
        compact_graph(net, x[:, :783])
    with pytest.raises(ValueError, match="pass example_inputs="):
        prunelab.compact(net)
    with pytest.raises(ValueError, match="non-empty batch"):
        compact_graph(net, x[:0])


@pytest.mark.parametrize("method", ["unit", "unit-act-refit", "unit-obs", "unit-obs-allocated"])
def test_attention_heads_are_units_when_named_and_compact_away(method: str) -> None:
    x = _inputs(48, 14)
    net = _zoo("vit", x)
    weights = prune(net, method, 0.5, layers=["blocks.*.attn"],
                    context=PruneContext(calibration=x, example=x[:1]))
    d = 32 // 4
    dead_total = 0
    for b in range(2):
        attn = f"blocks.{b}.attn"
        heads = weights[f"{attn}.v"].reshape(4, d, -1).ne(0).flatten(1).any(1)
        for part in ("q", "k"):  # the same heads' q and k rows are zero too
            same = weights[f"{attn}.{part}"].reshape(4, d, -1).ne(0).flatten(1).any(1)
            assert torch.equal(same, heads)
        dead_total += int((~heads).sum())
        if method != "unit":  # the output projection is refit without them
            proj = weights[f"{attn}.proj"].reshape(-1, 4, d)
            assert bool((proj[:, ~heads] == 0).all())
    assert dead_total == 4 if method != "unit-obs-allocated" else 0 < dead_total < 8
    masked = apply_weights(net, weights)
    compacted, report = compact_graph(masked, x[:2])
    assert _equal(masked, compacted, _inputs(80, 15)) <= TOLERANCE
    assert sum(a - b for a, b in report.heads.values()) == dead_total
    if method == "unit":  # values are v's bias for every token: folded into proj's bias
        assert report.folded == dead_total * d
    with torch.no_grad():
        dense = net(x)
        err = float((masked(x) - dense).pow(2).mean())
        plain = float((apply_weights(net, prune(net, "unit", 0.5, layers=["blocks.*.attn"]))(x)
                       - dense).pow(2).mean())
    assert method == "unit" or err < plain


def test_methods_that_cannot_prune_heads_say_so() -> None:
    x = _inputs(8, 16)
    with pytest.raises(ValueError, match="'random-unit' cannot prune attention heads.*unit-obs"):
        prune(_zoo("vit", x), "random-unit", 0.5, layers=["blocks.0.attn"])
    with pytest.raises(ValueError, match="cannot be pruned.*Attention"):
        prune(_zoo("vit", x), "weight", 0.5, layers=["blocks.0.attn"])


def test_the_equality_check_runs_without_tensorfloat32_and_restores_the_settings():
    from prunelab.inference.structural import full_float32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with pytest.raises(KeyError), full_float32():
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
            raise KeyError  # restored on the way out of an error too
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
