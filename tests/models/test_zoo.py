"""The model zoo: registry, input shapes, pinned sizes, configs and seeded initialisation."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from prunelab.models import (
    MODELS,
    LeNet5Config,
    MLPConfig,
    ResNetConfig,
    ViTConfig,
    build_model,
)
from prunelab.models.base import as_images, materialise
from prunelab.train import TrainConfig

IMAGE_FAMILIES = {"lenet5": LeNet5Config(), "resnet": ResNetConfig(), "vit": ViTConfig()}
"""Each new family with its default config."""

PARAMETERS = {"lenet5": 61_706, "resnet": 77_754, "vit": 139_018}
"""Parameter counts of the defaults: classic LeNet-5; the 16/32/64 one-block ResNet; the
patch-7, width-64, 4 x 4-head, MLP-128 ViT with class token (the reference designs' counts)."""


def _build(name: str, seed: int, config=None) -> nn.Module:
    config = IMAGE_FAMILIES[name] if config is None else config
    return build_model(name, config, torch.Generator().manual_seed(seed))


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(IMAGE_FAMILIES))
def test_default_parameter_count(name):
    assert _count(_build(name, 0)) == PARAMETERS[name]


@pytest.mark.parametrize(("name", "config", "count"), [
    ("lenet5", LeNet5Config(padding=0), 44_426),  # 16 * 4 * 4 = 256 features into fc1
    ("vit", ViTConfig(pool="mean"), 139_018 - 64 - 64),  # no class token, 16 positions
])
def test_variant_parameter_count(name, config, count):
    assert _count(_build(name, 0, config)) == count


@pytest.mark.parametrize("name", sorted(IMAGE_FAMILIES))
def test_flat_and_image_inputs_give_the_same_logits(name, one_thread):
    net = _build(name, 0).eval()
    x = torch.rand(5, 784, generator=torch.Generator().manual_seed(1))
    flat, images = net(x), net(x.reshape(5, 1, 28, 28))
    assert flat.shape == (5, 10)
    assert torch.equal(flat, images)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 100), (784,), (2, 1, 14, 14)])
def test_other_input_shapes_are_refused(shape):
    with pytest.raises(ValueError, match=r"\(N, 784\) or \(N, 1, 28, 28\)"):
        as_images(torch.zeros(shape))


@pytest.mark.parametrize("name", sorted(IMAGE_FAMILIES))
def test_same_seed_same_weights_other_seed_other_weights(name):
    a, b, c = (_build(name, s).state_dict() for s in (0, 0, 1))
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
        if torch.equal(a[key], c[key]):  # only constant inits (zeros, ones) may not depend on it
            assert (a[key] == a[key].flatten()[0]).all(), key


@pytest.mark.parametrize("name", sorted(IMAGE_FAMILIES))
def test_init_never_touches_the_global_rng(name):
    before = torch.get_rng_state()
    torch.manual_seed(123)
    a = _build(name, 0).state_dict()
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(123).get_state())
    torch.manual_seed(456)
    b = _build(name, 0).state_dict()
    torch.set_rng_state(before)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resnet_init_scheme():
    net = _build("resnet", 0, ResNetConfig(widths=(64, 64), blocks_per_stage=2))
    conv = net.stages[1][0].conv2  # 64 -> 64, 3x3: fan_out = 64 * 9
    assert float(conv.weight.detach().std()) == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    bn = net.stages[1][0].bn1
    assert bool((bn.weight == 1).all() and (bn.bias == 0).all())
    assert bool((bn.running_mean == 0).all() and (bn.running_var == 1).all())
    assert int(bn.num_batches_tracked) == 0


def test_vit_init_scheme():
    net = _build("vit", 0)
    w = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, nn.Linear)])
    assert float(w.abs().max()) <= 0.04  # truncated at 2 std
    assert float(w.std()) == pytest.approx(0.02 * 0.88, rel=0.05)  # N(0, 1) cut at +-2: std 0.88
    assert all(not m.bias.any() for m in net.modules() if isinstance(m, nn.Linear))


def test_a_module_without_an_init_rule_is_an_error():
    with pytest.raises(TypeError, match="no init rule for BatchNorm1d"):
        materialise(lambda: nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
                    {nn.Linear: lambda m, g: None}, None)


def test_resnet_layout():
    net = _build("resnet", 0, ResNetConfig(blocks_per_stage=2))
    assert [len(stage) for stage in net.stages] == [2, 2, 2]
    projected = [(i, j) for i, stage in enumerate(net.stages) for j, block in enumerate(stage)
                 if not isinstance(block.shortcut, nn.Identity)]
    assert projected == [(1, 0), (2, 0)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    assert [net.stages[i][0].conv1.stride for i in range(3)] == [(1, 1), (2, 2), (2, 2)]


def test_lenet5_layers():
    net = _build("lenet5", 0)
    shapes = {name: tuple(m.weight.shape) for name, m in net.named_children()}
    assert shapes == {"conv1": (6, 1, 5, 5), "conv2": (16, 6, 5, 5), "fc1": (120, 400),
                      "fc2": (84, 120), "head": (10, 84)}
    assert all(m.bias is not None for m in net.children())
    assert all(m.bias is None for m in _build("lenet5", 0, LeNet5Config(bias=False)).children())


def test_registry_builds_every_family():
    assert set(MODELS) == {"mlp", *IMAGE_FAMILIES}
    configs = {"mlp": MLPConfig(hidden=(8,)), **IMAGE_FAMILIES}
    for name, family in MODELS.items():
        net = build_model(name, configs[name], torch.Generator().manual_seed(0))
        assert net(torch.zeros(2, 784)).shape == (2, 10)
        assert isinstance(family.recipe, TrainConfig)
    assert MODELS["mlp"].recipe == TrainConfig()


def test_registry_refuses_unknown_names_and_wrong_configs():
    with pytest.raises(ValueError, match=r"unknown model 'alexnet'; choose from \['lenet5'"):
        build_model("alexnet", LeNet5Config())
    with pytest.raises(TypeError, match="model 'vit' takes a ViTConfig, got ResNetConfig"):
        build_model("vit", ResNetConfig())


@pytest.mark.parametrize(("config_type", "kwargs", "field"), [
    (LeNet5Config, {"num_classes": 0}, "num_classes"),
    (LeNet5Config, {"padding": -1}, "padding"),
    (LeNet5Config, {"padding": 1.5}, "padding"),
    (LeNet5Config, {"bias": 1}, "bias"),
    (ResNetConfig, {"widths": ()}, "widths"),
    (ResNetConfig, {"widths": (16, 0)}, "widths"),
    (ResNetConfig, {"widths": (16, 2.5)}, "widths"),
    (ResNetConfig, {"blocks_per_stage": 0}, "blocks_per_stage"),
    (ResNetConfig, {"num_classes": True}, "num_classes"),
    (ViTConfig, {"patch": 5}, "patch"),
    (ViTConfig, {"patch": 0}, "patch"),
    (ViTConfig, {"dim": 0}, "dim"),
    (ViTConfig, {"heads": 3}, "heads"),
    (ViTConfig, {"depth": -1}, "depth"),
    (ViTConfig, {"mlp_dim": 0}, "mlp_dim"),
    (ViTConfig, {"pool": "max"}, "pool"),
    (ViTConfig, {"num_classes": 0}, "num_classes"),
])
def test_bad_config_values_name_the_field(config_type, kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field} must .*got {re.escape(repr(kwargs[field]))}$"):
        config_type(**kwargs)


def test_configs_are_frozen_and_widths_a_tuple():
    config = ResNetConfig(widths=[8, 16])
    assert config.widths == (8, 16)
    with pytest.raises(AttributeError):
        config.widths = (1,)
