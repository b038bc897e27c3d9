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


def test_conv_macs_count_output_positions_and_need_an_example():
    net = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(),
                        nn.Conv2d(4, 2, 3, stride=2, padding=1), nn.Flatten(),
                        nn.Linear(2 * 3 * 3, 5))
    with torch.no_grad():
        net[1].weight[0] = 0  # one output channel of the first conv: 9 zero weights
    s = measure_sparsity(net, example=torch.rand(7, 64))
    assert [layer.positions for layer in s.layers] == [36, 9, 1]  # 6x6, 3x3 pixels; flat
    assert [layer.shape for layer in s.layers] == [(4, 1, 3, 3), (2, 4, 3, 3), (5, 18)]
    assert s.macs_per_sample == 27 * 36 + 72 * 9 + 90
    # not a ReLU chain of Linear layers: only the zero weights count as dead
    assert s.effective_sparsity == pytest.approx(9 / (36 + 72 + 90))
    assert s.params_total == 36 + 72 + 90 + 2 + 5
    with pytest.raises(ValueError, match="needs an example input"):
        measure_sparsity(net)


def test_linear_on_tokens_counts_every_token():
    net = nn.Sequential(nn.Unflatten(1, (4, 3)), nn.Linear(3, 6), nn.ReLU(), nn.Flatten(),
                        nn.Linear(24, 2))
    s = measure_sparsity(net, example=torch.rand(2, 12))
    assert [layer.positions for layer in s.layers] == [4, 1]
    assert s.macs_per_sample == 18 * 4 + 48


def test_batchnorm_between_layers_stops_dead_unit_reasoning():
    """A zeroed unit followed by BatchNorm outputs its shift, not 0: its readers stay alive."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2), nn.ReLU(),
                        nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        net[3].weight.fill_(1.0)
    s = measure_sparsity(net)
    assert s.effective_sparsity == pytest.approx(2 / 6) == s.zero_fraction


def test_attention_products_are_counted_once_per_sample():
    from prunelab.models import ViTConfig, build_model

    config = ViTConfig(dim=16, depth=2, heads=2, mlp_dim=32)
    net = build_model("vit", config, torch.Generator().manual_seed(0))
    s = measure_sparsity(net, example=torch.rand(3, 784))
    tokens = 17  # 16 patches of 7x7 and the class token
    # per block: Q K^T and A V over 2 heads of 8 features: 2 * (17 * 17 * 8) * 2
    assert s.activation_macs_per_sample == 2 * (2 * tokens * tokens * 8 * 2)
    weights = sum(layer.effective_weights * layer.positions for layer in s.layers)
    assert s.macs_per_sample == weights + s.activation_macs_per_sample


def test_a_hand_written_attention_matmul_is_counted_but_weights_are_not():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4, bias=False)

        def forward(self, x):
            h = self.proj(x.reshape(-1, 5, 4))  # (B, 5 tokens, 4)
            scores = h @ h.transpose(1, 2)  # (B, 5, 5): 5 * 4 * 5 multiply-adds
            return (scores @ h).flatten(1)  # (B, 5, 4): 5 * 5 * 4

    s = measure_sparsity(Mixer(), example=torch.rand(2, 20))
    assert s.activation_macs_per_sample == 100 + 100
    assert s.macs_per_sample == 16 * 5 + 200
