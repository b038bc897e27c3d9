"""Grids of jobs on the command line: ``prunelab study STUDY.toml`` and the executor options
that ``run --seeds`` and ``sweep`` share with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click
from tqdm import tqdm

from prunelab.cli.studyfile import load_study
from prunelab.files import atomic_write
from prunelab.report.grid import write_study_reports
from prunelab.study.driver import JOBS_JSON, GridOutcome, GridRun, GridSettings, RunJob
from prunelab.study.executors import EXECUTORS, Executor, make_executor
from prunelab.study.grid import STUDY_FILE, study_run
from prunelab.study.lock import run_lock

__all__ = ["executor_options", "run_jobs", "study"]


def executor_options(f: Callable) -> Callable:
    """``--executor``, ``--workers`` and ``--ray-address``."""
    f = click.option("--ray-address", default=None, metavar="ADDR",
                     help="With --executor ray: the cluster to join (host:port of its head, "
                          "or auto) [default: start Ray on this machine].")(f)
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Parallel workers on this machine [default: one per core, at most "
                          "one per model]; 1 runs the jobs in this process.")(f)
    return click.option("--executor", type=click.Choice(EXECUTORS), default="local",
                        show_default=True,
                        help="Where jobs run: worker processes here, or Ray tasks (needs "
                             "pip install 'prunelab[ray]').")(f)


def _summary(what: str, outcome: GridOutcome, executor: Executor) -> str:
    """``2 seeds with 2 worker(s) (local): 6 job(s) in 3.1 s, 0 already done``."""
    return (f"{what} with {executor.workers} worker(s) ({executor.name}): {len(outcome.ran)} "
            f"job(s) in {outcome.seconds:.1f} s, {outcome.skipped} already done")


def _with_bar(desc: str, run: Callable[[Callable[[str, int], None]], GridOutcome]
              ) -> GridOutcome:
    """``run(progress)`` behind one progress bar (units: training steps and sweep rows)."""
    with tqdm(total=0, desc=desc, unit="step", dynamic_ncols=True) as bar:
        def progress(kind: str, n: int) -> None:
            if kind == "total":
                bar.total += n
                bar.refresh()
            else:
                bar.update(n)

        return run(progress)


def run_jobs(jobs: list[RunJob], executor: str, workers: int | None, address: str | None,
             folder: Path, settings: GridSettings,
             then: Callable[[], None] = lambda: None) -> GridOutcome:
    """Run ``jobs`` with the chosen executor behind one progress bar, then ``then()``, with
    ``folder`` locked (its ``jobs.json`` records the jobs that ran); nothing is written before
    the executor has started and every job has been checked."""
    with make_executor(executor, workers, len(jobs), address) as ex:
        grid = GridRun(jobs, ex, settings, folder / JOBS_JSON)
        grid.check()
        with run_lock(folder):  # a second process on this folder fails at once
            outcome = _with_bar(f"{len(jobs)} seeds", grid.run)
            click.echo(_summary(f"{len(jobs)} seeds", outcome, ex))
            then()
    return outcome


@click.command()
@click.argument("study_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Study folder [default: runs/<name of the study file>].")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Sparsities per sweep job [default: the study file's, else all of a "
                   "method's in one job].")
@executor_options
@click.option("--device", default="cpu", show_default=True,
              help="auto (CUDA when available), cpu or cuda[:N], in every worker.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder holding fashion-mnist/ and mnist/ (else PRUNELAB_DATA, the cache, "
                   "a download).")
def study(study_file, out, shard_size, executor, workers, ray_address, device,
          data_dir) -> None:
    """Train and sweep a grid of datasets x models x seeds described by STUDY_FILE (TOML);
    jobs already done are skipped. See docs/scale-out.md."""
    grid = load_study(study_file)
    if shard_size is not None:
        grid = replace(grid, shard_size=shard_size)
    out = out or Path("runs") / Path(study_file).stem
    n_models = len(grid.datasets) * len(grid.models) * len(grid.seeds)
    with make_executor(executor, workers, n_models, ray_address) as ex:
        jobs = study_run(grid, out, ex, data_dir, device)
        jobs.check()
        with run_lock(out):
            atomic_write(out / STUDY_FILE, Path(study_file).read_bytes())
            outcome = _with_bar(f"{n_models} models", jobs.run)
            click.echo(_summary(f"{n_models} models", outcome, ex))
            report = out / "report.md"
            if outcome.ran or not report.is_file():  # else they read the same results
                report = write_study_reports(grid, out)
            click.echo(f"report: {report}")
