"""One prunelab process at a time per run folder: an advisory lock on ``RUN_DIR/.prunelab.lock``.

A second process that wants a folder another one holds does not wait: it fails at once with
``RunFolderBusy`` naming the folder and the holder's process id (the CLI prints it as one line).
The lock is ``fcntl.flock`` on an open file, so the kernel releases it when its process ends,
however it ends (SIGKILL included): a crashed run never leaves a folder locked. The lock file
itself stays (deleting it could let two processes lock two different files).

The lock is re-entrant within a process (a ``run`` holds its folder while the sweep inside takes
it again); it is not shared with threads of other purposes.

>>> import tempfile
>>> with run_lock(Path(tempfile.mkdtemp())):
...     pass
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_FILE", "RunFolderBusy", "run_lock"]

LOCK_FILE = ".prunelab.lock"

_held: dict[Path, int] = {}  # this process's locks: resolved folder -> depth


class RunFolderBusy(OSError):
    """Another process holds the run folder's lock."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EWOULDBLOCK, message)

    def __str__(self) -> str:
        return self.args[1]


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock (creating the folder) for the ``with`` block."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusy(f"run folder {run_dir} is in use by another prunelab process "
                                f"(pid {holder}); wait for it to finish, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the lock
