"""Peak memory of a block of code: the process's resident set, sampled, above its start.

``tracemalloc`` does not see torch's CPU allocations and ``ru_maxrss`` only ever grows, so the
peak is sampled: a thread reads the resident set size (``/proc/self/statm``) every few
milliseconds while the block runs. The figure is the largest increase over the resident size at
the start -- memory the block itself needed, to within the sampling interval, including what
torch's allocator keeps. On CUDA, torch's peak allocated device memory is reported as well.

>>> with PeakMemory() as peak:
...     _ = bytearray(10_000_000)
>>> peak.rss_bytes >= 0
True
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path

import torch

__all__ = ["PeakMemory", "resident_bytes"]

_STATM = Path("/proc/self/statm")


def resident_bytes() -> int:
    """Current resident set size of this process (Linux), else its peak so far (ru_maxrss)."""
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager: ``rss_bytes`` (peak RSS increase) and ``cuda_bytes`` (peak allocated)."""

    def __init__(self, interval: float = 0.005, device: torch.device | str = "cpu") -> None:
        if interval <= 0:
            raise ValueError(f"sampling interval must be positive, got {interval!r}")
        self.interval = interval
        self.device = torch.device(device)
        self.rss_bytes = 0
        self.cuda_bytes = 0

    def _sample(self, start: int) -> None:
        while not self._stop.wait(self.interval):
            self.rss_bytes = max(self.rss_bytes, resident_bytes() - start)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(start,), daemon=True)
        self._thread.start()
        self._start = start
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rss_bytes = max(self.rss_bytes, resident_bytes() - self._start, 0)
        if self.device.type == "cuda":
            self.cuda_bytes = torch.cuda.max_memory_allocated(self.device)
