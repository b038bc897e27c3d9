"""Pruning any module: Conv2d layers, layer selection by name or glob, a user's residual net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from prunelab.pruning import METHODS, PruneContext, apply_weights, prune
from prunelab.pruning.coupling import coupled_layers
from prunelab.pruning.targets import as_matrix, default_layers, prunable_modules, select_layers


class ResidualNet(nn.Module):
    """None of the zoo's: a conv stem, a residual block with BatchNorm, a grouped conv, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                   nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.stem(x.reshape(-1, 1, 8, 8))))
        h = torch.relu(h + self.block(h))
        return self.head(h.mean((2, 3)))


def _net() -> ResidualNet:
    torch.manual_seed(0)
    return ResidualNet().eval()


def test_default_layers_are_every_conv_and_linear_but_the_head() -> None:
    net = _net()
    assert default_layers(net) == ["stem", "block.0", "block.3"]
    assert [n for n, _ in prunable_modules(net)] == ["stem", "block.0", "block.3", "head"]


def test_select_by_glob_keeps_model_order() -> None:
    net = _net()
    assert select_layers(net, ["head", "block.*"]) == ["block.0", "block.3", "head"]
    assert select_layers(net, ["block.3"]) == ["block.3"]


@pytest.mark.parametrize(("patterns", "match"), [
    (["bn0"], r"layer 'bn0' cannot be pruned: it matches only bn0 \(BatchNorm2d\)"),
    (["block.1"], r"'block.1' cannot be pruned.*BatchNorm2d"),
    (["nothing*"], r"layer 'nothing\*' matches no prunable layer .*stem"),
])
def test_bad_layer_names_are_named(patterns: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prune(_net(), "weight", 0.5, layers=patterns)


def test_layers_must_be_a_list_not_a_string() -> None:
    with pytest.raises(TypeError, match="list of names"):
        select_layers(_net(), "stem")


def test_a_model_without_prunable_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="no prunable layers"):
        prune(nn.Sequential(nn.BatchNorm1d(4)), "weight", 0.5)


@pytest.mark.parametrize("k", [0.25, 0.5, 0.9])
def test_conv_weight_pruning_matches_torch_l1_unstructured(k: float) -> None:
    net = _net()
    ours = prune(net, "weight", k, layers=["block.0"])["block.0"] != 0
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    conv.weight.data.copy_(net.block[0].weight)
    tprune.l1_unstructured(conv, "weight", amount=int((~ours).sum()))
    assert torch.equal(conv.weight_mask.bool(), ours)


@pytest.mark.parametrize("k", [0.25, 0.5, 0.75])
def test_conv_unit_pruning_removes_channels_like_torch_ln_structured(k: float) -> None:
    net = _net()
    ours = prune(net, "unit", k, layers=["stem"])["stem"]
    kept = as_matrix(ours).ne(0).any(1)  # (out,): channels that keep any weight
    assert int((~kept).sum()) == round(k * 8)
    conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    conv.weight.data.copy_(net.stem.weight)
    tprune.ln_structured(conv, "weight", amount=round(k * 8), n=2, dim=0)
    assert torch.equal(conv.weight_mask.flatten(1).bool().all(1), kept)
    # a kept channel keeps every weight; a removed one loses them all
    assert torch.equal(ours[kept], net.stem.weight[kept])


def test_grouped_conv_units_are_output_channels() -> None:
    net = _net()
    w = prune(net, "unit", 0.5, layers=["block.3"])["block.3"]
    assert w.shape == (8, 4, 3, 3)  # (out, in/groups, kh, kw)
    assert int(as_matrix(w).ne(0).any(1).sum()) == 4


@pytest.mark.parametrize("method", ["weight", "unit", "global-weight", "global-unit",
                                    "random-weight", "random-unit"])
def test_data_free_methods_prune_a_residual_batchnorm_net(method: str) -> None:
    net = _net()
    weights = prune(net, method, 0.5, context=PruneContext(example=torch.rand(1, 64)))
    # stem and block.3 write the same channels (the residual add): units only inside the block
    unit = METHODS[method].granularity == "unit"
    assert sorted(weights) == (["block.0"] if unit else ["block.0", "block.3", "stem"])
    pruned = apply_weights(net, weights)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / total == pytest.approx(0.5, abs=0.1)
    assert torch.equal(pruned.head.weight, net.head.weight)
    assert torch.equal(pruned.bn0.running_var, net.bn0.running_var)
    assert pruned(torch.randn(3, 64)).shape == (3, 5)
    assert METHODS[method].granularity in {"weight", "unit"}


def test_apply_weights_refuses_a_wrong_shape_for_a_conv() -> None:
    with pytest.raises(ValueError, match="cannot apply a \\(8, 9\\) weight to layer 'stem'"):
        apply_weights(_net(), {"stem": torch.zeros(8, 9)})


def test_unit_defaults_follow_the_coupling_of_the_graph() -> None:
    net, x = _net(), torch.rand(1, 64)
    groups = coupled_layers(net, x)
    assert groups["stem"] == groups["block.3"] == ("stem", "block.3")
    assert groups["block.0"] == ("block.0",) and groups["head"] == ("head",)
    with pytest.raises(ValueError, match="needs an example input"):
        prune(net, "unit", 0.5)
    with pytest.raises(ValueError, match=r"example input of shape \(1, 63\) does not fit"):
        prune(net, "unit", 0.5, context=PruneContext(example=torch.rand(1, 63)))
    named = prune(net, "unit", 0.5, layers=["stem"])  # named layers are pruned as asked
    assert sorted(named) == ["stem"]


def test_zoo_unit_layers_are_block_internal_channels_and_mlp_hidden_units() -> None:
    from prunelab.models import MODELS, build_model

    def units(name: str) -> list[str]:
        net = build_model(name, MODELS[name].config_type(), torch.Generator().manual_seed(0))
        return sorted(prune(net, "unit", 0.5, context=PruneContext(
            example=torch.rand(1, 784))))

    assert units("resnet") == ["stages.0.0.conv1", "stages.1.0.conv1", "stages.2.0.conv1"]
    assert units("vit") == [f"blocks.{i}.mlp.fc1" for i in range(4)]
    assert units("lenet5") == ["conv1", "conv2", "fc1", "fc2"]


def test_magnitude_nm_groups_a_convs_fan_in() -> None:
    w = prune(_net(), "magnitude-2:4", 0.5, layers=["block.0"])["block.0"]
    groups = as_matrix(w).reshape(8, -1, 4)  # (out, 72 / 4 groups, 4)
    assert w.shape == (8, 8, 3, 3) and bool(((groups != 0).sum(-1) <= 2).all())
