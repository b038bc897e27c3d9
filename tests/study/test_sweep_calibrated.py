"""Sweeps with calibration-aware and N:M methods: peak memory, fixed N:M sparsity, calibration."""

from __future__ import annotations

import pytest
import torch

from prunelab.data import Dataset
from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.study.memory import PeakMemory
from prunelab.study.runfolder import RESULT_COLUMNS
from prunelab.study.sweep import (
    SweepConfig,
    calibration_set,
    calibration_sizes,
    prune_contexts,
    sweep,
)

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset("fashion-mnist", torch.rand(120, 784, generator=g),
                   torch.randint(0, 10, (120,), generator=g), torch.rand(40, 784, generator=g),
                   torch.randint(0, 10, (40,), generator=g))


def test_sweep_records_memory_and_runs_nm_once(data: Dataset) -> None:
    net = build_mlp(MLPConfig(hidden=(16, 8)), torch.Generator().manual_seed(0))
    config = SweepConfig(("refit-gradual", "unit-obs", "wanda-2:4"), (0.5, 0.9), 64)
    rows = list(sweep(net, data, config, seed=0))
    assert [(r["method"], r["sparsity_pct"]) for r in rows] == [
        ("refit-gradual", 50), ("refit-gradual", 90), ("unit-obs", 50), ("unit-obs", 90),
        ("wanda-2:4", 50)]
    assert "peak_memory_mb" in RESULT_COLUMNS
    assert all(r["peak_memory_mb"] >= 0 for r in rows)
    assert {r["granularity"] for r in rows} == {"weight", "unit", "n:m"}


def test_rows_at_k_zero_are_the_dense_model_for_every_method(data: Dataset) -> None:
    """Nothing pruned: a refit method must not move the weights (it used to refit them)."""
    from prunelab.evaluate import evaluate

    net = build_mlp(MLPConfig(hidden=(16, 8)), torch.Generator().manual_seed(0))
    dense_accuracy, dense_loss = evaluate(net, data.test_x, data.test_y)
    rows = list(sweep(net, data, SweepConfig(("refit-gradual", "refit-kron"), (0.0, 0.5), 64)))
    at_zero = [r for r in rows if r["sparsity_pct"] == 0]
    assert len(at_zero) == 2
    for r in at_zero:
        assert r["accuracy"] == dense_accuracy and r["loss"] == dense_loss
        assert r["zero_fraction"] == 0 and not r["bn_recalibrated"]
    at_half = [r for r in rows if r["sparsity_pct"] == 50]
    assert all(r["zero_fraction"] >= 0.45 for r in at_half)


def test_calibration_set_is_training_data_and_seeded(data: Dataset) -> None:
    a, b = calibration_set(data, 50, 3), calibration_set(data, 50, 3)
    assert torch.equal(a, b) and a.shape == (50, 784)
    assert all(any(torch.equal(row, t) for t in data.train_x) for row in a[:5])
    with pytest.raises(ValueError, match="1..120"):
        calibration_set(data, 121, 0)


def test_peak_memory_sees_torch_allocations() -> None:
    with PeakMemory(interval=0.001) as peak:
        # 256 MiB, more than earlier tests can have freed (reused pages do not grow the RSS).
        x = torch.ones(256 * 2**20 // 4)
        x += 1
    assert peak.rss_bytes >= 128 * 2**20
    del x
    with pytest.raises(ValueError, match="interval"):
        PeakMemory(interval=0)


def _many(n: int) -> Dataset:
    """``n`` training images of 4 features: enough to tell calibration sizes apart cheaply."""
    g = torch.Generator().manual_seed(1)
    return Dataset("fashion-mnist", torch.rand(n, 4, generator=g), torch.zeros(n, dtype=torch.long),
                   torch.rand(8, 4, generator=g), torch.zeros(8, dtype=torch.long))


def test_each_method_gets_its_default_calibration_size_from_one_draw() -> None:
    big = _many(10_000)
    methods = ("weight", "wanda", "refit-gradual")
    assert calibration_sizes(methods, 10_000) == {"wanda": 2048, "refit-gradual": 8192}
    contexts = prune_contexts(big, methods, seed=5)
    assert contexts["weight"].calibration is None
    wanda, gradual = contexts["wanda"].calibration, contexts["refit-gradual"].calibration
    assert wanda.shape == (2048, 4) and gradual.shape == (8192, 4)
    # the first 2048 of one permutation: what a sweep of wanda alone draws, too
    assert torch.equal(wanda, gradual[:2048])
    assert torch.equal(wanda, prune_contexts(big, ("wanda",), seed=5)["wanda"].calibration)
    assert torch.equal(wanda, calibration_set(big, 2048, 5))


def test_calibration_override_and_small_training_sets() -> None:
    assert calibration_sizes(("wanda", "refit-gradual"), 10_000, 100) == {
        "wanda": 100, "refit-gradual": 100}
    # defaults are capped by the training set; an explicit size is not
    capped = calibration_sizes(("wanda", "refit-gradual"), 120)
    assert capped == {"wanda": 120, "refit-gradual": 120}
    with pytest.raises(ValueError, match="1..120"):
        prune_contexts(_many(120), ("wanda",), seed=0, override=121)
    with pytest.raises(ValueError, match="calibration size"):
        SweepConfig(("wanda",), (0.5,), 0)
    assert SweepConfig(("wanda",), (0.5,)).calibration_size is None


def test_sweep_rows_record_the_calibration_size_used(data: Dataset) -> None:
    net = build_mlp(MLPConfig(hidden=(8,)), torch.Generator().manual_seed(0))
    rows = list(sweep(net, data, SweepConfig(("weight", "wanda"), (0.5,)), seed=0))
    assert [(r["method"], r["calibration_size"]) for r in rows] == [("weight", 0), ("wanda", 120)]
