"""How far each inference backend is from the masked network, and both from exact arithmetic.

Prunes the trained model of RUN_DIR with each method at each sparsity, runs the test set
through the masked float32 network, every backend of ``prunelab.inference.compact`` and a float64
copy of the masked network, and prints the largest absolute differences: backend vs masked (what
`benchmarks/latency.py` checks against 1e-4) and each float32 result vs float64.

    python benchmarks/float_precision.py /work/runs/fashion-mnist-seed0 --sparsities 0,50

Measured on seed 0 (Fashion-MNIST), weight pruning at k = 0: the logits reach 421.9, where
float32 values are 3.05e-5 apart; the masked network is 1.07e-4 from float64 and the backends
1.19e-4 (csr-torch), 1.27e-4 (dense) and 1.43e-4 (csr-numba), 1.22-1.53e-4 from the masked
one. At k = 50 everything is within 1.3e-4 of float64.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from tabulate import tabulate

from prunelab.data import load_dataset
from prunelab.inference.compact import compact
from prunelab.inference.layers import LAYER_BACKENDS
from prunelab.study.runfolder import load_run
from prunelab.study.speed import pruned_from_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="run folder with a trained model")
    p.add_argument("--methods", default="weight", help="comma-separated [default: weight]")
    p.add_argument("--sparsities", default="0,50", help="percent, comma-separated [default: 0,50]")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="datasets folder [default: PRUNELAB_DATA, cache, download]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(_table(args))
    except (ValueError, OSError) as exc:  # bad run folder, method, sparsity or data folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


@torch.no_grad()
def _table(args: argparse.Namespace) -> str:
    pcts = [p.strip() for p in args.sparsities.split(",") if p.strip()]
    for pct in pcts:
        if not pct.replace(".", "", 1).isdigit() or float(pct) > 100:
            raise ValueError(f"sparsities are percentages from 0 to 100, got {pct!r}")
    data = load_dataset(load_run(args.run_dir).config.dataset, args.data_dir)
    x = data.test_x.flatten(1)
    rows = []
    for method in args.methods.split(","):
        for pct in pcts:
            _, pruned = pruned_from_run(args.run_dir, method, float(pct) / 100, data)
            exact = copy.deepcopy(pruned).double()(x.double())
            masked = pruned(x)
            rows.append([method, pct, "masked", f"{float(exact.abs().max()):.1f}", "",
                         f"{float((masked.double() - exact).abs().max()):.2e}"])
            for backend in LAYER_BACKENDS:
                y = compact(pruned, backend)(x)
                rows.append([method, pct, backend, "", f"{float((y - masked).abs().max()):.2e}",
                             f"{float((y.double() - exact).abs().max()):.2e}"])
    return tabulate(rows, ["method", "k (%)", "network", "max |logit|", "vs masked",
                           "vs float64"], tablefmt="github")


if __name__ == "__main__":
    sys.exit(main())
