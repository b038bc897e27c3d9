"""unit-act-refit on any graph: channels dropped in a layer, the layers reading them refit."""

from __future__ import annotations

import pytest
import torch

from prunelab.models import MODELS, build_model
from prunelab.pruning import PruneContext, apply_weights, prune
from prunelab.pruning.batchnorm import recalibrate_batchnorm
from prunelab.pruning.calibrated import damped
from prunelab.pruning.structured import (
    UNIT_DAMPING,
    Reader,
    consumer_columns,
    graph_unit_compute,
    group_obs_path,
    obs_units,
)
from prunelab.pruning.targets import as_matrix
from prunelab.pruning.units import obs_path

from .test_targets import ResidualNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _zoo(name: str) -> torch.nn.Module:
    return build_model(name, MODELS[name].config_type(), torch.Generator().manual_seed(0)).eval()


def test_readers_and_their_columns_follow_convs_and_flatten() -> None:
    net, x = _zoo("lenet5"), torch.rand(1, 784)
    readers = consumer_columns(net, ["conv1", "conv2"], x)
    into_conv = readers["conv1"]
    assert list(into_conv) == ["conv2"]
    assert [c.tolist() for c in into_conv["conv2"][:2]] == [list(range(25)),
                                                            list(range(25, 50))]
    into_fc = readers["conv2"]  # 16 channels of 5x5 flattened into fc1
    assert list(into_fc) == ["fc1"] and into_fc["fc1"][3].tolist() == list(range(75, 100))


@pytest.mark.parametrize(("family", "layer", "reader", "factor"), [
    ("resnet", "stages.1.0.conv1", "stages.1.0.conv2", 0.9),  # untrained: a smaller margin
    ("vit", "blocks.2.mlp.fc1", "blocks.2.mlp.fc2", 0.5),
])
def test_units_dropped_and_readers_refit_beat_plain_unit_pruning(family, layer, reader,
                                                                 factor) -> None:
    x = torch.rand(96, 784, generator=torch.Generator().manual_seed(2))
    net = recalibrate_batchnorm(_zoo(family), x)  # BatchNorm statistics of these inputs
    weights = prune(net, "unit-act-refit", 0.5, context=PruneContext(calibration=x))
    rows = as_matrix(weights[layer]).ne(0).any(1)
    assert int((~rows).sum()) == round(0.5 * len(rows))  # half the units gone
    span = as_matrix(weights[reader]).shape[1] // len(rows)
    dead_cols = torch.cat([torch.arange(j * span, (j + 1) * span) for j in
                           torch.nonzero(~rows).flatten().tolist()])
    assert bool((as_matrix(weights[reader])[:, dead_cols] == 0).all())  # nothing reads them
    plain = prune(net, "unit", 0.5, context=PruneContext(example=x))
    # as a study does: BatchNorm statistics re-estimated after pruning (the refits assume it)
    refit_net = recalibrate_batchnorm(apply_weights(net, weights), x)
    plain_net = recalibrate_batchnorm(apply_weights(net, plain), x)
    with torch.no_grad():
        dense = net(x)
        refit_err = (refit_net(x) - dense).pow(2).mean()
        plain_err = (plain_net(x) - dense).pow(2).mean()
    assert refit_err < factor * plain_err


def test_group_obs_with_one_column_per_unit_is_the_mlp_path() -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(400, 20, generator=gen, dtype=torch.float64) * torch.rand(
        20, generator=gen, dtype=torch.float64)
    w = torch.randn(7, 20, generator=gen, dtype=torch.float64)
    gram = a.T @ a / len(a)
    one_by_one, costs = obs_path(damped(gram, UNIT_DAMPING), w @ gram, 15, batch_share=1e-9)
    reader = Reader(gram, len(a), w, w @ gram, [torch.tensor([j]) for j in range(20)], "r")
    kept, group_costs = group_obs_path([reader], 20, 15)
    assert torch.equal(kept, one_by_one)
    torch.testing.assert_close(group_costs, costs)


def test_group_obs_cost_is_what_the_best_refit_without_the_unit_loses() -> None:
    """Removing a 3-column unit costs exactly the least-squares error of the best fit of the
    other columns, ``tr((V - V*) G (V - V*)^T)`` with V* the unconstrained fit."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(500, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    gram = x.T @ x / len(x)
    cols = [torch.arange(3 * j, 3 * j + 3) for j in range(4)]
    kept, costs = group_obs_path([Reader(gram, len(x), w, w @ gram, cols, "r")], 4, 1)
    (dropped,) = torch.nonzero(~kept).flatten().tolist()
    g, rhs = damped(gram, UNIT_DAMPING), w @ gram
    best = rhs @ torch.linalg.inv(g)
    k = torch.cat([c for j, c in enumerate(cols) if j != dropped])
    v = torch.zeros_like(w)
    v[:, k] = torch.linalg.solve(g[k][:, k], rhs[:, k].T).T
    loss = float(((v - best) @ g @ (v - best).T).trace())
    assert float(costs[0]) == pytest.approx(loss, rel=1e-9)
    others = []
    for j in range(4):  # and it is the cheapest unit to remove
        k = torch.cat([c for i, c in enumerate(cols) if i != j])
        v = torch.zeros_like(w)
        v[:, k] = torch.linalg.solve(g[k][:, k], rhs[:, k].T).T
        others.append(float(((v - best) @ g @ (v - best).T).trace()))
    assert min(others) == pytest.approx(loss, rel=1e-9)


@pytest.mark.parametrize("method", ["unit-act-refit", "unit-obs", "unit-obs-allocated"])
def test_unit_methods_on_a_users_residual_net_with_a_grouped_reader(method: str) -> None:
    x = torch.rand(200, 64, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    net = recalibrate_batchnorm(ResidualNet().eval(), x)
    weights = prune(net, method, 0.5, context=PruneContext(calibration=x))
    assert set(weights) == {"block.0", "block.3", "head"}  # the head: compensated
    dead = torch.nonzero(~as_matrix(weights["block.0"]).ne(0).any(1)).flatten().tolist()
    assert len(dead) == 4
    reader = weights["block.3"]  # groups=2: channel c is input c % 4 of group c // 4
    for c in dead:
        group = slice(4 * (c // 4), 4 * (c // 4) + 4)
        assert bool((reader[group, c % 4] == 0).all())
    assert int((reader == 0).sum()) == len(dead) * 4 * 9  # nothing else zeroed
    plain = prune(net, "unit", 0.5, context=PruneContext(example=x))
    with torch.no_grad():
        dense = net(x)
        errs = [float((recalibrate_batchnorm(apply_weights(net, w), x)(x) - dense).pow(2).mean())
                for w in (weights, plain)]
    assert errs[0] < 0.2 * errs[1]


def test_compensation_refits_every_later_layer_and_keeps_its_zeros() -> None:
    net, x = _zoo("lenet5"), torch.rand(128, 784, generator=torch.Generator().manual_seed(6))
    weights = prune(net, "unit-obs", 0.5, layers=["conv1"], context=PruneContext(calibration=x))
    assert set(weights) == {"conv1", "conv2", "fc1", "fc2", "head"}
    only_readers = graph_unit_compute(obs_units)(net, ["conv1"], 0.5, PruneContext(calibration=x))
    assert set(only_readers) == {"conv1", "conv2"}
    torch.testing.assert_close(only_readers["conv2"], weights["conv2"])
    with torch.no_grad():
        dense = net(x)
        errs = [float((apply_weights(net, w)(x) - dense).pow(2).mean())
                for w in (weights, only_readers)]
    assert errs[0] < errs[1]
