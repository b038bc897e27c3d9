"""A grid of jobs on every executor, a real local Ray cluster included: the same numbers, a
second run that skips everything, workers killed mid-study and retried with nothing lost."""

import json
import logging
import os
import time
from functools import partial
from pathlib import Path

import pytest

from prunelab.models import MLPConfig
from prunelab.study import driver, jobs
from prunelab.study.driver import GridSettings, run_grid, seed_jobs, shards
from prunelab.study.executors import InlineExecutor, LocalExecutor, make_executor
from prunelab.study.rayexec import RayExecutor, check_reachable
from prunelab.study.runfolder import RESULTS_JSON, RunConfig
from prunelab.study.sweep import SweepConfig
from prunelab.train import TrainConfig

from ..conftest import registered_tiny_data

ray = pytest.importorskip("ray")

CONFIG = RunConfig("fashion-mnist", MLPConfig(hidden=(32, 16)),
                   TrainConfig(epochs=1, batch_size=64))
SWEEP = SweepConfig(("weight", "unit"), (0.0, 0.5, 0.9))
MEASURED = {"seconds", "peak_memory_mb"}  # wall time and memory: the only things that vary


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny fashion-mnist registered for this module (workers get its spec with each job)."""
    root = tmp_path_factory.mktemp("grid")
    with registered_tiny_data(root):
        yield root


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray cluster of 2 CPUs for the module: starting one takes seconds."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    yield
    if started:
        ray.shutdown()


def _run(tiny, executor, name: str):
    out = tiny / name
    outcome = run_grid(seed_jobs(out, CONFIG, (0, 1), SWEEP), executor,
                       GridSettings(tiny / "data", shard_size=2), log_file=out / "jobs.json")
    return out, outcome


def _numbers(out: Path) -> dict:
    """Every seed folder's model bits and results, measured times and memory aside."""
    found = {}
    for seed in ("seed0", "seed1"):
        results = json.loads((out / seed / RESULTS_JSON).read_text())
        rows = [{k: v for k, v in r.items() if k not in MEASURED} for r in results["rows"]]
        found[seed] = ((out / seed / "model.safetensors").read_bytes(), results["dense"], rows)
    return found


@pytest.fixture(scope="module")
def reference(tiny):
    """The grid run in this process, one job after the other."""
    out, outcome = _run(tiny, InlineExecutor(), "inline")
    assert len(outcome.ran) == 2 + 2 * 4 and outcome.skipped == 0  # train + 4 shards per seed
    numbers = _numbers(out)
    keys = [(r["method"], r["sparsity_pct"]) for r in numbers["seed0"][2]]
    assert keys == [(m, k) for m in ("weight", "unit") for k in (0, 50, 90)]
    return numbers


def die_first_time(marker: Path, job, *args, report):
    """A job whose worker process is killed the first time it runs (then the real job)."""
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return job(*args, report=report)


def test_shards_split_by_method_then_sparsities():
    parts = shards(SweepConfig(("weight", "wanda-2:4"), (0.0, 0.5, 0.9)), 2)
    assert [(s.methods, s.sparsities) for s in parts] == [
        (("weight",), (0.0, 0.5)), (("weight",), (0.9,)), (("wanda-2:4",), (0.5,))]  # N:M: one k
    assert len(shards(SWEEP)) == 2


def test_ray_gives_the_same_numbers_and_a_second_run_skips_everything(tiny, ray_session,
                                                                      reference):
    with RayExecutor() as executor:  # the module's Ray session, left running
        out, outcome = _run(tiny, executor, "ray")
        assert len(outcome.ran) == 10 and _numbers(out) == reference
        log = json.loads((out / "jobs.json").read_text())
        assert len(log) == 10 and {e["executor"] for e in log.values()} == {"ray"}
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        _, again = _run(tiny, executor, "ray")
        assert again.ran == [] and again.skipped == 10
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert ray.is_initialized()


def test_a_ray_worker_killed_in_training_is_retried(tiny, ray_session, reference, monkeypatch):
    marker = tiny / "ray-train-died"
    monkeypatch.setattr(driver, "train_job", partial(die_first_time, marker, jobs.train_job))
    with RayExecutor() as executor:
        out, outcome = _run(tiny, executor, "ray-killed")
    assert marker.exists() and len(outcome.ran) == 10
    assert _numbers(out) == reference  # nothing lost, nothing twice


def test_a_local_worker_killed_in_a_sweep_is_retried(tiny, reference, monkeypatch):
    marker = tiny / "local-sweep-died"
    monkeypatch.setattr(driver, "sweep_job", partial(die_first_time, marker, jobs.sweep_job))
    with LocalExecutor(1) as executor:  # one spawned worker: cheaper on 2 busy cores
        out, outcome = _run(tiny, executor, "local-killed")
    assert marker.exists() and len(outcome.ran) == 10
    assert _numbers(out) == reference
    assert not (out / "seed0" / driver.SCRATCH).exists()  # training's scratch is cleaned up


def test_an_interrupted_grid_resumes_with_only_the_missing_jobs(tiny, reference):
    out, _ = _run(tiny, InlineExecutor(), "resumed")
    results = json.loads((out / "seed1" / RESULTS_JSON).read_text())
    results["rows"] = [r for r in results["rows"] if r["method"] == "weight"]  # unit not done
    (out / "seed1" / RESULTS_JSON).write_text(json.dumps(results))
    (out / "seed0" / "config.json").unlink()  # seed 0's model never finished
    _, outcome = _run(tiny, InlineExecutor(), "resumed")
    assert sorted(outcome.ran) == sorted(
        ["train seed 0", "sweep seed 0 weight k=0,50", "sweep seed 0 weight k=90",
         "sweep seed 0 unit k=0,50", "sweep seed 0 unit k=90",
         "sweep seed 1 unit k=0,50", "sweep seed 1 unit k=90"])
    assert _numbers(out) == reference


def test_the_address_check_tells_a_ray_cluster_from_nothing(ray_session):
    check_reachable(ray.get_runtime_context().gcs_address)  # the live cluster answers
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="no Ray cluster answers at 127.0.0.1:9"):
        make_executor("ray", address="127.0.0.1:9")
    assert time.perf_counter() - start < 5
    with pytest.raises(ValueError, match="host:port"):
        check_reachable("ray://:0")
