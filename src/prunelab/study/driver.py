"""The driver of a grid of jobs: train every model into its run folder, then sweep it in shards.

Each ``RunJob`` is one trained model (a dataset, a model, a recipe, a seed) and its ordinary run
folder. It becomes a training job (unless the folder holds a model trained with the same
configuration) and sweep jobs, one per method or per method and a few sparsities (``shard_size``),
each identified by a hash of its configuration. Jobs run on an executor (``executors``); the
driver, here, alone writes the run folders, atomically, as each job finishes:

- a training job's model file and history (``write_trained``, the config last);
- a sweep job's rows, merged into ``results.json``/``results.csv`` with the rows kept from
  earlier (``resumable_rows``: same model, test set, seed and settings).

Run again, a grid skips every job whose results are written; each sweep row draws its random
numbers from its own seed (``sweep.sweep``), so the shards give the numbers of one whole sweep,
whichever executor ran them and however many workers it had.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prunelab.data import DATASETS, Dataset, load_dataset, test_set_fingerprint
from prunelab.files import atomic_write
from prunelab.models import build_model
from prunelab.study.executors import Executor, Task
from prunelab.study.jobs import SweepJob, TrainJob, dataset_files, sweep_job, train_job
from prunelab.study.lock import run_lock
from prunelab.study.multiseed import check_seeds, seed_dir
from prunelab.study.runfolder import (
    HISTORY,
    MODEL,
    RunConfig,
    has_trained_model,
    load_run,
    resumable_rows,
    write_results,
    write_trained,
)
from prunelab.study.sweep import (
    SweepConfig,
    check_sweep,
    method_sparsities,
    row_settings,
    sweep_settings,
)

__all__ = ["JOBS_JSON", "GridOutcome", "GridRun", "GridSettings", "RunJob", "job_id", "run_grid",
           "seed_jobs", "shards"]

JOBS_JSON = "jobs.json"
SCRATCH = ".training"
"""A run folder's scratch folder for workers on this machine (training and its checkpoints)."""

Progress = Callable[[str, int], None]
"""``("total", n)`` once the work is known, then ``("done", n)`` as it gets done."""
Key = tuple[str, float]  # (method, sparsity_pct) of a result row


@dataclass(frozen=True)
class RunJob:
    """One trained model's work: its run folder, how it is trained and how it is swept."""

    run_dir: Path
    """Its ordinary single-seed run folder."""
    config: RunConfig
    """How to train it (a model trained the same way in ``run_dir`` is reused)."""
    sweep: SweepConfig | None
    """Methods and sparsities to sweep it with; None: train only."""
    label: str = ""
    """What it is, for messages (default: ``seed <k>``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if not self.label:
            object.__setattr__(self, "label", f"seed {self.config.train.seed}")


@dataclass(frozen=True)
class GridSettings:
    """How a grid's jobs run."""

    data_dir: Path | None = None
    """Folder holding the datasets (else PRUNELAB_DATA, the cache, a download)."""
    device: str = "cpu"
    """auto, cpu or cuda[:N], in the workers."""
    shard_size: int | None = None
    """Sparsities per sweep job; None: all of a method's in one job."""

    def __post_init__(self) -> None:
        size = self.shard_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"shard size must be a positive integer, got {size!r}")


@dataclass
class GridOutcome:
    """What a grid run did."""

    ran: list[str] = field(default_factory=list)
    """Labels of the jobs that ran, in the order they finished."""
    skipped: int = 0
    """Jobs whose results were already written."""
    seconds: float = 0.0
    """Wall time."""


def seed_jobs(run_dir: Path, config: RunConfig, seeds: tuple[int, ...],
              sweep: SweepConfig | None) -> list[RunJob]:
    """One job per seed: ``config`` with that seed, into ``run_dir/seed<k>``."""
    return [RunJob(seed_dir(run_dir, s), replace(config, train=replace(config.train, seed=s)),
                   sweep) for s in check_seeds(seeds)]


def job_id(payload: dict[str, Any]) -> str:
    """The hash that identifies a job's configuration."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def shards(sweep: SweepConfig, size: int | None = None) -> list[SweepConfig]:
    """``sweep`` split by method, and each method's sparsities into groups of ``size``."""
    out = []
    for method in sweep.methods:
        ks = method_sparsities(method, sweep)
        step = size or len(ks)
        out += [replace(sweep, methods=(method,), sparsities=ks[i:i + step])
                for i in range(0, len(ks), step)]
    return out


def _keys(sweep: SweepConfig) -> list[Key]:
    return [(m, round(k * 100, 6)) for m in sweep.methods for k in method_sparsities(m, sweep)]


class GridRun:
    """Plans a grid's jobs, hands them to the executor and writes what comes back.

    ``check()`` loads the data and checks every job before anything is written; ``run()``
    (which checks first) locks every run folder, runs the jobs and writes their results.
    ``log_file``: a JSON record of the jobs that ran (id, what, where, how long).
    """

    def __init__(self, jobs: list[RunJob], executor: Executor,
                 settings: GridSettings | None = None, log_file: Path | None = None) -> None:
        if not jobs:
            raise ValueError("no jobs to run")
        folders = [j.run_dir.resolve() for j in jobs]
        if len(set(folders)) != len(folders):
            raise ValueError("two jobs of the grid share a run folder")
        configs = [json.dumps(j.config.to_dict(), sort_keys=True) for j in jobs]
        if len(set(configs)) != len(configs):
            raise ValueError("two jobs of the grid train the same model (same configuration)")
        self.jobs, self.executor = jobs, executor
        self.settings, self.log_file = settings or GridSettings(), log_file
        self.progress: Progress = lambda kind, n: None
        self.log: dict[str, Any] = {}
        self.data: dict[str, tuple[Dataset, Any]] = {}
        self.after: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.outcome = GridOutcome()

    def dataset(self, name: str) -> tuple[Dataset, Any]:
        """The dataset, loaded here once, and the files handle remote workers get."""
        if name not in self.data:
            data = load_dataset(name, self.settings.data_dir)
            files = dataset_files(DATASETS[name], self.settings.data_dir) \
                if self.executor.remote else None
            self.data[name] = data, files and self.executor.share(files)
        return self.data[name]

    def sweep_meta(self, job: RunJob) -> dict[str, Any]:
        """What ``sweep_model`` records of a whole sweep of ``job`` (``results.json``'s meta)."""
        data, _ = self.dataset(job.config.dataset)
        model, sweep = build_model(job.config.family, job.config.model), job.sweep
        try:
            check_sweep(model, sweep)
        except ValueError as e:
            raise ValueError(f"{job.label}: {e}") from None
        return {"run": job.config.to_dict(), "test_set": test_set_fingerprint(data),
                "sweep": sweep_settings(model, len(data.train_x), sweep, job.config.train.seed)}

    def plan(self, job: RunJob) -> int:
        """Submit ``job``'s training, or its unfinished sweep shards; returns their units."""
        data, files = self.dataset(job.config.dataset)
        todo = shards(job.sweep, self.settings.shard_size) if job.sweep else []
        meta = self.sweep_meta(job) if job.sweep else {}
        if not has_trained_model(job.run_dir, job.config):
            steps = -(-len(data.train_x) // job.config.train.batch_size)
            units = job.config.train.epochs * steps
            scratch = None if self.executor.remote else job.run_dir / SCRATCH
            train = TrainJob(job.config, DATASETS[job.config.dataset], self.settings.data_dir,
                             self.settings.device, scratch)
            self.submit(f"train {job.label}", {"train": job.config.to_dict()}, train_job,
                        (train, files), units, lambda r: self.trained(job, r, todo, meta))
            return units + sum(len(_keys(s)) for s in todo)
        if todo:
            done = set(self.kept_rows(job, meta))
            self.outcome.skipped += 1 + sum(set(_keys(s)) <= done for s in todo)
            todo = [s for s in todo if not set(_keys(s)) <= done]
            if todo:
                load_run(job.run_dir)  # a damaged model is an error here, not in a worker
                self.submit_shards(job, todo, meta, (job.run_dir / MODEL).read_bytes())
        else:
            self.outcome.skipped += 1
        return sum(len(_keys(s)) for s in todo)

    def kept_rows(self, job: RunJob, meta: dict[str, Any]) -> dict[Key, dict[str, Any]]:
        """Rows of ``job``'s saved results a sweep with ``meta`` keeps, by (method, k)."""
        rows = resumable_rows(job.run_dir, meta, row_settings(job.sweep, meta["sweep"]))
        return {(r["method"], r["sparsity_pct"]): r for r in rows}

    def submit(self, label: str, config: dict[str, Any], fn: Callable[..., Any],
               args: tuple[Any, ...], units: int,
               then: Callable[[dict[str, Any]], None]) -> None:
        key = job_id(config)
        self.after[key] = then
        self.executor.submit(Task(key, label, fn, args, units))

    def submit_shards(self, job: RunJob, todo: list[SweepConfig], meta: dict[str, Any],
                      model_file: bytes) -> None:
        _, files = self.dataset(job.config.dataset)
        model = self.executor.share(model_file)  # sent once for all of the model's shards
        spec = DATASETS[job.config.dataset]
        for shard in todo:
            names = ",".join(shard.methods)
            ks = ",".join(f"{k:g}" for _, k in _keys(shard))
            sweep = SweepJob(job.config, shard, spec, self.settings.data_dir,
                             self.settings.device)
            config = {"train": job.config.to_dict(), "methods": list(shard.methods),
                      "sparsities": list(shard.sparsities),
                      "calibration_size": shard.calibration_size,
                      "bn_recalibrate": shard.bn_recalibrate,
                      "layers": list(shard.layers) if shard.layers else None}
            self.submit(f"sweep {job.label} {names} k={ks}", config, sweep_job,
                        (sweep, model, files), len(_keys(shard)),
                        lambda r, s=shard: self.swept(job, s, r, meta))

    def trained(self, job: RunJob, result: dict[str, Any], todo: list[SweepConfig],
                meta: dict[str, Any]) -> None:
        write_trained(job.run_dir, job.config, result["model"], result["history"])
        shutil.rmtree(job.run_dir / SCRATCH, ignore_errors=True)
        if todo:
            self.submit_shards(job, todo, meta, result["model"])

    def swept(self, job: RunJob, shard: SweepConfig, result: dict[str, Any],
              meta: dict[str, Any]) -> None:
        history = json.loads((job.run_dir / HISTORY).read_text())
        full = {**result["meta"], **meta, "history": history}
        rows = self.kept_rows(job, full)
        rows.update({(r["method"], r["sparsity_pct"]): r for r in result["rows"]})
        rank = {key: i for i, key in enumerate(_keys(job.sweep))}  # sweep order, others first
        ordered = sorted(rows.values(),
                         key=lambda r: rank.get((r["method"], r["sparsity_pct"]), -1))
        write_results(job.run_dir, result["dense"], ordered, full)

    def record(self, task: Task, result: dict[str, Any]) -> None:
        """Note the finished job in the grid's job log (``jobs.json``)."""
        self.outcome.ran.append(task.label)
        if self.log_file is None:
            return
        self.log[task.key] = {"job": task.label, "executor": self.executor.name,
                              **{k: result[k] for k in ("seconds", "host", "pid")},
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write(self.log_file, json.dumps(self.log, indent=1) + "\n")

    def check(self) -> None:
        """Load every dataset and check every job (an error here has written nothing)."""
        for job in self.jobs:
            self.dataset(job.config.dataset)
            if job.sweep is not None:
                self.sweep_meta(job)

    def run(self, progress: Progress | None = None) -> GridOutcome:
        """Run every job not done yet; ``progress`` as in ``Progress``."""
        self.check()
        self.progress = progress or self.progress
        start = time.perf_counter()
        with ExitStack() as locks:
            for job in self.jobs:  # another process on one of them: RunFolderBusy, at once
                locks.enter_context(run_lock(job.run_dir))
            self.log = _read_log(self.log_file)
            self.progress("total", sum(self.plan(job) for job in self.jobs))
            while self.executor.pending:
                task, result = self.executor.next_done(lambda n: self.progress("done", n))
                self.after.pop(task.key)(result)
                self.record(task, result)
        self.outcome.seconds = time.perf_counter() - start
        return self.outcome


def _read_log(path: Path | None) -> dict[str, Any]:
    try:
        log = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        return {}  # only a record of earlier jobs: an unreadable one is started afresh
    return log if isinstance(log, dict) else {}


def run_grid(jobs: list[RunJob], executor: Executor, settings: GridSettings | None = None,
             progress: Progress | None = None, log_file: Path | None = None) -> GridOutcome:
    """Train and sweep every job on ``executor``, writing each run folder as jobs finish;
    jobs whose results are written already are skipped (``GridRun``)."""
    return GridRun(jobs, executor, settings, log_file).run(progress)
