"""Calibration-aware methods on any module: hooks and Gram matrices instead of a Linear chain."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import PruneContext, apply_weights, prune
from prunelab.pruning.capture import capture_grams, forward_order

from .test_targets import ResidualNet

pytestmark = pytest.mark.usefixtures("one_thread")


class Wrapped(nn.Module):
    """An MLP inside a user's module: not a chain the library recognises, so hooks are used."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.body = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _mlp() -> nn.Module:
    return build_mlp(MLPConfig(input_size=20, hidden=(24, 16), num_classes=5),
                     torch.Generator().manual_seed(0))


def _calibration(n: int, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "refit-magnitude", "refit-gradual",
                                    "wanda-2:4", "sparsegpt-2:4"])
def test_hooks_reproduce_the_chain_path_on_an_mlp(method: str) -> None:
    mlp, x = _mlp(), _calibration(300, 20)
    context = PruneContext(calibration=x)
    k = 0.5 if method.endswith("2:4") else 0.7
    chain = prune(mlp, method, k, context=context)
    hooks = prune(Wrapped(mlp), method, k, layers=None, context=context)
    assert sorted(hooks) == sorted(f"body.{n}" for n in chain)
    for name, w in chain.items():
        got = hooks[f"body.{name}"]
        assert torch.equal(got != 0, w != 0), name  # the same mask
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-5)


def test_conv_grams_equal_the_unfolded_inputs() -> None:
    net, x = ResidualNet(), _calibration(20, 64)
    grams = capture_grams(net.eval(), net, "block.0", x, batch_size=7)
    with torch.no_grad():
        h = torch.relu(net.bn0(net.stem(x.reshape(-1, 1, 8, 8))))  # block.0's input
    rows = F.unfold(h, 3, padding=1).transpose(1, 2).reshape(-1, 8 * 9).double()
    assert grams.count == 20 * 64
    torch.testing.assert_close(grams.gram, rows.T @ rows / len(rows), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grams.cross, grams.gram)  # dense and pruned are one network here


def test_layers_are_processed_in_forward_order() -> None:
    net = ResidualNet()
    assert forward_order(net, ["head", "block.0", "stem"], torch.rand(1, 64)) == [
        "stem", "block.0", "head"]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "refit-magnitude", "refit-wanda",
                                    "refit-gradual", "wanda-2:4", "refit-2:4"])
def test_weight_methods_prune_a_residual_batchnorm_net(method: str) -> None:
    torch.manual_seed(0)
    net = ResidualNet().eval()
    x = _calibration(64, 64)
    k = 0.5 if method.endswith("2:4") else 0.6
    layers = ["stem", "block.0"]
    weights = prune(net, method, k, layers=layers, context=PruneContext(calibration=x))
    assert set(layers) <= set(weights)
    for name in layers:
        w = weights[name]
        assert w.shape == dict(net.named_modules())[name].weight.shape
        assert float((w == 0).float().mean()) == pytest.approx(k, abs=0.06)
    pruned = apply_weights(net, weights)
    assert torch.isfinite(pruned(x)).all()


def test_refits_reproduce_the_dense_network_better_than_magnitude() -> None:
    torch.manual_seed(0)
    net = ResidualNet().eval()
    x = _calibration(128, 64)
    with torch.no_grad():
        dense = net(x)
    context = PruneContext(calibration=x)
    errors = {}
    for method in ("weight", "refit-magnitude", "sparsegpt"):
        weights = prune(net, method, 0.7, layers=["stem", "block.0"], context=context)
        with torch.no_grad():
            errors[method] = float((apply_weights(net, weights)(x) - dense).pow(2).mean())
    assert errors["refit-magnitude"] < errors["weight"]
    assert errors["sparsegpt"] < errors["weight"]


def test_calibration_of_the_wrong_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"calibration data of shape \(5, 63\) does not fit"):
        prune(ResidualNet(), "wanda", 0.5, layers=["stem"],
              context=PruneContext(calibration=torch.rand(5, 63)))


def test_grouped_convs_are_pruned_per_group() -> None:
    net, x = ResidualNet().eval(), _calibration(60, 64)
    conv = net.block[3]  # groups=2: 4 output channels read 4 input channels each
    grams = capture_grams(net, net, "block.3", x)
    with torch.no_grad():
        h = torch.relu(net.block[1](net.block[0](torch.relu(net.bn0(net.stem(
            x.reshape(-1, 1, 8, 8)))))))
    rows = F.unfold(h, 3, padding=1).transpose(1, 2).reshape(-1, 8 * 9).double()
    assert grams.gram.shape == (2, 36, 36)
    for g in range(2):  # group g's inputs are input channels 4g..4g+3
        part = rows[:, 36 * g:36 * (g + 1)]
        torch.testing.assert_close(grams.gram[g], part.T @ part / len(rows))
    context = PruneContext(calibration=x)
    w = prune(net, "refit-magnitude", 0.5, layers=["block.3"], context=context)["block.3"]
    # each group's rows refit alone: as a plain conv refit on that group's inputs
    for g in range(2):
        solo = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)).eval()
        with torch.no_grad():
            solo[0].weight.copy_(conv.weight[4 * g:4 * (g + 1)])
        ref = prune(solo, "refit-magnitude", 0.5, layers=["0"],
                    context=PruneContext(calibration=h[:, 4 * g:4 * (g + 1)]))["0"]
        torch.testing.assert_close(w[4 * g:4 * (g + 1)], ref, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        dense = net(x)
        errors = {m: float((apply_weights(net, prune(net, m, 0.7, layers=["block.3"],
                                                     context=context))(x) - dense).pow(2).mean())
                  for m in ("weight", "sparsegpt", "refit-magnitude")}
    assert errors["sparsegpt"] < errors["weight"] and errors["refit-magnitude"] < errors["weight"]


def test_calibration_may_be_batches_or_a_loader_of_pairs() -> None:
    x = _calibration(40, 64)
    pairs = [(x[i:i + 16], torch.zeros(len(x[i:i + 16]))) for i in range(0, 40, 16)]
    for given in ([x[:16], x[16:]], pairs):
        assert torch.equal(PruneContext(calibration=given).calibration, x)
    with pytest.raises(TypeError, match="iterable of input batches"):
        PruneContext(calibration=3)
    net = ResidualNet().eval()
    a = prune(net, "wanda", 0.5, layers=["stem"], context=PruneContext(calibration=x))
    b = prune(net, "wanda", 0.5, layers=["stem"], context=PruneContext(calibration=pairs))
    assert torch.equal(a["stem"], b["stem"])


@pytest.mark.parametrize("wrap", [False, True])
def test_refit_global_keeps_global_magnitudes_per_layer_split(wrap: bool) -> None:
    net = ResidualNet().eval() if wrap else _mlp()
    x = _calibration(64, 64 if wrap else 20)
    context = PruneContext(calibration=x)
    layers = ["stem", "block.0"] if wrap else None
    weights = prune(net, "refit-global", 0.7, layers=layers, context=context)
    reference = prune(net, "global-weight", 0.7, layers=layers)
    for name, w in reference.items():  # the same per-layer sparsities as one |w| threshold
        assert float((weights[name] == 0).float().mean()) == pytest.approx(
            float((w == 0).float().mean()), abs=1e-9), name
    zeros = sum(int((weights[n] == 0).sum()) for n in reference)
    assert zeros == round(0.7 * sum(w.numel() for w in reference.values()))


def test_energy_costs_are_computed_once_per_model_and_images(monkeypatch) -> None:
    """refit-allocated's per-layer costs depend on the dense model and the images only: a sweep
    computes them once; other images or weights compute them again, with the same result as
    a fresh computation."""
    from prunelab.pruning import allocation, calibrated

    calls = []
    real = allocation._layer_costs
    monkeypatch.setattr(allocation, "_layer_costs",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(calibrated, "_SWEEP_CACHE", {})
    net, x = ResidualNet().eval(), _calibration(30, 64)
    first = prune(net, "refit-allocated", 0.5, context=PruneContext(calibration=x))
    prune(net, "refit-allocated", 0.7, context=PruneContext(calibration=x))
    assert len(calls) == 1
    assert all(torch.equal(w, first[n]) for n, w in prune(
        net, "refit-allocated", 0.5, context=PruneContext(calibration=x)).items())
    other = prune(net, "refit-allocated", 0.5, context=PruneContext(calibration=x * 0.5))
    assert len(calls) == 2
    calibrated._SWEEP_CACHE.clear()
    fresh = prune(net, "refit-allocated", 0.5, context=PruneContext(calibration=x * 0.5))
    assert all(torch.equal(w, other[n]) for n, w in fresh.items())
    with torch.no_grad():
        net.block[0].weight.mul_(2)
    prune(net, "refit-allocated", 0.5, context=PruneContext(calibration=x * 0.5))
    assert len(calls) == 4
