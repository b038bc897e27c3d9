"""unit-act-refit on any graph: channels dropped in a layer, the layers reading them refit."""

from __future__ import annotations

import pytest
import torch

from prunelab.models import MODELS, build_model
from prunelab.pruning import PruneContext, apply_weights, prune
from prunelab.pruning.batchnorm import recalibrate_batchnorm
from prunelab.pruning.structured import consumer_columns
from prunelab.pruning.targets import as_matrix

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
