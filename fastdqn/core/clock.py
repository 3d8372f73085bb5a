"""Where a run's clock starts: at the process's start, so that what a user waits for before the
first step (imports, Numba's cache, the native build, env workers) counts in time to solve."""

from __future__ import annotations

import os
import time

_IMPORTED = time.perf_counter()


def process_age() -> float:
    """Seconds since this process started: from /proc on Linux (10 ms ticks), elsewhere since
    this module was first imported (which `fastdqn` does before torch)."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


def process_start() -> float:
    """The process's start on `time.perf_counter()`'s scale."""
    return time.perf_counter() - process_age()
