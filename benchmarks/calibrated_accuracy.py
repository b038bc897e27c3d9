"""Accuracy of one-shot pruning methods on a trained run folder, next to issue 4's goals.

    python benchmarks/calibrated_accuracy.py RUN_DIR --methods refit-gradual,unit-obs \
        [--calibration-size N] [--full-sweep] [--out results.json]

Without ``--calibration-size`` every method gets its own default, as ``prunelab sweep`` gives it.

Weight and n:m methods are measured at 90/95/97/99 % (N:M methods at their own sparsity), unit
methods at 70/80/90/95 %. ``--full-sweep`` also times every default sparsity (issue: <= 2 min
per method on 2 cores). Timings are wall clock on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tabulate import tabulate

from prunelab.data import load_dataset
from prunelab.evaluate import evaluate
from prunelab.pruning import PruneContext, apply_weights, lookup, prune
from prunelab.pruning.sparsity import measure_sparsity
from prunelab.study.runfolder import load_run
from prunelab.study.sweep import DEFAULT_SPARSITIES, calibration_sizes, prune_contexts

GOALS = {
    "weight": {0.90: 88.7, 0.95: 87.0, 0.97: 82.0, 0.99: 65.0},
    "unit": {0.70: 88.5, 0.80: 87.5, 0.90: 85.0, 0.95: 80.0},
}


def measure(model, data, method: str, sparsity: float, context: PruneContext) -> dict:
    start = time.perf_counter()
    pruned = apply_weights(model, prune(model, method, sparsity, context=context))
    seconds = time.perf_counter() - start
    accuracy, _ = evaluate(pruned, data.test_x, data.test_y)
    stats = measure_sparsity(pruned)
    hidden = [layer.zero_fraction for layer in stats.layers[:-1]]
    return {"method": method, "k": sparsity, "accuracy": 100 * accuracy, "seconds": seconds,
            "layer_zero_fractions": [round(z, 4) for z in hidden]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--methods", default="refit-gradual,unit-obs-allocated")
    parser.add_argument("--calibration-size", type=int, default=None,
                        help="for every method [each method's default]")
    parser.add_argument("--seed", type=int, default=None, help="calibration draw [run seed]")
    parser.add_argument("--full-sweep", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run_dir)
    data = load_dataset(run.config.dataset)
    seed = run.config.train.seed if args.seed is None else args.seed
    methods = tuple(args.methods.split(","))
    for method in methods:
        lookup(method)  # builds N:M variants before contexts are drawn
    contexts = prune_contexts(data, methods, seed, args.calibration_size)
    dense, _ = evaluate(run.model, data.test_x, data.test_y)
    sizes = calibration_sizes(methods, len(data.train_x), args.calibration_size)
    print(f"{args.run_dir}: dense {100 * dense:.2f} %, calibration images {sizes}")
    rows, table = [], []
    for method in methods:
        spec, context = lookup(method), contexts[method]
        kind = "unit" if spec.granularity == "unit" else "weight"
        ks = [spec.fixed_sparsity] if spec.fixed_sparsity is not None else list(GOALS[kind])
        got = [{**measure(run.model, data, method, k, context),
                "calibration_size": sizes.get(method, 0)} for k in ks]
        rows += got
        line = [method] + [f"{r['accuracy']:.1f}" for r in got]
        goal = [f"{GOALS[kind].get(r['k'], float('nan')):.1f}" for r in got]
        if args.full_sweep and spec.fixed_sparsity is None:
            start = time.perf_counter()
            for k in DEFAULT_SPARSITIES:
                apply_weights(run.model, prune(run.model, method, k, context=context))
            line.append(f"{time.perf_counter() - start:.1f}")
        table.append(line)
        table.append(["  goal"] + goal)
        print(tabulate([line], tablefmt="plain"), flush=True)
    print(tabulate(table, headers=["method", "k1", "k2", "k3", "k4", "full sweep s"]))
    print("k: weight/n:m 90/95/97/99 %, unit 70/80/90/95 %")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"dense": 100 * dense, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
