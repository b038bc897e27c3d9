"""Wall time of a multi-seed run with one worker (in-process) vs parallel worker processes.

Trains and sweeps the same seeds twice into fresh folders, once with ``workers=1`` and once
with the default (one worker per core, at most one per seed), and prints both wall times and
their ratio measured in this one run. Use a short recipe; run on an otherwise idle machine:

    python benchmarks/parallel_seeds.py --data-dir ../shared/data --epochs 2 --seeds 0,1,2,3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from prunelab.models.mlp import MLPConfig
from prunelab.study.driver import GridSettings, run_grid, seed_jobs
from prunelab.study.executors import default_workers, make_executor
from prunelab.study.runfolder import RunConfig
from prunelab.study.sweep import SweepConfig
from prunelab.train import TrainConfig


def timed_run(out: Path, config: RunConfig, seeds: tuple[int, ...], workers: int,
              data_dir: Path | None) -> float:
    """Seconds to train and sweep every seed into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    jobs = seed_jobs(out, config, seeds, SweepConfig())
    start = time.perf_counter()
    with make_executor("local", workers, len(jobs)) as executor:
        run_grid(jobs, executor, GridSettings(data_dir, "cpu"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument("--parallel-first", action="store_true",
                        help="time the parallel run first (to see order effects on a busy host)")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    config = RunConfig(args.dataset, MLPConfig(), TrainConfig(epochs=args.epochs))
    scratch = args.out or Path(tempfile.mkdtemp(prefix="prunelab-parallel-"))
    parallel = default_workers(len(seeds))
    order = (parallel, 1) if args.parallel_first else (1, parallel)
    times = {w: timed_run(scratch / f"workers-{w}", config, seeds, w, args.data_dir)
             for w in order}
    print(f"{len(seeds)} seeds x {args.epochs} epochs + sweep of weight,unit at 10 sparsities; "
          f"{os.cpu_count()} cores; load average now {os.getloadavg()[0]:.1f}")
    for w, t in times.items():
        print(f"  workers={w}: {t:.1f} s")
    print(f"  speed-up of {parallel} workers over 1: {times[1] / times[parallel]:.2f}x")


if __name__ == "__main__":
    main()
