"""Calibration-aware methods and baselines on a tiny synthetic MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import METHODS, PruneContext, apply_weights, lookup, prune
from prunelab.pruning.calibrated import damped_gram, masked_lstsq, refit_targets
from prunelab.pruning.nm import nm_mask
from prunelab.pruning.units import relu_refit

LAYERS = ("layers.0", "layers.1", "layers.2")
K = 0.75



pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def net():
    return build_mlp(MLPConfig(input_size=24, hidden=(20, 16, 12), num_classes=4),
                     torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def context():
    g = torch.Generator().manual_seed(1)
    return PruneContext(torch.randn(300, 24, generator=g), torch.Generator().manual_seed(2))


def _k(name: str) -> float:
    fixed = METHODS[name].fixed_sparsity
    return K if fixed is None else fixed


@pytest.fixture(scope="module")
def pruned(net, context):
    return {name: prune(net, name, _k(name), context=context) for name in METHODS}


def test_weight_methods_hit_sparsity_per_layer(net, pruned):
    uniform = [n for n, m in METHODS.items() if m.granularity == "weight"
               and not m.overall_sparsity]
    for name in uniform:
        for layer in LAYERS:
            w = pruned[name][layer]
            kept = int((w != 0).sum())
            # round(k * in) zeroed per row (or per layer); refits may zero a few more exactly.
            assert kept <= w.numel() - round(K * w.numel()) + w.shape[0], (name, layer)
            assert kept >= 0.9 * (1 - K) * w.numel(), (name, layer)


def test_global_weight_one_threshold_overall_sparsity(net, pruned):
    w = pruned["global-weight"]
    dense = dict(net.named_modules())
    kept = torch.cat([dense[n].weight[w[n] != 0].abs() for n in LAYERS])
    dropped = torch.cat([dense[n].weight[w[n] == 0].abs() for n in LAYERS])
    assert kept.min() >= dropped.max()
    total = sum(w[n].numel() for n in LAYERS)
    assert len(dropped) == round(K * total)
    fractions = {float((w[n] == 0).float().mean()) for n in LAYERS}
    assert len(fractions) > 1  # layers differ


def test_allocated_methods_keep_overall_sparsity(net, pruned):
    w = pruned["refit-allocated"]
    total = sum(w[n].numel() for n in LAYERS)
    kept = sum(int((w[n] != 0).sum()) for n in LAYERS)
    assert total - round(K * total) - 20 <= kept <= total - round(K * total)
    assert len({round(float((w[n] == 0).float().mean()), 3) for n in LAYERS}) > 1
    assert int((w["layers.3"] == 0).sum()) == 0  # the output layer is refit, not pruned
    units = pruned["unit-obs-allocated"]
    total = sum(len(units[n]) for n in LAYERS)
    assert sum(int((units[n] == 0).all(1).sum()) for n in LAYERS) == round(K * total)


def test_unit_methods_remove_units_per_layer(pruned):
    for name in ("random-unit", "unit-act-refit", "unit-obs", "unit-obs-selected"):
        for layer in LAYERS:
            w = pruned[name][layer]
            dead_rows = int((w == 0).all(1).sum())
            assert dead_rows == round(K * len(w)), (name, layer)
    refit = pruned["unit-obs"]
    assert "layers.3" in refit  # the output layer is refit after the last hidden layer
    dead = (refit["layers.0"] == 0).all(1)
    assert torch.equal((refit["layers.1"] == 0).all(0), dead)  # next layer ignores removed units
    units = pruned["global-unit"]
    total = sum(len(units[n]) for n in LAYERS)
    assert sum(int((units[n] == 0).all(1).sum()) for n in LAYERS) == round(K * total)


def test_random_matches_per_layer_sparsity_and_is_seeded(net, pruned):
    again = prune(net, "random-weight", K, context=PruneContext(None, torch.Generator()
                                                                   .manual_seed(2)))
    for layer in LAYERS:
        assert torch.equal(again[layer], pruned["random-weight"][layer])
        assert float((again[layer] == 0).float().mean()) == pytest.approx(K, abs=0.01)
        assert not torch.equal(again[layer] != 0, pruned["wanda"][layer] != 0)


def test_nm_masks_keep_n_of_every_m(pruned):
    for name in ("magnitude-2:4", "wanda-2:4", "sparsegpt-2:4", "refit-2:4"):
        assert METHODS[name].granularity == "n:m"
        for layer in LAYERS:
            groups = (pruned[name][layer] != 0).reshape(-1, 4).sum(1)
            assert int(groups.max()) <= 2 and float(groups.float().mean()) > 1.9, (name, layer)


def test_nm_mask_against_numpy_and_short_tail():
    scores = torch.rand(5, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = nm_mask(scores, 2, 4)
    ref = np.zeros((5, 11), dtype=bool)
    for r in range(5):
        for g in range(0, 11, 4):
            block = scores[r, g:g + 4].numpy()
            ref[r, g + np.argsort(-block)[:2]] = True
    assert np.array_equal(mask.numpy(), ref)
    assert int(mask[:, 8:].sum(1).max()) == 2  # the 3-wide tail group keeps min(N, 3)


def test_nm_pattern_validation():
    with pytest.raises(ValueError, match="0 < N < M"):
        lookup("wanda-4:4")
    assert lookup("wanda-1:8").fixed_sparsity == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match="fixed sparsity"):
        prune(build_mlp(MLPConfig(hidden=(8,))), "magnitude-2:4", 0.9)


def test_wanda_mask_matches_independent_rule(net, context):
    weights = prune(net, "wanda", 0.6, layers=["layers.0"], context=context)
    w = net.layers[0].weight.detach().numpy()
    score = np.abs(w) * np.linalg.norm(context.calibration.numpy(), axis=0)[None, :]
    keep = w.shape[1] - round(0.6 * w.shape[1])
    ref = np.zeros_like(w, dtype=bool)
    np.put_along_axis(ref, np.argsort(-score, axis=1)[:, :keep], True, axis=1)
    assert np.array_equal(weights["layers.0"].numpy() != 0, ref)
    assert np.array_equal(weights["layers.0"].numpy()[ref], w[ref])  # no update


def test_masked_lstsq_matches_numpy_both_ways():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(60, 9, generator=g, dtype=torch.float64)
    y = torch.randn(60, 3, generator=g, dtype=torch.float64)
    for drop in (0.2, 0.7):  # solved on the support, and through the inverse (OBS form)
        mask = torch.rand(3, 9, generator=g) > drop
        w = masked_lstsq(x.T @ x, y.T @ x, mask)
        for r in range(3):
            s = mask[r].numpy()
            ref = np.linalg.lstsq(x.numpy()[:, s], y.numpy()[:, r], rcond=None)[0]
            np.testing.assert_allclose(w[r].numpy()[s], ref, rtol=1e-8, atol=1e-10)
            assert (w[r].numpy()[~s] == 0).all()


def test_refit_reconstructs_better_than_plain_mask(net, context):
    x = context.calibration.double()
    w = net.layers[0].weight.detach().double()
    target = x @ w.T
    for name in ("refit-magnitude", "refit-wanda", "sparsegpt"):
        new = prune(net, name, 0.8, layers=["layers.0"], context=context)["layers.0"].double()
        plain = w * (new != 0)
        err_new = float(((x @ new.T - target) ** 2).sum())
        err_plain = float(((x @ plain.T - target) ** 2).sum())
        assert err_new < err_plain, name
    gram, rhs = damped_gram(x, 0.0), refit_targets(w, x, x)
    assert torch.allclose(gram @ w.T, rhs.T, atol=1e-8)  # dense weights solve the dense fit


def test_unit_refit_compensates(net, context):
    x = context.calibration.double()
    a = torch.relu(x @ net.layers[0].weight.double().T)
    target = a @ net.layers[1].weight.double().T
    new = prune(net, "unit-act-refit", 0.5, layers=["layers.0"], context=context)
    kept = (new["layers.0"] != 0).any(1)
    refit = (a * kept) @ new["layers.1"].double().T
    plain = (a * kept) @ net.layers[1].weight.double().T
    assert ((refit - target) ** 2).sum() < ((plain - target) ** 2).sum()


@pytest.mark.parametrize("with_bias", [False, True])
def test_relu_refit_follows_the_relu_outputs_better(with_bias):
    g = torch.Generator().manual_seed(5)
    acts = torch.relu(torch.randn(400, 12, generator=g, dtype=torch.float64))
    kept = torch.rand(12, generator=g) > 0.5
    acts = acts * kept
    target = torch.randn(400, 6, generator=g, dtype=torch.float64)  # half of it negative
    bias = torch.randn(6, generator=g, dtype=torch.float64) if with_bias else None
    offset = 0.0 if bias is None else bias
    gram, mask = damped_gram(acts, 1e-9), kept[None, :].expand(6, 12)
    plain = masked_lstsq(gram, (target).T @ acts / len(acts), mask)

    def relu_error(v):
        return float(((torch.relu(acts @ v.T + offset) - torch.relu(target + offset)) ** 2).sum())

    refit = relu_refit(gram, mask, plain, acts, target, rounds=3, bias=bias)
    assert relu_error(refit) < 0.98 * relu_error(plain)
    assert (refit[:, ~kept] == 0).all()  # removed units stay removed
    # Targets all positive: nothing for the ReLU to discard, the plain fit is kept.
    positive = target.abs() + 1 - offset
    plain_pos = masked_lstsq(gram, (positive).T @ acts / len(acts), mask)
    same = relu_refit(gram, mask, plain_pos, acts, positive, rounds=3, bias=bias)
    assert torch.allclose(same, plain_pos, atol=1e-10)


def test_methods_do_not_mutate_and_survive_dead_inputs(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(5))
    x[:, :6] = 0.0  # dead pixels
    dead_net = apply_weights(net, {"layers.0": net.layers[0].weight * (torch.arange(20) > 3)
                                   [:, None]})  # four dead units
    context = PruneContext(x, torch.Generator().manual_seed(0))
    for name in METHODS:
        for model in (net, dead_net):
            for w in prune(model, name, 0.9 if METHODS[name].fixed_sparsity is None
                           else METHODS[name].fixed_sparsity, context=context).values():
                assert torch.isfinite(w).all(), name
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_calibration_is_rejected(net):
    with pytest.raises(ValueError, match="needs calibration"):
        prune(net, "wanda", 0.5)
    with pytest.raises(ValueError, match=r"\(N, 24\)"):
        prune(net, "refit-wanda", 0.5, context=PruneContext(torch.zeros(10, 7)))
    with pytest.raises(ValueError, match=r"\(N, 24\)"):
        prune(net, "unit-obs", 0.5, context=PruneContext(torch.zeros(0, 24)))


def test_best_of_keeps_the_most_faithful_candidate(net, context):
    from prunelab.pruning.select import agreement, best_of

    def dense(model, names, sparsity, ctx):
        return {n: dict(model.named_modules())[n].weight.clone() for n in names}

    def zeros(model, names, sparsity, ctx):
        return {n: torch.zeros_like(w) for n, w in dense(model, names, sparsity, ctx).items()}

    chosen = best_of({"zeros": zeros, "dense": dense})(net, list(LAYERS), 0.5, context)
    assert all(torch.equal(chosen[n], dict(net.named_modules())[n].weight) for n in LAYERS)
    assert agreement(net, net, context.calibration) == 1.0
