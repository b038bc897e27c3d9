"""The run folder: config, model, training history, sweep results. Written atomically.

A run folder holds ``config.json`` (dataset, model and training settings), ``model.safetensors``,
``history.json``, and after a sweep ``results.csv`` / ``results.json``. Every file is written to
a temporary name and renamed, so an interrupted run never leaves a half-written file behind.

Every reader treats the files as untrusted: JSON and safetensors only (nothing is unpickled),
checked for structure, types, tensor names, shapes and dtypes; anything else is a one-line
``ValueError`` naming the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
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
    "load_weights",
    "read_bench_meta",
    "read_tensors",
    "resumable_rows",
    "save_run",
    "write_bench",
    "write_results",
    "write_trained",
]

CONFIG, MODEL, HISTORY = "config.json", "model.safetensors", "history.json"
RESULTS_CSV, RESULTS_JSON = "results.csv", "results.json"
BENCH_CSV, BENCH_JSON = "bench.csv", "bench.json"
BENCH_COLUMNS = ("method", "sparsity_pct", "batch_size", "backend", "latency_ms",
                 "speedup_vs_dense", "speedup_vs_best_dense", "flop_ratio", "bytes_ratio", "plan",
                 "max_abs_diff", "repeats", "threads")
_NUMERIC = ("sparsity_pct", "batch_size", "latency_ms", "speedup_vs_dense", "flop_ratio")
RESULT_COLUMNS = (
    "method", "granularity", "sparsity_pct", "accuracy", "loss", "zero_fraction",
    "effective_sparsity", "params_remaining", "params_total", "macs_per_sample",
    "compact_params", "compact_macs", "seconds", "peak_memory_mb",
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
        """Inverse of ``to_dict``; folders written before model families read as ``mlp``.

        Raises ValueError for anything else (missing keys, wrong types, bad values)."""
        try:
            if not isinstance(d, dict) or not all(isinstance(d.get(k), dict)
                                                  for k in ("model", "train")):
                raise ValueError("needs 'model' and 'train' objects")
            family = d.get("family", "mlp")
            if not isinstance(family, str) or family not in MODELS:
                raise ValueError(f"unknown model {family!r}; choose from {sorted(MODELS)}")
            model = {k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()}
            if not isinstance(d.get("dataset"), str):
                raise ValueError(f"dataset must be a name, got {d.get('dataset')!r}")
            return cls(d["dataset"], MODELS[family].config_type(**model),
                       TrainConfig(**d["train"]), family)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise ValueError(_first_line(e)) from None


def _first_line(e: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


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
        return json.loads(path.read_bytes().decode())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({_first_line(e)})") from None


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
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_trained(run_dir, config, safetensors.torch.save(state), [asdict(h) for h in history])


def write_trained(run_dir: Path, config: RunConfig, model_file: bytes,
                  history: list[dict[str, Any]]) -> None:
    """``save_run`` from the model file's bytes (safetensors) and the history's records, as a
    study's driver gets them from its workers."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).unlink(missing_ok=True)  # a model without its config is never reused
    _write_json(run_dir / HISTORY, history)
    atomic_write(run_dir / MODEL, model_file)
    _write_json(run_dir / CONFIG, config.to_dict())


def has_trained_model(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a model trained with exactly ``config``."""
    path = run_dir / CONFIG
    if not (path.is_file() and (run_dir / MODEL).is_file()):
        return False
    try:
        return RunConfig.from_dict(_read_json(path, "config")) == config
    except ValueError:
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
    except ValueError as e:
        raise ValueError(f"{run_dir / CONFIG}: not a prunelab run config ({e})") from None
    if not (run_dir / MODEL).is_file():
        raise FileNotFoundError(f"{run_dir} holds no trained model ({MODEL} is missing)")
    tensors = read_tensors(run_dir / MODEL)
    try:
        model = build_model(config.family, config.model)
    except (RuntimeError, MemoryError, OverflowError) as e:  # absurd sizes: allocation fails
        raise ValueError(f"{run_dir / CONFIG}: cannot build its model ({_first_line(e)})") \
            from None
    load_weights(model, tensors, run_dir / MODEL)
    history = _read_json(run_dir / HISTORY, "history") if (run_dir / HISTORY).is_file() else []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"{run_dir / HISTORY}: not a list of per-epoch records")
    return Run(config, model, history)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never a pickle); ValueError naming it otherwise."""
    try:
        return safetensors.torch.load(Path(path).read_bytes())
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy ``tensors`` into ``model``: exactly its names, shapes and dtypes, or ValueError."""
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: does not match {CONFIG} (missing tensors {missing[:3]}, "
                         f"unexpected tensors {extra[:3]})")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"{path}: tensor {name} is {got.dtype} {tuple(got.shape)}, "
                             f"{CONFIG} makes it {want.dtype} {tuple(want.shape)}")
    model.load_state_dict(tensors)


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


def resumable_rows(run_dir: Path, meta: dict[str, Any],
                   expected: dict[tuple[str, float], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``run_dir``'s earlier results that a sweep described by ``meta`` keeps.

    ``expected`` maps each (method, sparsity_pct) this sweep computes to the values its row will
    carry (calibration size, BatchNorm re-estimation). Kept are the rows of other (method, k)
    and the rows already computed with those values, by a sweep of the same model (``run``), on
    the same test set, with the same seed; nothing is kept from unreadable results.
    """
    try:
        earlier = load_results(run_dir)
    except (FileNotFoundError, ValueError):
        return []
    old = earlier.meta if isinstance(earlier.meta, dict) else {}
    if old.get("run") != meta["run"]:
        return []  # results of another model: stale
    same_sweep = (old.get("test_set") == meta["test_set"] and isinstance(old.get("sweep"), dict)
                  and old["sweep"].get("seed") == meta["sweep"]["seed"])
    kept = []
    for row in earlier.rows if isinstance(earlier.rows, list) else []:
        if not isinstance(row, dict):
            continue
        want = expected.get((row.get("method"), row.get("sparsity_pct")))
        if want is None or (same_sweep and all(row.get(k) == v for k, v in want.items())):
            kept.append(row)
    return kept


def load_results(run_dir: Path) -> Results:
    """The sweep results saved in ``run_dir``."""
    run_dir = _existing(run_dir)
    path = run_dir / RESULTS_JSON
    raw = _read_json(path, "sweep results (run `prunelab sweep` first)")
    problem = _results_problem(raw)
    if problem:
        raise ValueError(f"{path}: not prunelab sweep results ({problem})")
    return Results(raw["dense"], raw["rows"], raw["meta"])


def _number(value: Any, low: float = -math.inf, high: float = math.inf,
            nan: bool = False) -> bool:
    """Whether ``value`` is a JSON number (not a bool) in [low, high]; NaN only if ``nan``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return (nan and math.isnan(value)) or low <= value <= high


_STRINGS = ("method", "granularity")
_COUNTS = ("params_remaining", "params_total", "macs_per_sample")
_FRACTIONS = ("accuracy", "zero_fraction", "effective_sparsity")


def _row_problem(row: Any) -> str | None:
    """What is wrong with one result row, or None. Loss may be NaN or infinite (a measurement
    of a broken model); the other numbers must be finite and in their ranges."""
    if not isinstance(row, dict):
        return "a row is not an object"
    checks = [(k, isinstance(row.get(k), str)) for k in _STRINGS]
    checks += [(k, _number(row.get(k), 0, 1)) for k in _FRACTIONS]
    checks += [(k, _number(row.get(k), 0, 2**63)) for k in _COUNTS]
    checks += [("sparsity_pct", _number(row.get("sparsity_pct"), 0, 100)),
               ("loss", _number(row.get("loss"), nan=True)),
               ("seconds", _number(row.get("seconds"), 0, 1e12))]
    if "peak_memory_mb" in row:  # results of older versions have none
        checks.append(("peak_memory_mb", _number(row["peak_memory_mb"], 0, 1e12)))
    checks += [(k, _number(row[k], 0, 2**63)) for k in ("compact_params", "compact_macs")
               if k in row]  # nor these
    bad = [k for k, ok in checks if not ok]
    return f"row field {bad[0]!r} is {row.get(bad[0])!r:.60}" if bad else None


def _results_problem(raw: Any) -> str | None:
    """What is wrong with the content of a results.json, or None."""
    if not isinstance(raw, dict):
        return "not an object"
    dense, rows, meta = raw.get("dense"), raw.get("rows"), raw.get("meta")
    if not isinstance(dense, dict) or not _number(dense.get("accuracy"), 0, 1) \
            or not _number(dense.get("loss"), nan=True):
        return f"'dense' needs an accuracy in [0, 1] and a loss, got {dense!r}"[:200]
    if not isinstance(meta, dict):
        return "'meta' is not an object"
    if not isinstance(rows, list):
        return "'rows' is not a list"
    return next((p for p in map(_row_problem, rows) if p), None)


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
            for key in ("speedup_vs_best_dense", "bytes_ratio"):  # none in older tables
                value = row.get(key)
                row[key] = float(value) if value not in (None, "") else None
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a prunelab bench table ({_first_line(e)})") from None
    return rows


def read_bench_meta(run_dir: Path) -> dict[str, Any]:
    """The ``meta`` of ``run_dir/bench.json`` (config, environment); {} when unreadable."""
    path = Path(run_dir) / BENCH_JSON
    try:
        return json.loads(path.read_text()).get("meta", {}) if path.is_file() else {}
    except (json.JSONDecodeError, AttributeError):
        return {}
