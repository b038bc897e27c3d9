"""Saved multi-seed results without any model: constructed numbers with known statistics."""

from __future__ import annotations

from pathlib import Path

from prunelab.study.multiseed import seed_dir
from prunelab.study.runfolder import write_results

KS = (0.0, 50.0, 90.0)


def row(method: str, k: float, accuracy: float) -> dict:
    return {"method": method, "granularity": method, "sparsity_pct": k, "accuracy": accuracy,
            "loss": 2.0 - accuracy, "zero_fraction": k / 100, "effective_sparsity": k / 100,
            "params_remaining": int(1000 * (1 - k / 100)), "params_total": 1000,
            "macs_per_sample": 1000, "seconds": 0.01}


def curves(seed: int) -> tuple[dict, list[dict]]:
    """Dense 0.90 + seed/100; weight loses 0, 1, 10 points; unit 0, 5 + seed, 40."""
    dense = 0.90 + seed / 100
    rows = [row("weight", k, dense - d) for k, d in zip(KS, (0, 0.01, 0.10), strict=True)]
    rows += [row("unit", k, dense - d) for k, d in zip(KS, (0, 0.05 + seed / 100, 0.40),
                                                        strict=True)]
    return {"accuracy": dense, "loss": 2.0 - dense}, rows


def write_fake_run(run_dir: Path, seeds=(0, 1, 2), dataset="fashion-mnist", size=10000,
                   hidden=(32, 16)) -> Path:
    for s in seeds:
        dense, rows = curves(s)
        meta = {"run": {"dataset": dataset, "model": {"hidden": list(hidden)},
                        "train": {"epochs": 1, "seed": s}},
                "sweep": {"methods": ["weight", "unit"], "sparsities": [k / 100 for k in KS]},
                "environment": {"python": "3", "cpu_count": 2},
                "test_set": {"dataset": dataset, "size": size, "sha256": f"{dataset}{size}"}}
        folder = seed_dir(run_dir, s) if len(seeds) > 1 else run_dir
        folder.mkdir(parents=True, exist_ok=True)
        write_results(folder, dense, rows, meta)
    return run_dir
