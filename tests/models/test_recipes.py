"""Training recipes: TrainConfig's optimiser and schedule options, and each family's recipe."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.data import Dataset
from prunelab.models import MODELS, LeNet5Config, MLPConfig, ResNetConfig, ViTConfig, build_mlp
from prunelab.train import StepInfo, TrainConfig, train

from ..conftest import make_images

SMALL = {"mlp": MLPConfig(hidden=(32,)), "lenet5": LeNet5Config(),
         "resnet": ResNetConfig(widths=(8, 16)), "vit": ViTConfig(dim=32, depth=2)}
"""A quick-to-train config of every family."""


def _tiny_data(n_train: int = 128, n_test: int = 32) -> Dataset:
    """Learnable images (a class-dependent bright block on noise), as ``load_dataset`` gives."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=n_train + n_test)
    x = torch.from_numpy(make_images(labels, rng).reshape(-1, 784)).float() / 255
    y = torch.from_numpy(labels).long()
    return Dataset("fashion-mnist", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def _lrs(model: nn.Module, config: TrainConfig) -> list[float]:
    seen: list[float] = []

    def record(info: StepInfo) -> None:
        seen.append(info.lr)

    train(model, _tiny_data(), config, on_step=record)
    return seen


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"optimizer": "sgd"}, r"optimizer must be one of \['adam', 'adamw'\], got 'sgd'"),
    ({"schedule": "cosine"}, r"schedule must be one of \['constant', 'onecycle'\], got 'cosine'"),
    ({"weight_decay": -0.1}, "weight_decay must be non-negative, got -0.1"),
    ({"weight_decay": float("nan")}, "weight_decay must be non-negative, got nan"),
])
def test_bad_recipe_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        TrainConfig(**kwargs)


def test_default_recipe_is_the_original_fused_adam_loop(one_thread):
    """Bit for bit the loop train() ran before recipes existed."""
    data = _tiny_data()
    a = build_mlp(MLPConfig(hidden=(16,)), torch.Generator().manual_seed(0))
    b = copy.deepcopy(a)
    train(a, data, TrainConfig(epochs=2, batch_size=32))
    optimiser = torch.optim.Adam(b.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(len(data.train_x), generator=gen)
        for idx in perm.split(32):
            loss = F.cross_entropy(b(data.train_x[idx]), data.train_y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_constant_and_onecycle_learning_rates(one_thread):
    net = build_mlp(MLPConfig(hidden=(8,)), torch.Generator().manual_seed(0))
    assert set(_lrs(net, TrainConfig(epochs=2, batch_size=32, lr=0.01))) == {0.01}
    lrs = _lrs(net, TrainConfig(epochs=2, batch_size=32, lr=0.01, schedule="onecycle"))
    assert len(lrs) == 8
    assert lrs[0] == pytest.approx(0.01 / 25)  # one-cycle starts at max_lr / div_factor
    assert max(lrs) == pytest.approx(0.01, rel=0.05)
    assert lrs.index(max(lrs)) in (2, 3)  # the peak after ~30 % of the steps
    assert lrs[-1] < lrs[0]


class _Probe(nn.Module):
    """A linear model plus a matrix and a vector that get zero (but present) gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)
        self.matrix = nn.Parameter(torch.ones(3, 3))
        self.vector = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + 0 * (self.matrix.sum() + self.vector.sum())


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_adamw_decays_matrices_not_vectors(weight_decay, one_thread):
    net = _Probe()
    config = TrainConfig(epochs=1, batch_size=32, lr=0.01, optimizer="adamw",
                         weight_decay=weight_decay)
    train(net, _tiny_data(), config)  # 4 steps
    decayed = torch.full((3, 3), (1 - 0.01 * weight_decay) ** 4)
    torch.testing.assert_close(net.matrix.detach(), decayed)
    assert torch.equal(net.vector.detach(), torch.ones(3))


def test_family_recipes():
    recipes = {name: family.recipe for name, family in MODELS.items()}
    assert recipes["mlp"] == TrainConfig()
    assert recipes["resnet"].schedule == "onecycle"
    assert (recipes["vit"].optimizer, recipes["vit"].schedule) == ("adamw", "onecycle")
    assert recipes["vit"].weight_decay > 0
    assert all(r.batch_size == 128 for r in recipes.values())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_family_learns_with_its_recipe(name, one_thread):
    family = MODELS[name]
    net = family.build(SMALL[name], torch.Generator().manual_seed(0))
    config = dataclasses.replace(family.recipe, epochs=3, batch_size=16)
    history = train(net, _tiny_data(), config)
    assert history[-1].train_loss < history[0].train_loss
