"""The study on another device: sweep trained zoo models there and compare with a reference.

Every method runs on whatever device its model and data live on (calibration Grams, the refit
solves, BatchNorm re-estimation, evaluation). This script sweeps each run folder given on the
chosen device into a scratch copy and writes one JSON file of rows (method, k, accuracy,
seconds). With ``--reference`` (the same script's JSON from another device) it prints the
accuracy difference per row and fails when one differs by more than ``--tolerance`` points:
float32 sums in another order move a one-shot refit by a few hundredths, a device bug
(a tensor left on the CPU, a dtype) by far more or into an error. It also trains each family
for two epochs of ``--train-steps`` steps on the device and resumes the second from the state
saved after the first, checking that training, and resuming it, runs there.

    python scripts/device_check.py runs/zoo/lenet5 runs/zoo/resnet --device cpu --out cpu.json
    python scripts/device_check.py runs/zoo/lenet5 runs/zoo/resnet --device cuda --out gpu.json \\
        --reference cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from prunelab.data import load_dataset
from prunelab.models import build_model
from prunelab.study.driver import GridSettings, RunJob, run_grid
from prunelab.study.executors import LocalExecutor
from prunelab.study.runfolder import RunConfig, load_results, load_run
from prunelab.study.sweep import SweepConfig, resolve_device, run_sweep
from prunelab.train import train

# Per family: (methods, sparsities in %) -- every method kind, at a moderate and a high k.
PLAN = {
    "lenet5": ("weight,unit,global-weight,random-unit,wanda,sparsegpt,refit-magnitude,"
               "refit-wanda,refit-gradual,refit-global,refit-kron,refit-allocated,unit-act-refit,"
               "unit-obs,unit-obs-selected,unit-obs-allocated,magnitude-2:4,wanda-2:4,"
               "sparsegpt-2:4,refit-2:4", "50,90"),
    "resnet": ("weight,unit,wanda,sparsegpt,refit-gradual,refit-global,refit-kron,unit-act-refit,"
               "unit-obs,unit-obs-allocated", "50,90"),
    "mlp": ("weight,unit,wanda,sparsegpt,refit-global,refit-kron,unit-obs", "90"),
    "vit": ("weight,unit,wanda,sparsegpt,refit-gradual,refit-global,refit-kron,unit-act-refit,"
            "unit-obs,sparsegpt-2:4,refit-2:4", "50,80"),
}


def _error(e: BaseException) -> str:
    """The error and where in prunelab it was raised."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "prunelab" in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{where}"


def _planned(run_dir: Path, scratch_root: Path, methods: str | None,
             ks: str | None) -> tuple[Path, RunConfig, tuple[str, ...], tuple[float, ...]]:
    """A scratch copy of ``run_dir`` (its model, no results), its configuration, and the
    family's plan (or ``methods`` at ``ks`` percent): (scratch, config, methods, sparsities)."""
    run = load_run(run_dir)
    plan_methods, plan_ks = PLAN.get(run.config.family, PLAN["lenet5"])
    scratch = scratch_root / run_dir.name
    shutil.copytree(run_dir, scratch, ignore=shutil.ignore_patterns("results.*", "bench*"))
    return (scratch, run.config, tuple((methods or plan_methods).split(",")),
            tuple(int(k) / 100 for k in (ks or plan_ks).split(",")))


def _rows(label: str, rows: list[dict]) -> list[dict]:
    return [{"model": label, "method": r["method"], "k": r["sparsity_pct"],
             "accuracy": 100 * r["accuracy"], "seconds": r["seconds"]} for r in rows]


def sweep_on(run_dir: Path, device: torch.device, data_dir: str | None,
             methods: str | None = None, ks: str | None = None) -> tuple[list, list]:
    """Rows of every method of the family's plan (or ``methods`` at ``ks``), one sweep per
    method (a method that fails is reported and the others still run); (rows, errors)."""
    rows, errors = [], []
    with tempfile.TemporaryDirectory() as tmp:
        scratch, _, names, sparsities = _planned(run_dir, Path(tmp), methods, ks)
        start = time.perf_counter()
        for method in names:
            try:
                results = run_sweep(scratch, SweepConfig((method,), sparsities), data_dir, device)
            except Exception as e:  # noqa: BLE001 - reported, the other methods still run
                errors.append(f"{run_dir.name} {method}: {_error(e)}")
                print(errors[-1], flush=True)
                continue
            rows += _rows(run_dir.name, [r for r in results.rows if r["method"] == method])
        seconds = time.perf_counter() - start
    print(f"{run_dir.name}: {len(rows)} rows on {device} in {seconds:.1f} s", flush=True)
    return rows, errors


def grid_sweep(run_dirs: list[Path], device: torch.device, data_dir: str | None,
               methods: str | None, ks: str | None, workers: int) -> tuple[list, list]:
    """The same rows as ``sweep_on``, computed as a grid of jobs (one per method and model) by
    ``workers`` spawned worker processes sharing the device, as ``prunelab sweep --workers``
    runs them; (rows, errors)."""
    rows, errors = [], []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        start = time.perf_counter()
        try:
            for run_dir in run_dirs:
                scratch, config, names, sparsities = _planned(run_dir, Path(tmp), methods, ks)
                jobs.append(RunJob(scratch, config, SweepConfig(names, sparsities),
                                   label=run_dir.name))
            run_grid(jobs, LocalExecutor(workers), GridSettings(
                data_dir=Path(data_dir) if data_dir else None, device=str(device)))
        except Exception as e:  # noqa: BLE001 - reported with the rest
            errors.append(f"grid: {_error(e)}")
            print(errors[-1], flush=True)
        for job in jobs:
            if (job.run_dir / "results.json").exists():
                rows += _rows(job.label, load_results(job.run_dir).rows)
    print(f"grid: {len(rows)} rows on {device} by {workers} workers in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return rows, errors


def train_on(run_dir: Path, device: torch.device, data_dir: str | None, steps: int) -> str:
    """Two short epochs of the family's recipe on ``device``, then the second again, resumed
    from the state saved after the first (as a crashed training resumes): the resumed weights
    must equal the uninterrupted ones (exactly on a CPU; within float noise where the device's
    kernels are not deterministic)."""
    run = load_run(run_dir)
    data = load_dataset(run.config.dataset, data_dir)
    batch = run.config.train.batch_size
    n = min(len(data.train_x), steps * batch)
    small = type(data)(data.name, data.train_x[:n], data.train_y[:n], data.test_x, data.test_y)
    config = replace(run.config.train, epochs=2)

    def fresh() -> torch.nn.Module:
        return build_model(run.config.family, run.config.model,
                           torch.Generator().manual_seed(run.config.train.seed)).to(device)

    states = []
    start = time.perf_counter()
    straight = fresh()
    stats = train(straight, small, config, device, on_epoch=states.append)
    seconds = time.perf_counter() - start
    resumed, again = fresh(), fresh()
    train(resumed, small, config, device, resume=states[0])
    train(again, small, config, device)  # the device's own run-to-run noise, for scale

    def largest(a: torch.nn.Module, b: torch.nn.Module) -> float:
        return max(float((u - v).abs().max()) for u, v in
                   zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    return (f"{run_dir.name}: 2 x {n // batch} training steps on {device} in {seconds:.1f} s, "
            f"test accuracy {100 * stats[-1].test_accuracy:.2f} %; resumed after epoch 1: "
            f"largest weight difference {largest(straight, resumed):.1e} (a second "
            f"uninterrupted run: {largest(straight, again):.1e})")


def _read_reference(path: Path) -> dict:
    """This script's JSON output from another device."""
    try:
        reference = json.loads(path.read_text())
        rows = reference["rows"]
        for r in rows:
            r["model"], r["method"], float(r["k"]), float(r["accuracy"])  # noqa: B018
        return {"device": str(reference["device"]), "rows": rows}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not this script's output ({type(e).__name__}: {e})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--tolerance", type=float, default=0.5, help="points of accuracy")
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--methods", default=None, help="instead of the family's plan")
    parser.add_argument("--grid-workers", type=int, default=0,
                        help="sweep as a grid of jobs on this many spawned workers instead")
    parser.add_argument("--sparsities", default=None, help="percent, instead of the plan's")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    try:  # every input checked before any work: one line, not a traceback
        device = resolve_device(args.device)
        for run_dir in args.runs:
            load_run(run_dir)
        reference = None if args.reference is None else _read_reference(args.reference)
    except (OSError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    if device.type == "cuda":
        print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    rows, errors = [], []
    if args.grid_workers:
        rows, errors = grid_sweep(args.runs, device, args.data_dir, args.methods,
                                  args.sparsities, args.grid_workers)
    for run_dir in args.runs:
        if not args.grid_workers:
            got, failed = sweep_on(run_dir, device, args.data_dir, args.methods, args.sparsities)
            rows, errors = rows + got, errors + failed
        if args.train_steps:
            try:
                print(train_on(run_dir, device, args.data_dir, args.train_steps), flush=True)
            except Exception as e:  # noqa: BLE001 - reported with the rest
                errors.append(f"{run_dir.name} training: {_error(e)}")
                print(errors[-1], flush=True)
    args.out.write_text(json.dumps({"device": str(device), "rows": rows, "errors": errors},
                                   indent=1))
    for line in errors:
        print("FAILED", line)
    if reference is None:
        return 1 if errors else 0
    ref = {(r["model"], r["method"], r["k"]): r for r in reference["rows"]}
    worst, missing = 0.0, 0
    for r in rows:
        other = ref.get((r["model"], r["method"], r["k"]))
        if other is None:
            missing += 1
            continue
        diff = r["accuracy"] - other["accuracy"]
        worst = max(worst, abs(diff))
        print(f"{r['model']:8s} {r['method']:20s} {r['k']:5.1f} %  {r['accuracy']:6.2f} "
              f"({reference['device']} {other['accuracy']:6.2f}, {diff:+.2f})  "
              f"{r['seconds']:6.2f} s vs {other['seconds']:6.2f} s")
    print(f"largest difference {worst:.2f} points over {len(rows) - missing} rows "
          f"({missing} without a reference); tolerance {args.tolerance}")
    return 0 if worst <= args.tolerance and not missing and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
