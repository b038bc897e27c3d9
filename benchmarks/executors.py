"""What each executor costs: per-job overhead on tiny jobs, and a small real grid, local vs Ray.

    python benchmarks/executors.py --data-dir ../shared/data [--workers 2] [--epochs 2] \
        [--out executors.json]
    python benchmarks/executors.py --quick     # a smoke run on generated data (seconds)

1. Overhead: ``--jobs`` jobs that return at once, and as many that return a model-sized payload
   (``--payload-mb``, 9.5 MB: the seed's MLP), through the inline, local and Ray executors:
   start-up (executor created and its first job back) and milliseconds per job once every
   worker is warm.
2. Grid: mlp and lenet5 x seeds 0,1,2 x weight,unit,wanda at the default sparsities on MNIST,
   ``--epochs`` epochs, into fresh folders with the local executor and with Ray (both with
   ``--workers``, already started: start-up is in 1.); wall times, their ratio, and whether
   both wrote the same numbers.

Timings are wall clock on whatever else the machine is doing: run it alone.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from prunelab import data as data_mod
from prunelab.models import MODELS, MLPConfig
from prunelab.study.executors import Executor, InlineExecutor, LocalExecutor, Task
from prunelab.study.grid import Study, StudyModel, study_run
from prunelab.study.rayexec import RayExecutor
from prunelab.study.sweep import SweepConfig


def noop(i: int, payload_bytes: int, *, report) -> bytes:
    """A job that does nothing but return ``payload_bytes`` bytes."""
    return bytes(payload_bytes)


def _per_job(executor: Executor, jobs: int, payload_bytes: int) -> float:
    """Milliseconds per job of ``jobs`` jobs returning ``payload_bytes`` bytes each."""
    start = time.perf_counter()
    for i in range(jobs):
        executor.submit(Task(f"job{payload_bytes}-{i}", f"job {i}", noop, (i, payload_bytes)))
    while executor.pending:
        executor.next_done()
    return round(1000 * (time.perf_counter() - start) / jobs, 2)


def _executors(workers: int) -> dict[str, callable]:
    return {"inline": InlineExecutor, f"local x{workers}": lambda: LocalExecutor(workers),
            f"ray x{workers}": lambda: RayExecutor(workers=workers)}


def _numbers(out: Path) -> dict:
    """Every run folder's results, measured times and memory aside."""
    found = {}
    for path in sorted(out.rglob("results.json")):
        rows = json.loads(path.read_text())["rows"]
        found[str(path.relative_to(out))] = [
            {k: v for k, v in r.items() if k not in ("seconds", "peak_memory_mb")} for r in rows]
    return found


def grid(study: Study, executor: Executor, out: Path, data_dir: Path | None) -> dict:
    """Wall time of the whole study into a fresh ``out`` on a started ``executor``."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    outcome = study_run(study, out, executor, data_dir, "cpu").run()
    return {"wall_s": round(time.perf_counter() - start, 1), "jobs": len(outcome.ran)}


def measure(make: callable, jobs: int, payload_bytes: int, study: Study | None, out: Path,
            data_dir: Path | None) -> dict:
    """One executor: start-up (made, first job back), ms per tiny job with and without a
    payload, then the grid's wall time (``study``, unless None) on the warm executor."""
    start = time.perf_counter()
    with make() as executor:
        executor.submit(Task("first", "first", noop, (0, 0)))
        executor.next_done()
        startup = round(time.perf_counter() - start, 2)
        _per_job(executor, 2 * executor.workers, 0)  # every worker started and warm
        found = {"startup_s": startup,
                 "ms_per_job": _per_job(executor, jobs, 0),
                 "ms_per_job_with_payload": _per_job(executor, jobs, payload_bytes)}
        if study is not None:
            found["grid"] = grid(study, executor, out, data_dir)
    return found


def _tiny_mnist(root: Path) -> None:
    """A generated 512/128-image "mnist" (learnable blocks), registered with its checksums."""
    rng = np.random.default_rng(0)
    files = []
    for split, n in (("train", 512), ("t10k", 128)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + (c // 5) * 12: 8 + (c // 5) * 12, 1 + (c % 5) * 5: 6 + (c % 5) * 5] = 255
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte.gz"
            header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
            raw = gzip.compress(header + arr.tobytes(), mtime=0)
            (root / "mnist").mkdir(parents=True, exist_ok=True)
            (root / "mnist" / name).write_bytes(raw)
            files.append(data_mod.DataFile(name, hashlib.md5(raw).hexdigest(),
                                           hashlib.sha256(raw).hexdigest()))
    order = [files[0], files[1], files[2], files[3]]  # train images, labels, test images, labels
    data_mod.DATASETS["mnist"] = data_mod.DatasetSpec("mnist", (), *order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=50, help="tiny jobs per executor")
    parser.add_argument("--payload-mb", type=float, default=9.5)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: generated data, 5 jobs, 1 model x 1 seed, 1 epoch")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="prunelab-executors-"))
    models = (StudyModel("mlp", "mlp", MLPConfig()), StudyModel("lenet5", "lenet5",
                                                                MODELS["lenet5"].config_type()))
    study = Study(("mnist",), models, (0, 1, 2), SweepConfig(("weight", "unit", "wanda")))
    if args.quick:
        _tiny_mnist(scratch / "data")
        args.data_dir, args.jobs, args.payload_mb, args.epochs = scratch / "data", 5, 1.0, 1
        study = Study(("mnist",), (StudyModel("mlp", "mlp", MLPConfig(hidden=(16,))),), (0,),
                      SweepConfig(("weight", "unit"), (0.0, 0.9)))
    study = replace(study, models=tuple(replace(m, train=replace(m.train, epochs=args.epochs))
                                        for m in study.models))
    payload = int(args.payload_mb * 2**20)
    figures: dict = {"cores": os.cpu_count(), "load_average": os.getloadavg()[0],
                     "payload_mb": args.payload_mb, "jobs": args.jobs, "executors": {}}
    for name, make in _executors(args.workers).items():
        with_grid = None if name == "inline" else study
        figures["executors"][name] = measure(make, args.jobs, payload, with_grid,
                                             scratch / name, args.data_dir)
        print(f"{name}: {figures['executors'][name]}", flush=True)
    local, ray_ = (n for n in figures["executors"] if n != "inline")
    figures["same_numbers"] = _numbers(scratch / local) == _numbers(scratch / ray_)
    walls = [figures["executors"][n]["grid"]["wall_s"] for n in (local, ray_)]
    print(f"grid: {len(study.models)} model(s) x {len(study.seeds)} seed(s) x "
          f"{','.join(study.sweep.methods)}, {args.epochs} epoch(s): {local} {walls[0]} s, "
          f"{ray_} {walls[1]} s (ratio {walls[1] / walls[0]:.2f}); same numbers: "
          f"{figures['same_numbers']}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
