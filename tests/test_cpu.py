"""Thread choice from the machine's load (`curate.cpu`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

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
