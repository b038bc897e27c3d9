"""Executors: where a study's jobs run, in this process, in worker processes or on Ray.

A job is a ``Task``: a module-level function, its arguments and a number of progress units.
The driver submits tasks (more may follow as earlier ones finish) and takes finished ones back
one at a time with ``next_done``; it alone writes files. A task's function is called as
``fn(*args, report=report)``, where ``report(n)`` counts ``n`` of the task's units done (the
progress bar); what it returns goes back to the driver.

- ``InlineExecutor``: one task after the other in this process (``--workers 1``);
- ``LocalExecutor``: spawned worker processes (``concurrent.futures.ProcessPoolExecutor``);
  a pool whose worker died (killed, out of memory) is replaced and its unfinished tasks run
  again, up to ``max_retries`` times each;
- ``RayExecutor`` (``prunelab.study.rayexec``): tasks on a Ray cluster, retried by Ray when
  their worker or node dies.

An exception raised by a task's function is not retried (it would fail again): ``next_done``
raises ``JobFailed`` naming the task.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["EXECUTORS", "Executor", "InlineExecutor", "JobFailed", "LocalExecutor", "Task",
           "default_workers", "failure", "make_executor"]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
"""Called by the driver with a number of progress units done."""


class JobFailed(RuntimeError):
    """A job failed; the message names it and the original error on one line."""


@dataclass(frozen=True)
class Task:
    """One job for an executor."""

    key: str
    """Unique among the tasks of one executor (the job's configuration hash)."""
    label: str
    """What the job is, for messages: ``seed 1``, ``train mnist/mlp seed 0``."""
    fn: Callable[..., Any]
    """A module-level function (workers import it by name)."""
    args: tuple[Any, ...]
    """Its positional arguments (picklable; Ray resolves object references among them)."""
    units: int = 1
    """Progress units the job counts for."""


def failure(task: Task, e: BaseException) -> JobFailed:
    """``e`` as a one-line ``JobFailed`` naming ``task``."""
    text = str(e).strip().splitlines()
    return JobFailed(f"{task.label}: {type(e).__name__}: {text[0] if text else ''}")


def default_workers(n_jobs: int) -> int:
    """One worker per core, never more than there are jobs."""
    return max(1, min(os.cpu_count() or 1, n_jobs))


class Executor(ABC):
    """Runs tasks and hands them back, finished, to the driver."""

    name = ""
    remote = False
    """Whether workers may be on other machines (then data travel with the jobs)."""

    def __init__(self) -> None:
        self._reported: dict[str, int] = {}
        self._tasks: dict[str, Task] = {}

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet handed back."""
        return len(self._tasks)

    def share(self, value: Any) -> Any:
        """A handle to pass as a task argument in place of ``value`` (sent once, if possible)."""
        return value

    def submit(self, task: Task) -> None:
        if task.key in self._tasks:
            raise ValueError(f"job {task.key} ({task.label}) submitted twice")
        self._tasks[task.key] = task
        self._reported[task.key] = 0
        self._start(task)

    @abstractmethod
    def _start(self, task: Task) -> None: ...

    @abstractmethod
    def _wait(self, progress: Progress) -> tuple[Task, Any]:
        """Block until a task is finished; return it and its result (or raise JobFailed)."""

    def next_done(self, progress: Progress | None = None) -> tuple[Task, Any]:
        """The next finished task and its result; ``progress(n)`` as units get done."""
        if not self._tasks:
            raise ValueError("no task is pending")
        progress = progress or (lambda n: None)
        task, result = self._wait(progress)
        self._advance(task.key, task.units, progress)  # whatever its reports left out
        self._forget(task)
        return task, result

    def _forget(self, task: Task) -> None:
        del self._tasks[task.key], self._reported[task.key]

    def _failed(self, task: Task, cause: BaseException | str) -> JobFailed:
        """The ``JobFailed`` to raise for ``task`` (no longer pending) and its ``cause``."""
        self._forget(task)
        return JobFailed(f"{task.label}: {cause}") if isinstance(cause, str) \
            else failure(task, cause)

    def _advance(self, key: str, n: int, progress: Progress) -> None:
        """Count ``n`` units of ``key``, never more than the task has (a retried task reports
        its units again)."""
        if key not in self._tasks:
            return  # a message of a task already handed back
        n = max(0, min(n, self._tasks[key].units - self._reported[key]))
        if n:
            self._reported[key] += n
            progress(n)

    def close(self) -> None:  # noqa: B027 (nothing to stop in this process)
        """Stop every worker (unfinished tasks are dropped)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Runs each task in this process when the driver asks for the next one."""

    name = "local"
    workers = 1

    def _start(self, task: Task) -> None:
        pass

    def _wait(self, progress: Progress) -> tuple[Task, Any]:
        task = next(iter(self._tasks.values()))
        try:
            return task, task.fn(*task.args,
                                 report=lambda n: self._advance(task.key, n, progress))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise self._failed(task, e) from e


# Set in each worker process by ``_init_worker``: where progress messages go.
_worker_queue: Any = None


def _init_worker(threads: int, progress_queue: Any) -> None:
    global _worker_queue
    torch.set_num_threads(threads)
    _worker_queue = progress_queue


def _call(fn: Callable[..., Any], key: str, args: tuple[Any, ...]) -> Any:
    """A task in a worker process: progress goes to the driver through the queue."""
    return fn(*args, report=lambda n: _worker_queue.put((key, n)))


class LocalExecutor(Executor):
    """``workers`` spawned processes on this machine, each with ``cores // workers`` threads.

    Spawned, not forked: a forked process that inherits torch's thread pools can hang.
    """

    name = "local"

    def __init__(self, workers: int, max_retries: int = 3) -> None:
        super().__init__()
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers, self.max_retries = workers, max_retries
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._ctx = mp.get_context("spawn")
        self._attempts: dict[str, int] = {}
        self._futures: dict[Future, Task] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._queue: Any = None

    def _new_pool(self) -> ProcessPoolExecutor:
        # A fresh queue with each pool: a worker killed while writing may leave its lock taken.
        self._queue = self._ctx.Queue()
        return ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=_init_worker,
                                   initargs=(self.threads, self._queue))

    def _start(self, task: Task) -> None:
        self._attempts[task.key] = 1
        self._launch(task)

    def _launch(self, task: Task) -> None:
        if self._pool is None:
            self._pool = self._new_pool()
        self._futures[self._pool.submit(_call, task.fn, task.key, task.args)] = task

    def _drain(self, progress: Progress) -> None:
        while True:
            try:
                key, n = self._queue.get_nowait()
            except (queue_mod.Empty, OSError, EOFError):
                return
            self._advance(key, n, progress)

    def _wait(self, progress: Progress) -> tuple[Task, Any]:
        while True:
            self._drain(progress)
            for future, task in list(self._futures.items()):
                if future.done() and not isinstance(future.exception(), BrokenProcessPool):
                    del self._futures[future]
                    self._drain(progress)  # its last messages
                    if future.exception() is not None:
                        raise self._failed(task, future.exception())
                    return task, future.result()
            if any(f.done() for f in self._futures):  # only broken ones: a worker died
                self._restart()
                continue
            wait(list(self._futures), timeout=0.2, return_when=FIRST_COMPLETED)

    def _restart(self) -> None:
        """A worker died and took the pool down: a new pool runs the unfinished tasks again."""
        tasks = list(self._futures.values())
        self._futures.clear()
        self._stop_pool()
        for task in tasks:  # which one killed its worker is unknown: each counts a try
            self._attempts[task.key] += 1
        worn = [t for t in tasks if self._attempts[t.key] > self.max_retries + 1]
        log.warning("a worker process died; running %d job(s) again", len(tasks) - len(worn))
        for task in tasks:
            if task not in worn:
                self._launch(task)
        for task in worn[1:]:
            self._forget(task)
        if worn:
            raise self._failed(worn[0], f"its worker process died {self.max_retries + 1} times")

    def _stop_pool(self) -> None:
        if self._pool is None:
            return
        # concurrent.futures cannot kill running tasks before Python 3.14
        # (terminate_workers); a failed study must not wait for its other jobs.
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def close(self) -> None:
        self._futures.clear()
        self._stop_pool()


def _ray_executor(workers: int | None, address: str | None) -> Executor:
    from prunelab.study.rayexec import RayExecutor

    return RayExecutor(address, workers)


EXECUTORS = ("local", "ray")


def make_executor(name: str = "local", workers: int | None = None, n_jobs: int = 1,
                  address: str | None = None) -> Executor:
    """The executor ``name`` with ``workers`` workers (default: one per core, at most one per
    job); ``address``: the Ray cluster to join (``ray`` only; default: start one here)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if name == "ray":
        return _ray_executor(workers, address)
    if address is not None:
        raise ValueError("--ray-address needs --executor ray")
    workers = default_workers(n_jobs) if workers is None else workers
    return InlineExecutor() if workers == 1 else LocalExecutor(workers)
