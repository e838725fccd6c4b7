"""How many CPU threads torch should use, chosen from what else is running.

torch's intra-op pool defaults to one thread per core, and its OpenMP workers spin while they
wait for each other. When another process keeps a core busy, every parallel region waits for the
thread that lost its core: on a 2-core machine with one busy-looping neighbour, a SmolLM2 forward
pass ran 2.8x slower with 2 threads than with 1 (and 5x slower than with 2 threads on an idle
machine). So model work starts by taking only the cores that are free at that moment.
"""

from __future__ import annotations

import functools
import os
import time

THREADS_ENV = "CURATE_THREADS"


def free_cores(samples: int = 5, interval_s: float = 0.02) -> int:
    """Cores available to this process minus the other runnable tasks right now (at least 1).

    Reads the instantaneous count of runnable tasks from /proc/loadavg (4th field, "running/total";
    it counts this process too), taking the smallest of a few samples so a momentary spike does
    not halve the threads. Where /proc/loadavg does not exist, all cores count as free.
    """
    total = cores()
    busy = []
    for k in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                busy.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return total
        if k + 1 < samples:
            time.sleep(interval_s)
    return max(1, total - max(0, min(busy)))


def cores() -> int:
    """The cores this process may run on (its CPU affinity; all of the machine's where unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory new work may take: /proc/meminfo's MemAvailable, or less where this
    process's cgroup (v2: a container's, a job scheduler's) sets a lower limit (memory.max less
    memory.current); None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
                found.append(max(0, int(limit) - int(f.read().strip())))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


@functools.cache
def configure_threads() -> int:
    """Set torch's intra-op threads, once per process, and return the count.

    `CURATE_THREADS=N` sets N; with `OMP_NUM_THREADS` set, torch is left as it is; otherwise
    `free_cores()`. Later calls change nothing (the first choice holds for the process).
    """
    import torch

    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(max(1, int(os.environ[THREADS_ENV])))
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(free_cores())
    return torch.get_num_threads()
