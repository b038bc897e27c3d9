"""Compaction and sparse layers: outputs equal the masked network's; sizes as expected."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from prunelab.inference import layers as layers_module
from prunelab.inference.compact import CompactMLP, compact, with_plan
from prunelab.inference.layers import LAYER_BACKENDS
from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import apply_weights, prune
from prunelab.pruning.sparsity import measure_sparsity

HIDDEN = (64, 32, 16)


def _net(bias: bool = False) -> torch.nn.Module:
    net = build_mlp(MLPConfig(hidden=HIDDEN, bias=bias), torch.Generator().manual_seed(0))
    if bias:  # non-zero biases, so that bias-only units matter
        with torch.no_grad():
            for layer in net.layers:
                layer.bias.uniform_(-0.1, 0.3, generator=torch.Generator().manual_seed(1))
    return net


X = torch.rand(40, 784, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("backend", list(LAYER_BACKENDS))
@pytest.mark.parametrize("k", [0.0, 0.5, 0.97, 1.0])
@pytest.mark.parametrize("method", ["weight", "unit"])
def test_outputs_match_masked_network(method, k, backend):
    pruned = apply_weights(_net(), prune(_net(), method, k))
    small = compact(pruned, backend, chunk=16)  # 40 samples: three chunks
    with torch.no_grad():
        assert (small(X) - pruned(X)).abs().max() <= 1e-4
        for n in (1, 3):  # sample by sample (csr-numba) up to BY_SAMPLE_MAX
            assert (small(X[:n]) - pruned(X[:n])).abs().max() <= 1e-4
    assert small.plan == (backend,) * 4


@pytest.mark.parametrize("backend", list(LAYER_BACKENDS))
def test_an_empty_batch_gives_an_empty_output(backend):
    pruned = apply_weights(_net(), prune(_net(), "weight", 0.9))
    with torch.no_grad():
        assert compact(pruned, backend)(torch.rand(0, 784)).shape == (0, 10)


@pytest.mark.parametrize("backend", list(LAYER_BACKENDS))
@pytest.mark.parametrize("batch", [1, 5])
def test_every_layer_runs_batch_major_like_feature_major(backend, batch):
    """``forward_rows`` on (batch, in) is ``forward`` on (in, batch), transposed, with a bias."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(7, 12, generator=gen) * (torch.rand(7, 12, generator=gen) < 0.5)
    layer = LAYER_BACKENDS[backend](w, torch.randn(7, generator=gen), relu=True)
    h = torch.rand(batch, 12, generator=gen)
    with torch.no_grad():
        expected = torch.relu(h @ w.T + layer.bias.flatten())
        assert (layer.forward_rows(h) - expected).abs().max() <= 1e-5
        assert (layer(h.T.contiguous()).T - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["weight", "unit"])
def test_outputs_match_with_biases(method):
    net = _net(bias=True)
    pruned = apply_weights(net, prune(net, method, 0.9))
    for backend in LAYER_BACKENDS:
        with torch.no_grad():
            assert (compact(pruned, backend)(X) - pruned(X)).abs().max() <= 1e-4


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_large_dense_batches_match_with_and_without_fused_linear(monkeypatch, bias, fused):
    """From FUSED_MIN_BATCH samples, dense layers may run oneDNN's linear with its ReLU."""
    monkeypatch.setattr(layers_module, "_FUSED_LINEAR", fused and layers_module._FUSED_LINEAR)
    monkeypatch.setattr(layers_module, "FUSED_MIN_WEIGHTS", 0)  # this net's layers are small
    net = _net(bias=bias)
    pruned = apply_weights(net, prune(net, "unit", 0.5))
    x = torch.rand(layers_module.FUSED_MIN_BATCH + 3, 784,
                   generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (compact(pruned)(x) - pruned(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("backend", list(LAYER_BACKENDS))
def test_compacted_networks_copy_and_pickle(backend):
    pruned = apply_weights(_net(), prune(_net(), "weight", 0.9))
    small = compact(pruned, backend)
    with torch.no_grad():
        expected = small(X)
        for twin in (copy.deepcopy(small), pickle.loads(pickle.dumps(small))):
            assert torch.equal(twin(X), expected)


def test_unpruned_model_keeps_its_sizes():
    assert compact(_net()).sizes == (784, *HIDDEN, 10)


def test_unit_pruning_halves_every_hidden_layer():
    pruned = apply_weights(_net(), prune(_net(), "unit", 0.5))
    small = compact(pruned)
    assert small.sizes == (784, 32, 16, 8, 10)
    live = sum(int((layer.weight != 0).sum()) for layer in small.layers)
    assert live == measure_sparsity(pruned).macs_per_sample


def test_unread_pixels_and_dead_units_are_dropped():
    net = _net()
    with torch.no_grad():
        net.layers[0].weight[:, :100] = 0  # pixels 0..99 read by nobody
        net.layers[1].weight[:, 5] = 0  # unit 5 of layer 0 never read: its row goes too
        net.layers[1].weight[7, :] = 0  # unit 7 of layer 1 produces nothing: its column goes
    small = compact(net)
    assert small.sizes == (684, 63, 31, 16, 10)
    assert torch.equal(small.input_index, torch.arange(100, 784))
    with torch.no_grad():
        assert (small(X) - net(X)).abs().max() <= 1e-4


def test_weight_pruning_at_high_sparsity_also_compacts():
    pruned = apply_weights(_net(), prune(_net(), "weight", 0.97))
    sizes = compact(pruned).sizes
    assert sizes[0] < 784 and sizes[-1] == 10


def test_with_plan_converts_between_backends():
    pruned = apply_weights(_net(), prune(_net(), "weight", 0.9))
    plan = ("csr-numba", "dense", "csr-torch", "dense")
    net = with_plan(compact(pruned), plan)
    assert net.plan == plan
    back = with_plan(net, "dense")
    with torch.no_grad():
        assert (net(X) - pruned(X)).abs().max() <= 1e-4
        assert (back(X) - pruned(X)).abs().max() <= 1e-4


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("plan", [("dense", "csr-numba", "dense", "csr-numba"),
                                  ("csr-numba", "csr-numba", "csr-numba", "dense")])
def test_mixed_plans_without_torch_csr_stay_batch_major(monkeypatch, plan, bias):
    """Dense and numba layers both run on (batch, features) activations: nothing transposes
    them, and the outputs still match at every batch size (one sample, a part of a tile, more
    than a tile, and with biases)."""
    net = _net(bias=bias)
    pruned = apply_weights(net, prune(net, "weight", 0.9))
    small = with_plan(compact(pruned), plan)
    monkeypatch.setattr(CompactMLP, "_run", lambda *a: pytest.fail("went feature-major"))
    x = torch.rand(150, 784, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for n in (1, 3, 150):
            assert (small(x[:n]) - pruned(x[:n])).abs().max() <= 1e-4


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="compacting a Linear traces its graph: pass example"):
        compact(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="plan= chooses the layer backends of an MLP"):
        compact(torch.nn.Linear(3, 2), "dense", example_inputs=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown layer backend 'blocked'"):
        compact(_net(), "blocked")
    with pytest.raises(ValueError, match="2 backends for 4 layers"):
        compact(_net(), ["dense", "dense"])
    with pytest.raises(ValueError, match="expected 784 input features"):
        compact(_net())(torch.zeros(2, 10))


@pytest.mark.parametrize("backend", list(LAYER_BACKENDS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.uint8])
def test_inputs_other_than_float32_are_refused_by_every_backend(backend, dtype):
    small = compact(apply_weights(_net(), prune(_net(), "weight", 0.9)), backend)
    with pytest.raises(TypeError, match="expected float32 inputs"):
        small(X.to(dtype))


def test_layers_that_do_not_chain_are_refused():
    layers = [LAYER_BACKENDS["dense"](torch.ones(4, 3), None, True),
              LAYER_BACKENDS["dense"](torch.ones(2, 5), None, False)]
    with pytest.raises(ValueError, match="do not chain"):
        CompactMLP(3, torch.arange(3), layers)


def test_torch_csr_layers_slice_wide_batches(monkeypatch):
    monkeypatch.setattr(layers_module, "TORCH_CSR_CHUNK", 16)
    pruned = apply_weights(_net(), prune(_net(), "weight", 0.9))
    with torch.no_grad():
        assert (compact(pruned, "csr-torch")(X) - pruned(X)).abs().max() <= 1e-4
