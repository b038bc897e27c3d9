"""The ``prunelab`` command line in real subprocesses, on tiny generated data, to be killed.

The child registers the tiny dataset (its checksums travel in an environment variable, as the
registry of a spawned worker does) and can slow every evaluation down, so a test can kill it at
a known stage: after an epoch's checkpoint, or after some sweep rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from prunelab.data import DatasetSpec

_CHILD = """
import json, os, sys, time
from prunelab import data
from prunelab.data import DataFile, DatasetSpec
spec = json.loads(os.environ["PRUNELAB_TEST_SPEC"])
files = [DataFile(**f) for f in spec.pop("files")]
data.DATASETS[spec["name"]] = DatasetSpec(spec["name"], tuple(spec["mirrors"]), *files)
if os.environ.get("PRUNELAB_TEST_THREADS"):
    import torch
    torch.set_num_threads(int(os.environ["PRUNELAB_TEST_THREADS"]))
delay = float(os.environ.get("PRUNELAB_TEST_DELAY", "0"))
if delay:
    import importlib
    sweep_mod = importlib.import_module("prunelab.study.sweep")
    train_mod = importlib.import_module("prunelab.train")  # prunelab.train is the function
    def slow(f):
        def g(*args, **kwargs):
            time.sleep(delay)
            return f(*args, **kwargs)
        return g
    train_mod.evaluate = slow(train_mod.evaluate)
    sweep_mod.evaluate = slow(sweep_mod.evaluate)
from prunelab.cli import main
sys.argv = ["prunelab", *sys.argv[1:]]
main()
"""


def _env(spec: DatasetSpec, delay: float, threads: int | None) -> dict[str, str]:
    raw = asdict(spec)
    raw["files"] = [asdict(f) for f in spec.files()]
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        raw.pop(key)
    env = {**os.environ, "PRUNELAB_TEST_SPEC": json.dumps(raw),
           "PRUNELAB_TEST_DELAY": str(delay)}
    env.pop("PRUNELAB_TEST_THREADS", None)
    if threads is not None:
        env["PRUNELAB_TEST_THREADS"] = str(threads)
    return env


def start(spec: DatasetSpec, *args, delay: float = 0.0,
          threads: int | None = 1) -> subprocess.Popen:
    """``prunelab ARGS`` in a child process; every evaluation sleeps ``delay`` seconds first."""
    return subprocess.Popen([sys.executable, "-c", _CHILD, *map(str, args)],
                            env=_env(spec, delay, threads), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(spec: DatasetSpec, *args, threads: int | None = 1,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """``prunelab ARGS`` in a child process, to the end."""
    return subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)],
                          env=_env(spec, 0.0, threads), capture_output=True, text=True,
                          timeout=timeout)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (fails if it ends first or never holds)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"ended before it could be killed: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("never reached the point to kill it at")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def rows_in(path: Path) -> int:
    """Rows in a results.json being rewritten by another process (0 while there is none)."""
    try:
        return len(json.loads(path.read_text())["rows"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0
