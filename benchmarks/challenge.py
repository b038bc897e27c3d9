"""The original challenge end to end on real data, with its accuracy and training-speed goals.

Trains the default MLP (or reuses a run folder's model with --reuse), sweeps weight and unit
pruning, and prints: dense accuracy, the table, the issue's accuracy checks, and seconds per
training epoch next to the FLOP lower bound (training FLOPs / the matmul rate measured here at
batch 128). Run it on an otherwise idle machine:

    python benchmarks/challenge.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from prunelab.data import load_dataset
from prunelab.models.mlp import MLPConfig
from prunelab.study.runfolder import RunConfig, load_run
from prunelab.study.sweep import SweepConfig, ensure_trained, run_sweep
from prunelab.train import TrainConfig


def gemm_shapes(sizes: tuple[int, ...], batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul in one training step of a bias-free MLP."""
    shapes = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes.append((batch, n_in, n_out))  # forward: (batch, in) @ (in, out)
        shapes.append((n_out, batch, n_in))  # weight grad: (out, batch) @ (batch, in)
        if i > 0:  # the input images need no gradient
            shapes.append((batch, n_out, n_in))  # input grad: (batch, out) @ (out, in)
    return shapes


def matmul_rate(shapes: list[tuple[int, int, int]], repeats: int = 200) -> float:
    """FLOP/s of running exactly these matmuls back to back (best of 3 timings)."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in mats * 20:
        torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            for a, b in mats:
                torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / repeats)
    return flops / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("PRUNELAB_DATA"))
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="run folder")
    parser.add_argument("--reuse", action="store_true", help="reuse a trained model in --out")
    args = parser.parse_args()
    out = args.out or Path("runs") / f"benchmark-{args.dataset}-seed{args.seed}"
    config = RunConfig(args.dataset, MLPConfig(), TrainConfig(epochs=args.epochs, seed=args.seed))
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {load:.2f}")
    if load > 0.5:
        print("WARNING: the machine is busy; timings will be pessimistic")

    data = load_dataset(args.dataset, args.data_dir)
    if not args.reuse:
        (out / "config.json").unlink(missing_ok=True)  # force training: we time it
    run, trained = ensure_trained(out, config, data, torch.device("cpu"))
    sweep_results = run_sweep(out, SweepConfig(), data=data)
    history = load_run(out).history

    dense = sweep_results.dense["accuracy"]
    print(f"\ndense test accuracy: {100 * dense:.2f} % (goal >= 88.5 %, original 88.80 %)")
    by = {(r["method"], r["sparsity_pct"]): r for r in sweep_results.rows}
    ks = sorted({k for _, k in by})
    print(f"\n{'k':>5} {'weight acc':>11} {'weight loss':>12} {'unit acc':>9} {'unit loss':>10}")
    for k in ks:
        w, u = by[("weight", k)], by[("unit", k)]
        print(f"{k:>5g} {100 * w['accuracy']:>10.2f}% {w['loss']:>12.4f} "
              f"{100 * u['accuracy']:>8.2f}% {u['loss']:>10.4f}")
    weight_ok = all(by[("weight", k)]["accuracy"] >= dense - 0.01 for k in ks if k <= 50)
    unit_ok = all(by[("unit", k)]["accuracy"] < dense / 2 for k in ks if k >= 90)
    print(f"\nweight within 1 point of dense up to k = 50: {weight_ok}")
    print(f"unit below half of dense accuracy at k >= 90: {unit_ok}")

    if trained:
        sizes = config.model.sizes
        shapes = gemm_shapes(sizes, config.train.batch_size)
        rate = matmul_rate(shapes)
        n = len(data.train_x)
        flops = sum(2 * m * k * nn for m, k, nn in gemm_shapes(sizes, 1)) * n
        bound = flops / rate
        epoch = statistics.median(h["seconds"] for h in history)
        print(f"\nmatmul rate at batch 128: {rate / 1e9:.1f} GFLOP/s")
        print(f"training FLOPs per epoch: {flops / 1e9:.1f} GFLOP -> lower bound {bound:.2f} s")
        print(f"median seconds per epoch: {epoch:.2f} s = {epoch / bound:.2f} x the lower bound "
              f"(goal <= 1.6 x)")


if __name__ == "__main__":
    main()
