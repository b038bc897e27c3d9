"""Latency measurement, the auto backend, bench.csv and its report section."""

from __future__ import annotations

import csv
import time

import pytest
import torch

from prunelab.inference.layers import LAYER_BACKENDS
from prunelab.inference.timing import auto_backend, check_batch_size, time_calls
from prunelab.models.mlp import MLPConfig, build_mlp
from prunelab.pruning import apply_weights, prune
from prunelab.report.speed import bench_section
from prunelab.study.runfolder import BENCH_COLUMNS, read_bench
from prunelab.study.speed import BenchConfig, bench_pruned, run_bench

FAST = {"warmup": 1, "repeats": 2, "budget_s": 0.5}


def _net():
    return build_mlp(MLPConfig(hidden=(48, 24)), torch.Generator().manual_seed(0))


def test_time_calls_medians_per_call():
    calls = [lambda: sum(range(10)), lambda: sum(range(100_000))]
    fast, slow = time_calls(calls, warmup=1, repeats=5)
    assert 0 < fast < slow


@pytest.mark.parametrize(("settle", "burst", "expected"),
                         [(True, 1, 1 + 2 * 5), (False, 1, 1 + 5), (True, 3, 1 + 4 * 5)])
def test_time_calls_settles_each_call_before_timing_it(settle, burst, expected):
    order = []
    time_calls([lambda: order.append(0), lambda: order.append(1)], warmup=1, repeats=5,
               settle=settle, burst=burst)
    assert order.count(0) == order.count(1) == expected
    # round-robin: warm-up, then per round each call's settle call and burst in a row
    per_call = int(settle) + burst
    assert order[2:2 + 2 * per_call] == [0] * per_call + [1] * per_call


def test_time_calls_median_is_over_every_timed_call_of_a_burst():
    durations = iter([0.0] * 2 + [0.0, 0.03, 0.0, 0.0] * 3)  # warm-up, then per round

    def call():
        time.sleep(next(durations))

    (median,) = time_calls([call], warmup=2, repeats=3, settle=True, burst=3)
    assert median < 0.02  # one slow call in each burst of three: the median is a fast one


@pytest.mark.parametrize(("method", "batch"), [("weight", 1), ("unit", 300)])
def test_auto_plan_is_valid_and_exact(method, batch):
    pruned = apply_weights(_net(), prune(_net(), method, 0.9))
    choice = auto_backend(pruned, batch, repeats=2)
    assert choice.plan == ("masked",) or (
        len(choice.plan) == 3 and set(choice.plan) <= set(LAYER_BACKENDS))
    x = torch.rand(batch, 784)
    with torch.no_grad():
        assert (choice.module(x) - pruned(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_batch_size_must_be_positive_integer(bad):
    with pytest.raises(ValueError, match="batch size"):
        check_batch_size(bad)
    with pytest.raises(ValueError, match="batch size"):
        BenchConfig(batch_sizes=(64, bad))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        BenchConfig(backends=("dense", "quantum"))


def test_bench_rows_compare_with_dense():
    pruned = apply_weights(_net(), prune(_net(), "weight", 0.75))
    x = torch.rand(20, 784)
    rows = bench_pruned(_net(), pruned, BenchConfig(batch_sizes=(2,), **FAST), check_x=x)
    by_backend = {r["backend"]: r for r in rows}
    # every backend but the conv nets' dense-kernels (an MLP has no convs to fuse)
    assert list(by_backend) == [b for b in BenchConfig().backends if b != "dense-kernels"]
    assert by_backend["dense"]["speedup_vs_dense"] == 1.0
    # 75 % of the first two layers' weights gone; the last (24 x 10) kept.
    dense_macs = 784 * 48 + 48 * 24 + 24 * 10
    assert by_backend["auto"]["flop_ratio"] == pytest.approx(
        dense_macs / (round(0.25 * 784 * 48) + round(0.25 * 48 * 24) + 240), rel=0.01)
    for name, row in by_backend.items():
        assert row["latency_ms"] > 0
        if name != "dense":
            assert row["max_abs_diff"] <= 1e-4


def test_run_bench_writes_csv_and_report_section(tmp_path):
    config = BenchConfig(batch_sizes=(1, 4), backends=("compacted", "auto"), **FAST)
    rows = run_bench(tmp_path, _net(), ("weight", "unit"), (0.9,), config)
    assert len(rows) == 2 * 1 * 2 * 3  # methods x k x batches x (dense, compacted, auto)
    with (tmp_path / "bench.csv").open() as f:
        header = next(csv.reader(f))
    assert tuple(header) == BENCH_COLUMNS
    assert {"method", "sparsity_pct", "batch_size", "backend", "latency_ms",
            "speedup_vs_dense", "flop_ratio"} <= set(header)
    assert len(read_bench(tmp_path)) == len(rows)
    section = bench_section(tmp_path)
    assert section.startswith("## Inference speed") and "| unit" in section
    assert bench_section(tmp_path / "elsewhere") == ""


def test_auto_running_a_dense_runtimes_own_module_gets_that_runtimes_time():
    from torch import nn

    from prunelab.study import speed

    net = _net()
    unpruned = speed.Subject(net, apply_weights(net, prune(net, "weight", 0.0)),
                             torch.rand(4, 784))
    pruned = speed.Subject(net, apply_weights(net, prune(net, "weight", 0.5)),
                           torch.rand(4, 784))
    assert unpruned.unpruned and not pruned.unpruned
    assert unpruned.onnx_pruned is unpruned.onnx_dense  # k = 0: one session for both
    dense, other = nn.Identity(), nn.Identity()
    backends = ("dense", "onnx-dense", "auto", "masked")
    built = {"dense": (dense, "", ""), "onnx-dense": (other, "", ""), "auto": (other, "", ""),
             "masked": (nn.Identity(), "", "")}
    assert speed._runs_as("auto", backends, built) == "onnx-dense"
    assert speed._runs_as("masked", backends, built) is None
    assert speed._same_runtime_same_time(backends, built, [3.0, 2.0, 2.1, 3.1]) == [
        3.0, 2.0, 2.0, 3.1]


def test_auto_where_pruning_changed_nothing_settles_on_the_fastest_dense_runtime():
    from torch import nn

    from prunelab.study import speed

    dense, onnx, kernels, own = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
    backends = ("dense", "dense-kernels", "onnx-dense", "auto")
    built = {"dense": (dense, "unpruned model", ""), "dense-kernels": (kernels, "fused", ""),
             "onnx-dense": (onnx, "ONNX Runtime", ""), "auto": (onnx, "ONNX Runtime", 1e-7)}
    # auto's own timing picked ONNX Runtime; this one measured torch faster: auto runs torch
    assert speed._auto_settles_on_fastest_dense(backends, built, [2.0, 2.5, 2.4, 2.4]) == [
        2.0, 2.5, 2.4, 2.0]
    assert built["auto"] == (dense, "unpruned model", 1e-7)  # its output check is kept
    assert speed._runs_as("auto", backends, built) == "dense"
    # its own pick measured faster than every dense runtime: it stays
    built["auto"] = (own, "csr-numba", 0.0)
    assert speed._auto_settles_on_fastest_dense(backends, built, [2.0, 2.5, 2.4, 1.5]) == [
        2.0, 2.5, 2.4, 1.5]
    assert built["auto"] == (own, "csr-numba", 0.0)
