"""Training checkpoints in the run folder: training killed mid-way continues where it stopped.

After every epoch but the last, ``RUN_DIR/checkpoint/`` gets ``epoch<N>.safetensors`` (weights,
optimiser moments, random generator states) and then ``state.json`` (the run config, the epoch,
the history, the JSON-able rest of the state and the SHA-256 of the tensors file). Both are
written atomically and ``state.json`` is written last, so it always names a complete tensors
file; older tensors files are deleted only after it. Nothing is ever unpickled. The folder is
removed once the model is saved.

A checkpoint of another configuration is discarded (training starts afresh, as it does over a
finished model of another configuration); an unreadable one is an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from prunelab.data import Dataset
from prunelab.files import atomic_write
from prunelab.models import build_model
from prunelab.study.runfolder import RunConfig, save_run
from prunelab.train import EpochStats, StateMismatch, StepInfo, TrainState, train

__all__ = ["CHECKPOINT_DIR", "checkpoint_epoch", "read_checkpoint", "remove_checkpoint",
           "train_into", "write_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_DIR, STATE_JSON = "checkpoint", "state.json"
FORMAT, VERSION = "prunelab-train-checkpoint", 1


def write_checkpoint(run_dir: Path, config: RunConfig, state: TrainState) -> None:
    """Save ``state`` atomically as the run folder's checkpoint."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    blob = safetensors.torch.save({k: v.contiguous() for k, v in state.tensors.items()})
    name = f"epoch{state.epoch}.safetensors"
    atomic_write(folder / name, blob)
    atomic_write(folder / STATE_JSON, json.dumps({
        "format": FORMAT, "version": VERSION, "config": config.to_dict(), "epoch": state.epoch,
        "tensors": name, "sha256": hashlib.sha256(blob).hexdigest(),
        "history": [asdict(h) for h in state.history], "state": state.meta,
    }) + "\n")
    for old in folder.glob("epoch*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def remove_checkpoint(run_dir: Path) -> None:
    """Delete the run folder's checkpoint, if any."""
    shutil.rmtree(Path(run_dir) / CHECKPOINT_DIR, ignore_errors=True)


def _bad(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a usable training checkpoint ({why}); delete "
                      f"{path.parent} to train from scratch")


def _read_state_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(path, f"not valid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _bad(path, f"no format {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise _bad(path, f"version {raw.get('version')!r}, this prunelab reads {VERSION}")
    kinds = {"config": dict, "epoch": int, "tensors": str, "sha256": str, "history": list,
             "state": dict}
    for key, kind in kinds.items():
        if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
            raise _bad(path, f"{key!r} missing or not a {kind.__name__}")
    if raw["epoch"] < 1 or len(raw["history"]) != raw["epoch"]:
        raise _bad(path, f"epoch {raw['epoch']} with {len(raw['history'])} history rows")
    if Path(raw["tensors"]).name != raw["tensors"]:
        raise _bad(path, f"tensors file {raw['tensors']!r} is not in the checkpoint folder")
    return raw


def checkpoint_epoch(run_dir: Path, config: RunConfig) -> int | None:
    """Epochs done by the checkpoint of ``config`` in ``run_dir``; None when there is none
    (or it is of another configuration). Raises ValueError for an unreadable one."""
    path = Path(run_dir) / CHECKPOINT_DIR / STATE_JSON
    if not path.is_file():
        return None
    raw = _read_state_json(path)
    return raw["epoch"] if raw["config"] == config.to_dict() else None


def read_checkpoint(run_dir: Path, config: RunConfig) -> TrainState | None:
    """The checkpoint of ``config`` in ``run_dir``; None when there is none or it belongs to
    another configuration (which is then deleted)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    path = folder / STATE_JSON
    if not path.is_file():
        return None
    raw = _read_state_json(path)
    if raw["config"] != config.to_dict():
        log.warning("%s holds a checkpoint of another configuration; training afresh", folder)
        remove_checkpoint(run_dir)
        return None
    tensors_path = folder / raw["tensors"]
    if not tensors_path.is_file():
        raise _bad(path, f"{raw['tensors']} is missing")
    blob = tensors_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != raw["sha256"]:
        raise _bad(tensors_path, "its SHA-256 differs from the one state.json recorded")
    try:
        tensors = safetensors.torch.load(blob)
        history = [EpochStats(**row) for row in raw["history"]]
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise _bad(tensors_path, f"{type(e).__name__}: {e}") from None
    return TrainState(raw["epoch"], history, tensors, raw["state"])


def train_into(run_dir: Path, config: RunConfig, data: Dataset, device: torch.device,
               on_step: Callable[[StepInfo], None] | None = None) -> None:
    """Train a model of ``config`` (continuing from the run folder's checkpoint when there is
    one of the same configuration) and save it into ``run_dir``; the checkpoint is removed."""
    resume = read_checkpoint(run_dir, config)
    if resume is not None:
        log.info("resuming %s after epoch %d", run_dir, resume.epoch)
    model = build_model(config.family, config.model,
                        torch.Generator().manual_seed(config.train.seed))

    def on_epoch(state: TrainState) -> None:
        if state.epoch < config.train.epochs:  # the last one is saved as the model itself
            write_checkpoint(run_dir, config, state)

    try:
        history = train(model, data, config.train, device, on_step, resume, on_epoch)
    except StateMismatch as e:
        raise _bad(Path(run_dir) / CHECKPOINT_DIR / STATE_JSON, str(e)) from None
    model.cpu()
    save_run(run_dir, config, model, history)
    remove_checkpoint(run_dir)
