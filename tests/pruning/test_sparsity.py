import pytest
import torch
from torch import nn

from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import apply_weights, prune
from prunelab.pruning.sparsity import measure_sparsity


def _chain(*weights, bias=False):
    layers = []
    for w in weights:
        w = torch.tensor(w, dtype=torch.float32)
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias:
                lin.bias.fill_(0.5)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_unit_with_no_inputs_kills_its_outgoing_weights():
    net = _chain([[1, 2], [0, 0]], [[3, 4]])  # hidden unit 2 has no inputs
    s = measure_sparsity(net)
    assert s.zero_fraction == pytest.approx(2 / 6)
    assert s.effective_sparsity == pytest.approx(3 / 6)
    assert [layer.effective_weights for layer in s.layers] == [2, 1]
    assert s.params_remaining == 3 and s.macs_per_sample == 3 and s.params_total == 6


def test_unit_with_no_outputs_kills_its_incoming_weights():
    net = _chain([[1, 2], [5, 6]], [[3, 0]])  # hidden unit 2 is never read
    s = measure_sparsity(net)
    assert s.effective_sparsity == pytest.approx(3 / 6)
    assert s.layers[0].effective_sparsity == pytest.approx(0.5)


def test_dead_units_cascade_through_layers():
    # Unit a of layer 1 has no inputs -> its only reader b in layer 2 is dead -> b's outgoing
    # weight in layer 3 is dead too.
    net = _chain([[0, 0], [1, 1]], [[1, 0], [0, 1]], [[7, 7]])
    s = measure_sparsity(net)
    assert [layer.effective_weights for layer in s.layers] == [2, 1, 1]
    assert s.effective_sparsity == pytest.approx(1 - 4 / 10)


def test_bias_keeps_a_unit_without_inputs_alive():
    net = _chain([[1, 2], [0, 0]], [[3, 4]], bias=True)
    s = measure_sparsity(net)
    assert s.effective_sparsity == pytest.approx(2 / 6)  # only the two zeros
    assert s.params_total == 6 + 3 and s.params_remaining == 4 + 3


def test_effective_equals_zero_fraction_for_dense():
    net = build_mlp(MLPConfig(), torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in net.layers:  # an initial weight can be exactly 0.0: make every one nonzero
            layer.weight.copy_(torch.where(layer.weight == 0, 1e-3, layer.weight))
    s = measure_sparsity(net)
    assert s.effective_sparsity == 0 and s.zero_fraction == 0
    assert s.params_remaining == s.params_total == 2_386_000
    assert s.macs_per_sample == 2_386_000


def test_unit_pruning_of_the_seed_mlp_counts():
    net = build_mlp(MLPConfig(), torch.Generator().manual_seed(0))
    s = measure_sparsity(apply_weights(net, prune(net, "unit", 0.5)))
    # Half the units of every hidden layer remain: 784*500 + 500*500 + 500*250 + 250*100 + 100*10
    assert s.params_remaining == 392_000 + 250_000 + 125_000 + 25_000 + 1_000
