"""The run folder: config, model, training history, sweep results. Written atomically.

A run folder holds ``config.json`` (dataset, model and training settings), ``model.safetensors``,
``history.json``, and after a sweep ``results.csv`` / ``results.json``. Every file is written to
a temporary name and renamed, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from prunelab.data import DATASETS
from prunelab.files import atomic_write
from prunelab.models import MODELS, MLPConfig, build_model
from prunelab.train import EpochStats, TrainConfig

__all__ = [
    "BENCH_COLUMNS",
    "RESULT_COLUMNS",
    "Results",
    "Run",
    "RunConfig",
    "environment_info",
    "has_trained_model",
    "load_results",
    "load_run",
    "read_bench",
    "read_bench_meta",
    "save_run",
    "write_bench",
    "write_results",
]

CONFIG, MODEL, HISTORY = "config.json", "model.safetensors", "history.json"
RESULTS_CSV, RESULTS_JSON = "results.csv", "results.json"
BENCH_CSV, BENCH_JSON = "bench.csv", "bench.json"
BENCH_COLUMNS = ("method", "sparsity_pct", "batch_size", "backend", "latency_ms",
                 "speedup_vs_dense", "flop_ratio", "plan", "max_abs_diff", "repeats", "threads")
_NUMERIC = ("sparsity_pct", "batch_size", "latency_ms", "speedup_vs_dense", "flop_ratio")
RESULT_COLUMNS = (
    "method", "granularity", "sparsity_pct", "accuracy", "loss", "zero_fraction",
    "effective_sparsity", "params_remaining", "params_total", "macs_per_sample", "seconds",
    "peak_memory_mb",
)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a trained model."""

    dataset: str = "fashion-mnist"
    """A key of ``prunelab.data.DATASETS``."""
    model: Any = field(default_factory=MLPConfig)
    """The network's options: an instance of ``MODELS[family].config_type``."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training recipe and seed."""
    family: str = "mlp"
    """A key of ``prunelab.models.MODELS``."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {sorted(DATASETS)}")
        if self.family not in MODELS:
            raise ValueError(f"unknown model {self.family!r}; choose from {sorted(MODELS)}")
        wanted = MODELS[self.family].config_type
        if not isinstance(self.model, wanted):
            raise TypeError(f"model {self.family!r} takes a {wanted.__name__}, "
                            f"got {type(self.model).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "family": self.family,
                "model": _plain(asdict(self.model)), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Inverse of ``to_dict``; folders written before model families read as ``mlp``."""
        family = d.get("family", "mlp")
        if family not in MODELS:
            raise ValueError(f"unknown model {family!r}; choose from {sorted(MODELS)}")
        model = {k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()}
        return cls(d["dataset"], MODELS[family].config_type(**model), TrainConfig(**d["train"]),
                   family)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists: what JSON writes and ``from_dict`` turns back into tuples."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class Run:
    """A trained model with its config and history, as loaded from a run folder."""

    config: RunConfig
    model: nn.Module
    history: list[dict[str, float]]


@dataclass(frozen=True)
class Results:
    """A sweep's output as loaded from a run folder."""

    dense: dict[str, float]
    """Accuracy and loss of the unpruned model."""
    rows: list[dict[str, Any]]
    """One row per (method, sparsity), with ``RESULT_COLUMNS`` and per-layer details."""
    meta: dict[str, Any]
    """Run config, environment and sweep settings."""


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} holds no {what} ({path.name} is missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions and hardware, for reports."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def save_run(run_dir: Path, config: RunConfig, model: nn.Module, history: list[EpochStats]) -> None:
    """Save a freshly trained model; the config is written last and marks the model complete."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).unlink(missing_ok=True)  # a model without its config is never reused
    _write_json(run_dir / HISTORY, [asdict(h) for h in history])
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / MODEL, safetensors.torch.save(state))
    _write_json(run_dir / CONFIG, config.to_dict())


def has_trained_model(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a model trained with exactly ``config``."""
    path = run_dir / CONFIG
    if not (path.is_file() and (run_dir / MODEL).is_file()):
        return False
    try:
        return RunConfig.from_dict(json.loads(path.read_text())) == config
    except (ValueError, KeyError, TypeError):
        return False


def _existing(run_dir: Path) -> Path:
    """``run_dir`` as a Path, or FileNotFoundError when there is no such folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    return run_dir


def load_run(run_dir: Path) -> Run:
    """The trained model of ``run_dir`` with its config and history."""
    run_dir = _existing(run_dir)
    raw = _read_json(run_dir / CONFIG, "trained model")
    try:
        config = RunConfig.from_dict(raw)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{run_dir / CONFIG}: not a prunelab run config ({e})") from None
    if not (run_dir / MODEL).is_file():
        raise FileNotFoundError(f"{run_dir} holds no trained model ({MODEL} is missing)")
    model = build_model(config.family, config.model)
    try:
        model.load_state_dict(safetensors.torch.load_file(run_dir / MODEL))
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{run_dir / MODEL}: does not match {CONFIG} ({e})") from None
    history = _read_json(run_dir / HISTORY, "history") if (run_dir / HISTORY).is_file() else []
    return Run(config, model, history)


def write_results(run_dir: Path, dense: dict[str, float], rows: list[dict[str, Any]],
                  meta: dict[str, Any]) -> None:
    """Write ``results.csv`` and ``results.json`` atomically (called after every row)."""
    _write_json(run_dir / RESULTS_JSON, {"dense": dense, "rows": rows, "meta": meta})
    atomic_write(run_dir / RESULTS_CSV, _csv(rows, RESULT_COLUMNS))


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """``rows`` as CSV text with ``columns`` (other keys of a row are left out)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def load_results(run_dir: Path) -> Results:
    """The sweep results saved in ``run_dir``."""
    run_dir = _existing(run_dir)
    raw = _read_json(run_dir / RESULTS_JSON, "sweep results (run `prunelab sweep` first)")
    try:
        return Results(raw["dense"], raw["rows"], raw["meta"])
    except (KeyError, TypeError):
        raise ValueError(f"{run_dir / RESULTS_JSON}: not prunelab sweep results") from None


def write_bench(run_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``bench.csv`` and ``bench.json`` atomically (called after every method and k)."""
    _write_json(Path(run_dir) / BENCH_JSON, {"rows": rows, "meta": meta})
    atomic_write(Path(run_dir) / BENCH_CSV, _csv(rows, BENCH_COLUMNS))


def read_bench(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/bench.csv`` with numbers parsed; [] when there is none."""
    path = Path(run_dir) / BENCH_CSV
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        for row in rows:
            for key in _NUMERIC:
                row[key] = float(row[key])
            row["batch_size"] = int(row["batch_size"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a prunelab bench table ({e})") from None
    return rows


def read_bench_meta(run_dir: Path) -> dict[str, Any]:
    """The ``meta`` of ``run_dir/bench.json`` (config, environment); {} when unreadable."""
    path = Path(run_dir) / BENCH_JSON
    try:
        return json.loads(path.read_text()).get("meta", {}) if path.is_file() else {}
    except (json.JSONDecodeError, AttributeError):
        return {}
