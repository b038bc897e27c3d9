"""A user's own trained module, swept from Python into an ordinary run folder and report."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunelab.data import Dataset
from prunelab.report.writer import write_run_reports
from prunelab.study.runfolder import load_results
from prunelab.study.sweep import SweepConfig, sweep_model

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyResNet(nn.Module):
    """None of the zoo's: a conv, one residual block (two convs, BatchNorm), a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x.reshape(-1, 1, 28, 28))))
        inner = torch.relu(self.bn1(self.conv1(h)))  # the block's own channels
        h = torch.relu(h + self.bn2(self.conv2(inner)))
        return self.head(h.mean((2, 3)))


def _data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset("mnist", torch.rand(96, 784, generator=g),
                   torch.randint(0, 10, (96,), generator=g), torch.rand(32, 784, generator=g),
                   torch.randint(0, 10, (32,), generator=g))


def test_a_users_module_is_swept_and_reported(tmp_path):
    torch.manual_seed(0)
    net = TinyResNet()
    with torch.no_grad():  # give BatchNorm trained-looking statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    config = SweepConfig(("weight", "unit", "wanda", "sparsegpt"), (0.0, 0.5, 0.8),
                         calibration_size=64)
    results = sweep_model(net, _data(), tmp_path / "mine", config, seed=3)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # untouched
    assert len(results.rows) == 12
    # it has BatchNorm: re-estimated after pruning; k = 0 is the dense model itself
    assert all(r["bn_recalibrated"] == (r["sparsity_pct"] > 0) for r in results.rows)
    assert all(r["loss"] == results.dense["loss"] for r in results.rows if r["sparsity_pct"] == 0)
    saved = load_results(tmp_path / "mine")
    assert saved.rows == json.loads(json.dumps(results.rows))
    assert saved.meta["run"]["family"] == "custom"
    params = 54 + 12 + 216 + 8 + 216 + 12 + 70  # stem, bn, conv1, bn1, conv2, bn2, head
    assert saved.meta["run"]["model"] == {"class": "TinyResNet", "parameters": params}
    md, page = write_run_reports(tmp_path / "mine")
    text = md.read_text()
    assert "TinyResNet" in text and "| 80 " in text
    assert "TinyResNet" in page.read_text()


def test_a_second_sweep_keeps_the_rows_it_does_not_redo(tmp_path):
    net, data = TinyResNet(), _data()
    sweep_model(net, data, tmp_path / "r", SweepConfig(("weight",), (0.5,)))
    results = sweep_model(net, data, tmp_path / "r", SweepConfig(("unit",), (0.5,)))
    assert [r["method"] for r in results.rows] == ["weight", "unit"]


def test_unit_rows_prune_only_the_blocks_own_channels(tmp_path):
    results = sweep_model(TinyResNet(), _data(), tmp_path / "u", SweepConfig(("unit",), (0.5,)))
    layers = {layer["name"]: layer["zero_fraction"] for layer in results.rows[0]["layers"]}
    assert layers["conv1"] == 0.5  # 2 of its 4 channels
    assert layers["stem"] == layers["conv2"] == 0.0  # coupled by the residual add: left alone
