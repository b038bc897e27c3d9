"""Atomic file writes: every result, report and model file goes through ``atomic_write``.

A file is written to a temporary name in its folder and renamed over the target, so a reader
(or a crash) never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    A failure (full disk, read-only folder) leaves ``path`` as it was and no temporary file
    behind, and raises an OSError that names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _named(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename: a power loss leaves old or new
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a plain open would not
        os.replace(tmp, path)
    except OSError as e:
        raise _named(e, path) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _named(e: OSError, path: Path) -> OSError:
    """``e`` as one line that says which file could not be written."""
    message = f"could not write {path}: {e.strerror or e}"
    return OSError(e.errno, message) if e.errno else OSError(message)  # errno picks the subclass
