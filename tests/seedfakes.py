"""Saved multi-seed results without any model: constructed numbers with known statistics."""

from __future__ import annotations

from pathlib import Path

from prunelab.study.multiseed import seed_dir
from prunelab.study.runfolder import write_results

KS = (0.0, 50.0, 90.0)


def row(method: str, k: float, accuracy: float, loss: float | None = None) -> dict:
    return {"method": method, "granularity": method, "sparsity_pct": k, "accuracy": accuracy,
            "loss": 2.0 - accuracy if loss is None else loss, "zero_fraction": k / 100,
            "effective_sparsity": k / 100, "params_remaining": int(1000 * (1 - k / 100)),
            "params_total": 1000, "macs_per_sample": 1000, "seconds": 0.01}


def curves(seed: int) -> tuple[dict, list[dict]]:
    """Dense 0.90 + seed/100; weight loses 0, 1, 10 points; unit 0, 5 + seed, 40."""
    dense = 0.90 + seed / 100
    rows = [row("weight", k, dense - d) for k, d in zip(KS, (0, 0.01, 0.10), strict=True)]
    rows += [row("unit", k, dense - d) for k, d in zip(KS, (0, 0.05 + seed / 100, 0.40),
                                                        strict=True)]
    return {"accuracy": dense, "loss": 2.0 - dense}, rows


def wide_curves(seed: int) -> tuple[dict, list[dict]]:
    """Seeds far apart near both ends of the valid ranges: with three seeds the 95 % intervals
    of accuracy pass 100 % (dense, k = 0) and 0 % (unit, k = 90), that of loss passes 0."""
    dense, loss = (0.999, 0.95, 0.90)[seed % 3], (0.002, 0.2, 0.4)[seed % 3]
    rows = [row("weight", 0.0, dense, loss), row("unit", 0.0, dense, loss),
            row("weight", 50.0, dense - 0.02), row("unit", 50.0, dense - 0.3),
            row("weight", 90.0, dense - 0.2), row("unit", 90.0, (0.0, 0.05, 0.15)[seed % 3])]
    return {"accuracy": dense, "loss": loss}, rows


def write_fake_run(run_dir: Path, seeds=(0, 1, 2), dataset="fashion-mnist", size=10000,
                   hidden=(32, 16), wide: bool = False) -> Path:
    """A run folder (``seed<k>/`` folders for several seeds) with saved sweep results only.

    ``wide``: the curves of ``wide_curves`` instead of ``curves``.
    """
    for s in seeds:
        dense, rows = (wide_curves if wide else curves)(s)
        run = {"dataset": dataset,  # as RunConfig.to_dict() writes it
               "model": {"input_size": 784, "hidden": list(hidden), "num_classes": 10,
                         "bias": False},
               "train": {"epochs": 1, "batch_size": 128, "lr": 1e-3, "seed": s}}
        meta = {"run": run,
                "sweep": {"methods": ["weight", "unit"], "sparsities": [k / 100 for k in KS]},
                "environment": {"python": "3", "cpu_count": 2},
                "test_size": size,
                "test_set": {"dataset": dataset, "size": size, "sha256": f"{dataset}{size}"}}
        folder = seed_dir(run_dir, s) if len(seeds) > 1 else run_dir
        folder.mkdir(parents=True, exist_ok=True)
        write_results(folder, dense, rows, meta)
    return run_dir
