import numpy as np
import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from prunelab.models.mlp import MLPConfig, build_mlp, linear_layers
from prunelab.pruning import METHODS, apply_weights, prune
from prunelab.pruning.magnitude import percentile, unit_mask, weight_mask
from prunelab.pruning.targets import default_layers

KS = [0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99]


def _net(seed=0):
    return build_mlp(MLPConfig(hidden=(120, 80, 40)), torch.Generator().manual_seed(seed))


def _reference_weight_mask(w_torch: torch.Tensor, k: float) -> np.ndarray:
    """The challenge's rule, in its in x out view, with numpy."""
    w = w_torch.numpy().T  # (in, out)
    t = np.percentile(np.abs(w), 100 * k)
    return (np.abs(w) >= t).T


def _reference_unit_mask(w_torch: torch.Tensor, k: float) -> np.ndarray:
    w = w_torch.numpy().T.astype(np.float64)  # (in, out): a unit is a column
    norms = np.linalg.norm(w, axis=0)
    return norms >= np.percentile(norms, 100 * k)


def test_percentile_matches_numpy():
    x = torch.randn(1001, generator=torch.Generator().manual_seed(3))
    for q in KS + [1.0, 0.123]:
        assert percentile(x, q) == pytest.approx(np.percentile(x.double().numpy(), 100 * q),
                                                 abs=1e-12)


@pytest.mark.parametrize("k", KS)
def test_weight_mask_matches_percentile_rule(k):
    for _, layer in linear_layers(_net())[:-1]:
        w = layer.weight.detach()
        np.testing.assert_array_equal(weight_mask(w, k).numpy(), _reference_weight_mask(w, k))


@pytest.mark.parametrize("k", KS)
def test_unit_mask_matches_percentile_rule(k):
    for _, layer in linear_layers(_net())[:-1]:
        w = layer.weight.detach()
        np.testing.assert_array_equal(unit_mask(w, k).numpy(), _reference_unit_mask(w, k))


@pytest.mark.parametrize("k", [0.25, 0.5, 0.9, 0.99])
def test_weight_pruning_zeroes_the_same_set_as_torch_l1_unstructured(k):
    layer = nn.Linear(300, 70, bias=False)
    nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(1))
    ours = weight_mask(layer.weight.detach(), k)
    n_pruned = int((~ours).sum())
    tprune.l1_unstructured(layer, "weight", amount=n_pruned)
    assert torch.equal(layer.weight_mask.bool(), ours)


@pytest.mark.parametrize("k", [0.25, 0.5, 0.9, 0.99])
def test_unit_pruning_zeroes_the_same_units_as_torch_ln_structured(k):
    layer = nn.Linear(60, 400, bias=False)
    nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(2))
    ours = unit_mask(layer.weight.detach(), k)
    tprune.ln_structured(layer, "weight", amount=int((~ours).sum()), n=2, dim=0)
    assert torch.equal(layer.weight_mask.bool().all(1), ours)


@pytest.mark.parametrize("method", ["weight", "unit"])
def test_zero_sparsity_prunes_nothing(method):
    net = _net()
    for name, w in prune(net, method, 0.0).items():
        assert torch.equal(w, dict(net.named_modules())[name].weight)


@pytest.mark.parametrize("method", ["weight", "unit"])
@pytest.mark.parametrize("k", [0.5, 0.9])
def test_last_layer_untouched_and_model_not_mutated(method, k):
    net = _net()
    before = {n: p.clone() for n, p in net.state_dict().items()}
    weights = prune(net, method, k)
    assert sorted(weights) == ["layers.0", "layers.1", "layers.2"]
    pruned = apply_weights(net, weights)
    for n, p in net.state_dict().items():
        assert torch.equal(p, before[n])
    assert torch.equal(pruned.layers[-1].weight, net.layers[-1].weight)
    for layer in pruned.layers[:-1]:
        zero = float((layer.weight == 0).float().mean())
        assert zero == pytest.approx(k, abs=0.02)


def test_unit_pruning_zeroes_whole_rows():
    weights = prune(_net(), "unit", 0.7)
    for w in weights.values():
        rows_zero = (w == 0).all(1)
        assert torch.equal(rows_zero, (w == 0).any(1))  # a row is all zero or has no zero
        assert float(rows_zero.float().mean()) == pytest.approx(0.7, abs=0.02)


class UserNet(nn.Module):
    """Not an MLP of ours: Linear layers nested in other modules."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(20, 30), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(30, 10), nn.ReLU(), nn.Linear(10, 3))

    def forward(self, x):
        return self.head(self.encoder(x))


def test_prunes_a_users_own_module():
    net = UserNet()
    assert default_layers(net) == ["encoder.1", "head.0"]
    pruned = apply_weights(net, prune(net, "weight", 0.5))
    assert float((pruned.encoder[1].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert torch.equal(pruned.head[2].weight, net.head[2].weight)
    assert pruned(torch.randn(4, 4, 5)).shape == (4, 3)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match="sparsity must be in"):
        prune(_net(), "weight", bad)


def test_unknown_method_names_choices():
    with pytest.raises(ValueError, match="unknown pruning method 'magic'.*unit"):
        prune(_net(), "magic", 0.5)


def test_registry_holds_the_seed_methods():
    assert {"weight", "unit"} <= set(METHODS)
    assert METHODS["weight"].granularity == "weight" and METHODS["unit"].granularity == "unit"
