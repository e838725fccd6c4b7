"""CPU process settings for model work: torch's thread count, and glibc's allocator.

Threads: how many torch should use, chosen from what else is running.

torch's intra-op pool defaults to one thread per core, and its OpenMP workers spin while they
wait for each other. When another process keeps a core busy, every parallel region waits for the
thread that lost its core: on a 2-core machine with one busy-looping neighbour, a SmolLM2 forward
pass ran 2.8x slower with 2 threads than with 1 (and 5x slower than with 2 threads on an idle
machine). So model work starts by taking only the cores that are free at that moment.

Allocator: torch's CPU tensors come from malloc. glibc serves a large request with a fresh mmap
and returns it to the system when freed, so every batch of a model pass pays page faults again
for its activations, gradients and products: on this project's 2-core VM a page fault costs ~6
us, and SmolLM2's covariance pass spent a fifth of its time faulting (`configure_allocator`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import time

THREADS_ENV = "CURATE_THREADS"


def free_cores(samples: int = 5, interval_s: float = 0.02) -> int:
    """Cores available to this process minus the other runnable tasks right now (at least 1).

    Reads the instantaneous count of runnable tasks from /proc/loadavg (4th field, "running/total";
    it counts this process too), taking the smallest of a few samples so a momentary spike does
    not halve the threads. Where /proc/loadavg does not exist, all cores count as free.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = []
    for k in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                busy.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return cores
        if k + 1 < samples:
            time.sleep(interval_s)
    return max(1, cores - max(0, min(busy)))


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


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap


@functools.cache
def configure_allocator() -> bool:
    """Keep freed memory in the process for the next batch, once per process; True where applied.

    Sets glibc's mmap threshold to its 64-bit maximum (requests up to 32 MiB come from the heap,
    where freed blocks are reused, instead of fresh mmaps each unmapped on free) and its trim
    threshold to 2 GiB (freed heap is not handed back while it is smaller). A model pass then
    reuses its previous batch's memory without page faults: SmolLM2's covariance pass (16 rows,
    one thread, second run in the process) went from 20.1 s and 650k faults to 15.6 s and none,
    for ~0.25 GB more peak RSS. Called by the influence passes and the trainer on CPU; a no-op
    outside glibc (musl, macOS), and settings a user gave in `GLIBC_TUNABLES` or `MALLOC_*_` win.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
