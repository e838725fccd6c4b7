"""Thread choice from the machine's load (`curate.cpu`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import pytest

from curate.cpu import free_cores


def test_a_busy_neighbour_takes_a_core():
    cores = len(os.sched_getaffinity(0))
    idle = free_cores()
    assert 1 <= idle <= cores
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert free_cores() == 1  # every core busy: one thread, never zero
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_curate_threads_overrides(monkeypatch):
    code = "from curate.cpu import configure_threads; print(configure_threads())"
    env = {**os.environ, "CURATE_THREADS": "3"}  # more than the cores: only the override gives 3
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


# Allocates two 20 MB tensors and frees them, 50 times (after 8 to warm up), and prints whether the
# allocator was configured and the page faults the loop took. glibc's defaults hand the freed 40 MB
# at the top of the heap back to the system each time (its trim threshold follows its mmap
# threshold, raised to 20 MB by the first free), so each round faults them in again.
_FAULTS = """
import resource, sys, torch
from curate.cpu import configure_allocator
applied = configure_allocator() if sys.argv[1] == "1" else False
def round():
    x = torch.ones(5_000_000)
    y = torch.ones(5_000_000)
    return float(x.sum() + y.sum())
for _ in range(8):  # the heap settles in a few rounds
    round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    round()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(configure: bool, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, "1" if configure else "0"], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_allocator_keeps_freed_batches_for_the_next():
    """Freed batches are reused by the next instead of being handed back and faulted in again
    (4,883 pages per tensor, measured here ~35k-90k over the 50 rounds without it); a user's own malloc settings are left alone."""
    applied, faults = _faults(True)
    assert applied == "True" and faults < 5000  # at most one round's
    plain = _faults(False)
    assert plain[0] == "False" and plain[1] > faults + 5000  # glibc's own: some rounds fault again
    assert _faults(True, MALLOC_ARENA_MAX="4")[0] == "False"
