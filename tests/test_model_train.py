import math

import pytest
import torch

from prunelab.data import load_dataset
from prunelab.models.mlp import MLPConfig, build_mlp, linear_layers
from prunelab.train import TrainConfig, train


def test_default_architecture_and_parameter_count():
    net = build_mlp(MLPConfig(), torch.Generator().manual_seed(0))
    shapes = [tuple(m.weight.shape) for _, m in linear_layers(net)]
    assert shapes == [(1000, 784), (1000, 1000), (500, 1000), (200, 500), (10, 200)]
    assert all(m.bias is None for _, m in linear_layers(net))
    assert sum(p.numel() for p in net.parameters()) == 2_386_000


def test_glorot_uniform_init():
    net = build_mlp(MLPConfig(), torch.Generator().manual_seed(0))
    for _, layer in linear_layers(net):
        fan_out, fan_in = layer.weight.shape
        limit = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert float(w.abs().max()) <= limit
        assert float(w.std()) == pytest.approx(limit / math.sqrt(3), rel=0.05)


def test_bias_option():
    net = build_mlp(MLPConfig(hidden=(8,), bias=True))
    assert all(m.bias is not None and not m.bias.any() for _, m in linear_layers(net))


@pytest.mark.parametrize("hidden", [(0,), (10, -1), (3.5,), ("a",)])
def test_bad_hidden_sizes(hidden):
    with pytest.raises(ValueError, match="hidden sizes must be positive integers"):
        MLPConfig(hidden=hidden)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": -1}, {"lr": 0.0}, {"seed": -3}])
def test_bad_train_config(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def _train(data, seed):
    net = build_mlp(MLPConfig(hidden=(32, 16)), torch.Generator().manual_seed(seed))
    history = train(net, data, TrainConfig(epochs=2, batch_size=64, seed=seed))
    return net, history


def test_same_seed_same_weights_and_learning(tiny_data_dir):
    data = load_dataset("fashion-mnist", data_dir=tiny_data_dir)
    a, history = _train(data, 0)
    b, _ = _train(data, 0)
    c, _ = _train(data, 1)
    for (_, la), (_, lb), (_, lc) in zip(linear_layers(a), linear_layers(b), linear_layers(c),
                                         strict=True):
        assert torch.equal(la.weight, lb.weight)
        assert not torch.equal(la.weight, lc.weight)
    assert [h.epoch for h in history] == [1, 2]
    assert history[1].train_loss < history[0].train_loss
    assert history[-1].test_accuracy > 0.5  # 10 classes: chance is 0.1
