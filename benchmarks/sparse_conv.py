"""Where a sparse convolution starts to win: each conv of a trained model, dense vs sparse.

For each Conv2d of RUN_DIR's model and each sparsity k, the layer's weights are
magnitude-pruned to k and the layer is timed, on the inputs it really receives at one batch
size, as torch's dense conv and as ``prunelab.inference.sparse.SparseConv2d`` (prunelab's
direct sparse convolution, ``kernels.sparse_conv2d``), round-robin in one process. Prints
the speed-up of sparse over dense per layer and k, and the lowest k from which sparse wins for
each layer (``auto_sparsify`` makes that choice per layer by timing, with a 10 % margin).
A last column times the *dense* layer on prunelab's direct convolution
(``inference.direct_conv``, output channels in blocks of 8) against torch's, where it applies
(dilation 1, groups 1, a padding of (kernel width - 1) / 2 across; any stride).

    python benchmarks/sparse_conv.py /work/runs/zoo/resnet --batch-size 256
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from tabulate import tabulate
from torch import nn

from prunelab.data import load_dataset
from prunelab.inference.fuse import FusedConv2d, direct_fits
from prunelab.inference.sparse import SparseConv2d
from prunelab.inference.timing import time_calls
from prunelab.pruning.magnitude import weight_pruning
from prunelab.study.runfolder import load_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sparsities", default="50,70,80,90,95,99")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    data = load_dataset(run.config.dataset, args.data_dir)
    model = run.model.eval()
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d)]
    inputs: dict[nn.Module, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, a: inputs.setdefault(mod, a[0].detach()))
               for _, m in convs]
    with torch.no_grad():
        model(data.test_x[: args.batch_size])
    for h in handles:
        h.remove()
    ks = [float(k) / 100 for k in args.sparsities.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f}; {args.threads} threads; batch "
          f"{args.batch_size}")
    rows = []
    for name, conv in convs:
        x = inputs[conv]
        line = [name, "x".join(map(str, conv.weight.shape)), f"{tuple(x.shape[2:])}"]
        crossover = "never"
        for k in ks:
            pruned = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                               conv.stride, conv.padding, conv.dilation, conv.groups,
                               bias=conv.bias is not None)
            with torch.no_grad():
                pruned.weight.copy_(weight_pruning(conv.weight.detach(), k))
                if conv.bias is not None:
                    pruned.bias.copy_(conv.bias)
            sparse = SparseConv2d(pruned, "csr-numba")
            with torch.no_grad():
                assert (sparse(x) - pruned(x)).abs().max() <= 1e-4 * pruned(x).abs().max()
                t = time_calls([lambda m=pruned, x=x: m(x), lambda m=sparse, x=x: m(x)],
                               warmup=2, repeats=args.repeats, budget_s=10.0)
            ratio = t[0] / t[1]
            line.append(f"{ratio:.2f}x")
            if ratio >= 1.0 and crossover == "never":
                crossover = f"{100 * k:g} %"
        direct = "n/a"
        if direct_fits(conv, x):
            fast = FusedConv2d(conv).set_backend("direct")
            with torch.no_grad():
                assert (fast(x) - conv(x)).abs().max() <= 1e-4 * conv(x).abs().max()
                t = time_calls([lambda m=conv, x=x: m(x), lambda m=fast, x=x: m(x)], warmup=2,
                               repeats=args.repeats, budget_s=10.0)
            direct = f"{t[0] / t[1]:.2f}x"
        rows.append([*line, crossover, direct])
        print(" | ".join(rows[-1]), flush=True)
    print()
    print(tabulate(rows, ["conv", "weight", "input", *[f"k={100 * k:g}%" for k in ks],
                          "sparse wins from", "dense direct conv"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
