"""Train and sweep several seeds, in parallel worker processes.

Each seed is an ordinary single-seed run folder ``RUN_DIR/seed<k>/``. Workers are spawned (not
forked: a forked process that inherits torch's thread pools can hang) and each gets
``cores // workers`` torch threads. Workers report progress through a queue as
``(kind, amount)`` messages: ``("total", n)`` once they know how much work they have, then
``("train", n)`` / ``("sweep", 1)`` as they go. The caller owns the display.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from prunelab.data import DATASETS, DatasetSpec, load_dataset
from prunelab.study.multiseed import check_seeds, seed_dir
from prunelab.study.runfolder import RunConfig, has_trained_model, load_run
from prunelab.study.sweep import SweepConfig, ensure_trained, resolve_device, run_sweep
from prunelab.train import StepInfo

__all__ = ["SeedFailed", "SeedJob", "default_workers", "run_jobs", "seed_jobs"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]
_STEP_BATCH = 25  # training steps per progress message: keeps the queue quiet


class SeedFailed(RuntimeError):
    """A seed's worker failed; the message names the seed and the original error."""


@dataclass(frozen=True)
class SeedJob:
    """One seed's work."""

    run_dir: Path
    """The seed's single-seed run folder."""
    config: RunConfig | None
    """Train with this (reusing a model trained the same way); None: use the saved model."""
    sweep: SweepConfig | None
    """Sweep with this afterwards; None: train only."""
    data_dir: Path | None = None
    """Where the dataset files are (else PRUNELAB_DATA, the cache, a download)."""
    device: str = "cpu"
    """auto, cpu or cuda[:N]."""

    @property
    def seed(self) -> int:
        return int(self.run_dir.name.removeprefix("seed"))


def seed_jobs(run_dir: Path, config: RunConfig, seeds: tuple[int, ...],
              sweep: SweepConfig | None, data_dir: Path | None, device: str) -> list[SeedJob]:
    """One job per seed: ``config`` with that seed, into ``run_dir/seed<k>``."""
    return [SeedJob(seed_dir(run_dir, s), replace(config, train=replace(config.train, seed=s)),
                    sweep, data_dir, device) for s in check_seeds(seeds)]


def default_workers(n_jobs: int) -> int:
    """One worker per core, never more than there are jobs."""
    return max(1, min(os.cpu_count() or 1, n_jobs))


def _do_job(job: SeedJob, report: Progress) -> None:
    dataset = job.config.dataset if job.config else None
    if dataset is None:
        dataset = load_run(job.run_dir).config.dataset
    data = load_dataset(dataset, job.data_dir)
    device = resolve_device(job.device)
    steps = 0
    if job.config is not None and not has_trained_model(job.run_dir, job.config):
        steps = job.config.train.epochs * -(-len(data.train_x) // job.config.train.batch_size)
    rows = len(job.sweep.methods) * len(job.sweep.sparsities) if job.sweep else 0
    report("total", steps + rows)
    if job.config is not None:
        pending = [0]

        def on_step(info: StepInfo) -> None:
            pending[0] += 1
            if pending[0] == _STEP_BATCH or info.step == info.steps_per_epoch:
                report("train", pending[0])
                pending[0] = 0

        ensure_trained(job.run_dir, job.config, data, device, on_step)
    if job.sweep is not None:
        run_sweep(job.run_dir, job.sweep, job.data_dir, device, lambda row: report("sweep", 1),
                  data=data)


def _worker_main(job: SeedJob, q: mp.Queue, threads: int,
                 datasets: dict[str, DatasetSpec]) -> None:
    """Entry point of a worker process: one seed, reported as (kind, seed, payload)."""
    torch.set_num_threads(threads)
    # A spawned worker imports prunelab afresh: give it the parent's dataset registry, so
    # datasets registered at run time (and their checksums) are the same in every process.
    DATASETS.clear()
    DATASETS.update(datasets)
    try:
        _do_job(job, lambda kind, n: q.put((kind, job.seed, n)))
    except BaseException as e:  # the parent shows it; a traceback here would go nowhere useful
        q.put(("error", job.seed, str(_failed(job, e))))
        return
    q.put(("done", job.seed, None))


def _failed(job: SeedJob, e: BaseException) -> SeedFailed:
    text = str(e).strip().splitlines()
    return SeedFailed(f"seed {job.seed}: {type(e).__name__}: {text[0] if text else ''}")


class _Workers:
    """At most ``workers`` spawned processes, one per job; progress through one queue."""

    def __init__(self, workers: int, progress: Progress) -> None:
        self.ctx = mp.get_context("spawn")
        self.queue = self.ctx.Queue()
        self.workers, self.progress = workers, progress
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.running: dict[int, mp.process.BaseProcess] = {}

    def start(self, job: SeedJob) -> None:
        p = self.ctx.Process(target=_worker_main, daemon=True, name=f"prunelab-seed{job.seed}",
                             args=(job, self.queue, self.threads, dict(DATASETS)))
        p.start()
        self.running[job.seed] = p

    def pump(self, timeout: float) -> None:
        """Handle queued messages; raise ``SeedFailed`` for a failed or vanished worker."""
        self._drain(timeout)
        dead = [s for s, p in self.running.items() if p.exitcode is not None]
        if dead:
            self._drain(0)  # a worker's last messages may arrive just after it exits
        for seed in dead:
            if seed in self.running:
                code = self.running[seed].exitcode
                raise SeedFailed(f"seed {seed}: worker process died (exit code {code})")

    def _drain(self, timeout: float) -> None:
        while True:
            try:
                kind, seed, payload = self.queue.get(timeout=timeout) if timeout else \
                    self.queue.get_nowait()
            except queue_mod.Empty:
                return
            timeout = 0
            if kind == "error":
                raise SeedFailed(payload)
            if kind == "done":
                self.running.pop(seed).join()
            else:
                self.progress(kind, payload)

    def stop(self) -> None:
        for p in self.running.values():
            p.terminate()
        for p in self.running.values():
            p.join()
        self.running.clear()


def _run_parallel(jobs: list[SeedJob], workers: int, progress: Progress) -> None:
    pool = _Workers(workers, progress)
    todo = list(jobs)
    try:
        while todo or pool.running:
            while todo and len(pool.running) < workers:
                pool.start(todo.pop(0))
            pool.pump(timeout=0.2)
    finally:
        pool.stop()  # on a failure or Ctrl-C the other seeds stop at once


def run_jobs(jobs: list[SeedJob], workers: int | None = None,
             progress: Progress | None = None) -> None:
    """Run every job, ``workers`` at a time (default: one per core); 1 runs in this process."""
    if not jobs:
        raise ValueError("no seeds to run")
    workers = default_workers(len(jobs)) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    progress = progress or (lambda kind, n: None)
    workers = min(workers, len(jobs))
    log.info("running %d seed(s) with %d worker(s)", len(jobs), workers)
    if workers > 1:
        _run_parallel(jobs, workers, progress)
        return
    for job in jobs:
        try:
            _do_job(job, progress)
        except (KeyboardInterrupt, SeedFailed):
            raise
        except Exception as e:
            raise _failed(job, e) from e
