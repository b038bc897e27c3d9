"""The local executors: results, progress, a failing job, a worker that dies (retried)."""

import os
from functools import partial
from pathlib import Path

import pytest

from prunelab.study.executors import (
    InlineExecutor,
    JobFailed,
    LocalExecutor,
    Task,
    make_executor,
)


def square(x: int, *, report) -> int:
    report(1)
    report(5)  # more than the task's units: counted up to them only
    return x * x


def fails(x: int, *, report) -> int:
    raise ValueError(f"bad input {x}\nsecond line")


def dies_once(marker: Path, x: int, *, report) -> int:
    """Kill this worker process the first time (as SIGKILL or the OOM killer would)."""
    if not marker.exists():
        marker.write_text("died")
        os._exit(1)
    return x + 100


def dies_always(x: int, *, report) -> int:
    os._exit(1)


def _all(executor, tasks):
    for task in tasks:
        executor.submit(task)
    units, done = [], {}
    while executor.pending:
        task, result = executor.next_done(units.append)
        done[task.key] = result
    return done, sum(units)


@pytest.fixture(scope="module")
def pool():
    with LocalExecutor(2, max_retries=1) as executor:
        yield executor


def test_inline_and_local_give_the_same_results(pool):
    tasks = [Task(f"k{i}", f"job {i}", square, (i,), units=2) for i in range(4)]
    inline, units = _all(InlineExecutor(), tasks)
    assert inline == {f"k{i}": i * i for i in range(4)} and units == 8
    assert _all(pool, tasks) == (inline, 8)


def test_a_failing_job_is_one_line_naming_it(pool):
    for executor in (InlineExecutor(), pool):
        executor.submit(Task("bad", "sweep mnist/mlp seed 3", fails, (7,)))
        with pytest.raises(JobFailed, match=r"^sweep mnist/mlp seed 3: ValueError: bad input 7$"):
            executor.next_done()
    with pytest.raises(ValueError, match="submitted twice"):
        pool.submit(Task("a", "a", square, (1,)))
        pool.submit(Task("a", "a", square, (1,)))
    assert pool.next_done()[1] == 1


def test_a_killed_worker_is_replaced_and_its_job_run_again(pool, tmp_path):
    tasks = [Task("dies", "job that dies", partial(dies_once, tmp_path / "marker"), (1,))]
    tasks += [Task(f"k{i}", f"job {i}", square, (i,)) for i in range(3)]
    done, units = _all(pool, tasks)
    assert (tmp_path / "marker").exists()  # it did die once
    assert done == {"dies": 101, "k0": 0, "k1": 1, "k2": 4} and units == 4


def test_a_job_that_always_kills_its_worker_fails_after_its_retries(pool):
    pool.submit(Task("dies", "train mnist/mlp seed 0", dies_always, (1,)))
    with pytest.raises(JobFailed, match="seed 0: its worker process died 2 times"):
        pool.next_done()
    pool.submit(Task("after", "after", square, (3,)))  # the executor still works
    assert pool.next_done()[1] == 9


def test_make_executor_checks_its_arguments():
    assert isinstance(make_executor("local", 1), InlineExecutor)
    with make_executor("local", None, n_jobs=1) as one:
        assert isinstance(one, InlineExecutor)
    for kwargs, needle in (({"name": "dask"}, "unknown executor 'dask'"),
                           ({"workers": 0}, "workers must be a positive integer"),
                           ({"address": "h:1"}, "--ray-address needs --executor ray")):
        with pytest.raises(ValueError, match=needle):
            make_executor(**kwargs)
