"""The jobs of a study, as they run in a worker: train one model, or sweep one shard of it.

A worker writes nothing the driver reads: it trains in a scratch folder (the driver's, on this
machine, so an interrupted training resumes from its epoch checkpoint; else a temporary one)
and sends back the model file's bytes and the history; a sweep shard sends back its result
rows. The driver writes the run folders (``prunelab.study.grid``).

Data come either from ``data_dir`` (workers on this machine) or as the dataset's verified
files, sent with the job (workers elsewhere); a worker process keeps the last datasets it
loaded for its next jobs.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch

from prunelab.data import DATASETS, Dataset, DatasetSpec, find_or_fetch, load_dataset
from prunelab.models import build_model
from prunelab.study.runfolder import HISTORY, MODEL, RunConfig, load_weights
from prunelab.study.sweep import SweepConfig, ensure_trained, resolve_device, sweep_model
from prunelab.train import StepInfo, strict_blas

__all__ = ["DataFiles", "SweepJob", "TrainJob", "dataset_files", "sweep_job", "train_job"]

DataFiles = dict[str, bytes]
"""A dataset's four IDX gzip files by name (checked against their checksums on arrival)."""

Report = Callable[[int], None]
_STEP_BATCH = 25  # training steps per progress message: keeps the queue quiet
_KEPT_DATASETS = 2
_datasets: OrderedDict[tuple[Any, ...], Dataset] = OrderedDict()


@dataclass(frozen=True)
class TrainJob:
    """Train one model."""

    config: RunConfig
    """What to train (dataset, model, recipe and seed)."""
    spec: DatasetSpec
    """The dataset's files and checksums (a worker may not know a dataset registered here)."""
    data_dir: Path | None
    """Where the files are on this machine (None: PRUNELAB_DATA, the cache, a download)."""
    device: str = "cpu"
    """auto, cpu or cuda[:N]."""
    scratch: Path | None = None
    """Folder to train and checkpoint in (None: a temporary folder, removed afterwards)."""


@dataclass(frozen=True)
class SweepJob:
    """Sweep one trained model with some of the study's methods and sparsities."""

    config: RunConfig
    """How the model was trained (it is built from this, then loaded)."""
    sweep: SweepConfig
    """The shard: a method and some (or all) of its sparsities."""
    spec: DatasetSpec
    """As in ``TrainJob``."""
    data_dir: Path | None
    """As in ``TrainJob``."""
    device: str = "cpu"
    """auto, cpu or cuda[:N]."""


def dataset_files(spec: DatasetSpec, data_dir: Path | None) -> DataFiles:
    """The verified files of ``spec`` (fetched if needed), to send to remote workers."""
    return {f.name: find_or_fetch(spec, f, data_dir).read_bytes() for f in spec.files()}


def _load(spec: DatasetSpec, data_dir: Path | None, files: DataFiles | None) -> Dataset:
    DATASETS[spec.name] = spec  # spawned or remote workers import prunelab afresh
    if files is None:
        return load_dataset(spec.name, data_dir)
    with tempfile.TemporaryDirectory(prefix="prunelab-data-") as tmp:
        for name, blob in files.items():
            (Path(tmp) / spec.name).mkdir(exist_ok=True)
            (Path(tmp) / spec.name / name).write_bytes(blob)
        return load_dataset(spec.name, tmp, download=False)  # checksums checked here


def _dataset(spec: DatasetSpec, data_dir: Path | None, files: DataFiles | None) -> Dataset:
    """The dataset, from this process's last loaded ones when possible."""
    key = (spec, None if files is not None else str(data_dir), os.environ.get("PRUNELAB_DATA"))
    if key not in _datasets:
        _datasets[key] = _load(spec, data_dir, files)
        while len(_datasets) > _KEPT_DATASETS:
            _datasets.popitem(last=False)
    _datasets.move_to_end(key)
    return _datasets[key]


def _where() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def train_job(job: TrainJob, files: DataFiles | None, *, report: Report) -> dict[str, Any]:
    """Train; returns the model file (``model``: safetensors bytes), the ``history`` and
    where and how long it ran."""
    strict_blas()  # before any computation in this worker (see train.strict_blas)
    start = time.perf_counter()
    data = _dataset(job.spec, job.data_dir, files)
    pending = [0]

    def on_step(info: StepInfo) -> None:
        pending[0] += 1
        if pending[0] == _STEP_BATCH or info.step == info.steps_per_epoch:
            report(pending[0])
            pending[0] = 0

    with tempfile.TemporaryDirectory(prefix="prunelab-train-") as tmp:
        folder = job.scratch if job.scratch is not None else Path(tmp)
        ensure_trained(folder, job.config, data, resolve_device(job.device), on_step)
        model, history = (folder / MODEL).read_bytes(), json.loads((folder / HISTORY).read_text())
    return {"model": model, "history": history, "seconds": time.perf_counter() - start,
            **_where()}


def sweep_job(job: SweepJob, model_file: bytes, files: DataFiles | None, *,
              report: Report) -> dict[str, Any]:
    """Sweep the model in ``model_file`` (safetensors bytes); returns the ``dense`` accuracy,
    the result ``rows``, the results' ``meta`` and where and how long it ran."""
    strict_blas()
    start = time.perf_counter()
    data = _dataset(job.spec, job.data_dir, files)
    model = build_model(job.config.family, job.config.model)
    load_weights(model, safetensors.torch.load(model_file), Path(MODEL))
    with tempfile.TemporaryDirectory(prefix="prunelab-sweep-") as tmp:
        results = sweep_model(model, data, Path(tmp), job.sweep, job.config.train.seed,
                              resolve_device(job.device), lambda row: report(1),
                              run_meta=job.config.to_dict())
    return {"dense": results.dense, "rows": results.rows, "meta": results.meta,
            "seconds": time.perf_counter() - start, **_where()}
