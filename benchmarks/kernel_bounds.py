"""What bounds the fused sparse kernel at large batches: each layer's cost per nonzero as it
runs, and with every activation read hitting L1.

Prunes RUN_DIR's MLP (``--method``, ``--sparsity``), takes one tile of ``CHAIN_TILE`` test images
through it in float32 (feature-major activations, as the kernel keeps them) and times each
layer's tile kernel on one thread, round-robin in one process:

- *as packed*: the layer as ``chain_matmul`` runs it, hidden units renumbered by
  ``pack_csr_chain`` (``kernels.locality_order``);
- *in L1*: the same nonzeros, values and instructions, with the column indices folded into the
  first ``--fold`` activation rows (``--fold`` x CHAIN_TILE floats, a fraction of L1), so that
  no activation read misses L1. Its outputs are meaningless; only its time counts.

The difference is what the activation reads from L2 cost. Each nonzero reads its column's
activation row, CHAIN_TILE floats (four cache lines); a layer's rows (1000 x 256 bytes for the
seed MLP) are five times the L1 of this machine's cores (48 KiB), and an unstructured pattern
leaves few reads to share. The table also gives the columns that hold half of each layer's
nonzeros and the share of reads an L1 of ``--l1-rows`` activation rows would serve if it kept
the most recently used ones (LRU, simulated in the trained order and as packed), and this
core's rate of 16-lane multiply-adds with an L1 operand, the most the kernel's four per nonzero
could run at.

    python benchmarks/kernel_bounds.py /work/runs/fmnist-seed0 --sparsity 95

Measured on this VM (seed-0 Fashion-MNIST MLP, weight pruning, 95 %, one thread): see
``prunelab.inference.kernels``'s docstring, which quotes this script's figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numba
import numpy as np
import torch
from tabulate import tabulate
from torch import nn

from prunelab.data import load_dataset
from prunelab.inference import kernels
from prunelab.study.runfolder import load_run
from prunelab.study.speed import pruned_from_run


@numba.njit(cache=False, fastmath=True, nogil=True)
def _repeat(reps, indptr, indices, data, bias, hin, hout):  # pragma: no cover - compiled
    kernels._wide_vectors()
    for _ in range(reps):
        kernels._rows_of_width(indptr, indices, data, bias, hin, hout, True, 0, indptr.size - 1)


@numba.njit(cache=False, fastmath=True, nogil=True)
def _fma_peak(h, out, n):  # pragma: no cover - compiled
    # n rounds of 8 independent 16-lane multiply-adds, each with an operand from L1
    kernels._wide_vectors()
    acc = kernels._stack_vectors(8)
    kernels._vfill(acc, np.float32(0.0), 8)
    for i in range(n):
        kernels._vaxpy(acc, np.float32(1e-7), h, np.uint64(i & 7), 8)
    kernels._vstore(acc, out, np.uint64(0), False, 8)


def _peak_fmas_per_ns(rounds: int) -> float:
    """16-lane multiply-adds with an L1 operand per ns on one thread, 8 accumulators."""
    h, out = kernels._aligned((8, 8 * kernels.BLOCK)), kernels._aligned((1, 8 * kernels.BLOCK))
    n = 2_000_000
    _fma_peak(h, out, 10)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        _fma_peak(h, out, n)
        samples.append(time.perf_counter() - start)
    return 8 * n / float(np.median(samples)) / 1e9


def _linears(model: nn.Module) -> list[np.ndarray]:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    others = [m for m in model.modules() if len(list(m.children())) == 0
              and not isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten, nn.Identity))]
    if not layers or others:
        raise ValueError("the model is not a ReLU MLP: its layers are "
                         f"{sorted({type(m).__name__ for m in others}) or 'not linear'}")
    return [m.weight.detach().numpy().astype(np.float32) for m in layers]


def _lru_share(indices: np.ndarray, rows: int) -> float:
    """Share of the nonzeros' activation reads an LRU cache of ``rows`` rows would serve."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for j in indices.tolist():
        if j in cache:
            hits += 1
            cache.move_to_end(j)
        else:
            cache[j] = None
            if len(cache) > rows:
                cache.popitem(last=False)
    return hits / max(1, indices.size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="run folder with a trained MLP")
    p.add_argument("--method", default="weight", help="pruning method [default: weight]")
    p.add_argument("--sparsity", type=float, default=95.0, help="percent [default: 95]")
    p.add_argument("--fold", type=int, default=96,
                   help="activation rows the 'in L1' variant reads [default: 96, 24 KiB]")
    p.add_argument("--l1-rows", type=int, default=150,
                   help="activation rows an L1 holds, for the LRU column [default: 150, "
                        "38 KiB of 48]")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds [default: 15]")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="datasets folder [default: PRUNELAB_DATA, cache, download]")
    args = p.parse_args(argv)
    try:
        if not 0 <= args.sparsity < 100:
            raise ValueError(f"--sparsity is a percentage below 100, got {args.sparsity:g}")
        if min(args.fold, args.l1_rows, args.rounds) < 1:
            raise ValueError("--fold, --l1-rows and --rounds must be at least 1")
        run = load_run(args.run_dir)
        data = load_dataset(run.config.dataset, args.data_dir)
        weights = _linears(pruned_from_run(args.run_dir, args.method, args.sparsity / 100,
                                           data)[1])
    except (ValueError, OSError) as exc:  # bad run folder, method, sparsity or model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(tabulate(_rows(weights, data.test_x, args.fold, args.l1_rows, args.rounds),
                   headers=["layer", "shape", "nonzeros", "columns with half",
                            f"LRU {args.l1_rows} rows: trained / packed", "us as packed",
                            "ns/nz", "ns/nz in L1", "L2 share"]))
    lanes = kernels.CHAIN_TILE // kernels.BLOCK  # multiply-adds per nonzero
    print(f"\nthis core, one thread: {_peak_fmas_per_ns(args.rounds):.2f} 16-lane multiply-adds "
          f"with an L1 operand per ns (8 accumulators); a nonzero is {lanes} of them")
    return 0


def _rows(weights: list[np.ndarray], images: torch.Tensor, fold: int, l1_rows: int,
          rounds: int) -> list[list]:
    width = kernels.CHAIN_TILE
    h = np.ascontiguousarray(images[:width].flatten(1).numpy().T)  # (features, tile)
    table, totals = [], np.zeros(2)
    reps = 50
    trained = [kernels.csr_arrays(w) for w in weights]
    packed_layers, _ = kernels._renumbered(trained, [None] * len(weights))  # as chain_matmul
    for i, (trained_w, (indptr, indices, values)) in enumerate(zip(weights, packed_layers,
                                                                   strict=True)):
        w = np.zeros_like(trained_w)  # the layer in the packed order of its rows and columns
        w[np.repeat(np.arange(w.shape[0]), np.diff(indptr)), indices] = values
        indptr = indptr.astype(np.int64)
        hin = kernels._aligned((w.shape[1], width))
        hin[:] = h
        hout = kernels._aligned((w.shape[0], width))
        bias = np.zeros(w.shape[0], np.float32)
        folded = (indices % min(fold, w.shape[1])).astype(np.int32)
        runs = {"packed": indices, "l1": folded}  # the same nonzeros, two sets of columns
        times: dict[str, list[float]] = {k: [] for k in runs}
        for cols in runs.values():
            _repeat(1, indptr, cols, values, bias, hin, hout)  # compile; the layer into cache
        for _ in range(rounds):  # round-robin: a slow phase of the machine hits both
            for k, cols in runs.items():
                start = time.perf_counter()
                _repeat(reps, indptr, cols, values, bias, hin, hout)
                times[k].append((time.perf_counter() - start) / reps)
        packed, in_l1 = (float(np.median(times[k])) for k in runs)
        nnz = max(1, values.size)
        per_col = np.sort(np.bincount(indices, minlength=w.shape[1]))[::-1]
        half = int(np.searchsorted(np.cumsum(per_col), values.size / 2)) + 1
        table.append([i + 1, f"{w.shape[0]} x {w.shape[1]}", values.size, half,
                      f"{_lru_share(trained[i][1], l1_rows):.2f} / "
                      f"{_lru_share(indices, l1_rows):.2f}", f"{packed * 1e6:.1f}",
                      f"{packed * 1e9 / nnz:.2f}", f"{in_l1 * 1e9 / nnz:.2f}",
                      f"{1 - in_l1 / packed:.2f}"])
        totals += (packed, in_l1)
        h = np.maximum(w @ h, 0.0)  # the next layer's real input (the last ReLU is unused)
    table.append(["all", "", sum(r[2] for r in table), "", "", f"{totals[0] * 1e6:.1f}", "", "",
                  f"{1 - totals[1] / totals[0]:.2f}"])
    return table


if __name__ == "__main__":
    sys.exit(main())
