"""The Ray executor: a study's jobs as Ray tasks, on this machine or on a cluster.

Ray is an optional extra (``pip install 'prunelab[ray]'``). Each job is a task asking for one
CPU (and one GPU when the jobs run on ``cuda``); a task whose worker process or node dies is
run again by Ray, up to ``max_retries`` times. Large arguments the jobs share (a trained model, a
dataset's files) go into Ray's object store once (``share``). Results travel back to the driver,
so workers need no shared file system.

Progress is counted when a job finishes (a worker on another machine has no queue to the
driver's progress bar).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import torch

from prunelab.study.executors import Executor, Progress, Task

__all__ = ["CONNECT_TIMEOUT", "RayExecutor", "check_reachable", "import_ray"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a Ray cluster's address to answer before giving up."""
_DEFAULT_PORT = 6379  # the port `ray start --head` listens on
_SETTINGS = 0x4  # HTTP/2 frame type
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, _SETTINGS, 0, 0, 0, 0, 0])
"""HTTP/2's client connection preface and an empty SETTINGS frame."""


def import_ray() -> Any:
    """The ``ray`` module, or ImportError saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ImportError("the ray executor needs Ray, which is not installed: "
                          "pip install 'prunelab[ray]'") from None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """ConnectionError unless a Ray cluster answers at ``address`` (``host[:port]`` or
    ``ray://host:port``) within ``timeout`` seconds; ``auto`` is left to Ray.

    Ray itself retries for tens of seconds; this asks once. Ray's head speaks gRPC, so it
    answers HTTP/2's connection preface with a SETTINGS frame; something else listening there
    (or a proxy that accepts any connection) does not.
    """
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port or _DEFAULT_PORT
    except ValueError:
        host = None
    if not host:
        raise ValueError(f"--ray-address takes host:port, ray://host:port or auto, "
                         f"got {address!r}")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_PREFACE)
            head = sock.recv(9)
    except OSError as e:
        reason = e.strerror or f"no answer within {timeout:g} s"
        raise ConnectionError(f"no Ray cluster answers at {address} ({reason}); start one "
                              f"with `ray start --head` or check the address") from None
    if len(head) < 4 or head[3] != _SETTINGS:
        raise ConnectionError(f"{address} answers, but not as a Ray cluster; check the "
                              f"address (`ray start --head` prints it)")


def _init(ray: Any, address: str | None, workers: int | None) -> None:
    """Start Ray here, or join the cluster at ``address``, giving up after about
    ``CONNECT_TIMEOUT`` seconds where Ray reads this setting (recent versions; older ones wait
    their own ~20 s)."""
    wait = "RAY_gcs_server_port_wait_time_s"
    given = os.environ.get(wait)
    if address is not None and given is None:
        os.environ[wait] = str(int(CONNECT_TIMEOUT))
    try:
        ray.init(address=address, num_cpus=workers if address is None else None,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise ConnectionError(f"no Ray cluster answers at {address} ({e}); start one with "
                              f"`ray start --head` or check the address") from None
    finally:
        if given is None:
            os.environ.pop(wait, None)


def _run(fn: Callable[..., Any], threads: int, *args: Any) -> Any:
    """A task in a Ray worker (Ray resolves object references among ``args``)."""
    torch.set_num_threads(threads)
    return fn(*args, report=lambda n: None)


class RayExecutor(Executor):
    """Tasks on the Ray cluster at ``address`` (default: a new one on this machine with
    ``workers`` CPUs, or all of them); a Ray session already started in this process is used
    as it is and left running."""

    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, workers: int | None = None,
                 max_retries: int = 3, gpus_per_job: float = 0) -> None:
        super().__init__()
        ray = import_ray()
        self._ray, self._refs = ray, {}
        self._owner = not ray.is_initialized()
        if address is not None:
            check_reachable(address)
        if self._owner:
            if address is not None and workers is not None:
                raise ValueError("--workers sets the CPUs of a Ray cluster started here; "
                                 "a cluster at --ray-address has its own")
            _init(ray, address, workers)
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self._remote = ray.remote(_run).options(num_cpus=1, num_gpus=gpus_per_job,
                                                max_retries=max_retries)

    def share(self, value: Any) -> Any:
        return self._ray.put(value)

    def _start(self, task: Task) -> None:
        self._refs[self._remote.remote(task.fn, 1, *task.args)] = task

    def _wait(self, progress: Progress) -> tuple[Task, Any]:
        ready: list = []
        while not ready:
            ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=1.0)
        task = self._refs.pop(ready[0])
        try:
            return task, self._ray.get(ready[0])
        except self._ray.exceptions.RayTaskError as e:  # the job raised: its own error
            raise self._failed(task, getattr(e, "cause", None) or e) from None
        except self._ray.exceptions.RayError as e:  # worker or node lost, retries used up
            raise self._failed(task, e) from None

    def close(self) -> None:
        for ref in self._refs:
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owner and self._ray.is_initialized():
            self._ray.shutdown()
