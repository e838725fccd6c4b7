"""An audit's fine-tunes several at a time, each in a forked process with its share of the cores.

A small model's fine-tune does not use many cores well: its matrix products are narrow and much
of each step is one thread's bookkeeping. On 2 cores, two fine-tunes of the audit benchmark's
2-layer Llama at one thread each finished in 53.4 s together, against 59.7 s for the same two
one after the other at two threads (with the same final loss to the last bit; the evaluation's
sums differ in the 9th digit). The arms of an audit share nothing but their start (the model as loaded,
the pool as tokenised), so they run in processes forked after the start is prepared: each child
inherits it, copy-on-write, and returns only its record.

`default_workers` picks how many: on a CPU, one per thread this process was given
(`curate.cpu.configure_threads`), as many as half the available memory holds by
`training_bytes`; one on a GPU, which the fine-tunes would share, and one where processes cannot
fork (not Linux).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from curate.errors import CurateError
from curate.training.config import TrainConfig

_RUN: Callable[[str], dict[str, Any]] | None = None  # the job of the forked children, set before the fork


def training_bytes(model, train: TrainConfig) -> int:
    """Estimated peak bytes of one fine-tune of `model` on a CPU: float32 weights (4 bytes a
    parameter) and, for each trainable parameter, its gradient and AdamW's two moments (12 more),
    plus the activations kept for the backward pass, ~68 x hidden bytes a token and layer in
    float32 (Korthikanti et al. 2022's 34 x hidden in 16-bit, without the attention scores that
    SDPA never holds), for all layers, or with gradient checkpointing one layer's plus each
    layer's input (4 x hidden), over batch_size x max_length tokens."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if train.lora:  # the model as loaded, before its adapters: count them as 1% of the weights
        trainable = params // 100
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    tokens = train.batch_size * train.max_length
    per_token = 68 * hidden * (1 if train.gradient_checkpointing else layers)
    if train.gradient_checkpointing:
        per_token += 4 * hidden * layers
    return 4 * params + 12 * trainable + per_token * tokens


def available_memory() -> int | None:
    """Bytes of memory available to new work (/proc/meminfo's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_workers(model, train: TrainConfig, runs: int, *, device: str, threads: int) -> int:
    """How many of `runs` fine-tunes of `model` to run at once (see the module doc); `device` is
    where they train ("cpu", "cuda", ...), `threads` the torch threads this process has."""
    if runs < 2 or device != "cpu" or sys.platform != "linux":
        return 1
    workers = min(threads, runs)
    memory = available_memory()
    if memory is not None:
        workers = min(workers, memory // 2 // max(training_bytes(model, train), 1))
    return max(1, workers)


def run_all(keys: Sequence[str], run: Callable[[str], dict[str, Any]], *, workers: int, threads: int
            ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, run(key)) for every key, as each finishes: one after another in this process when
    `workers` is 1, else `workers` at a time in forked processes of `threads` torch threads each
    (`run` and what it reads are inherited, not pickled; its record comes back pickled). An error
    in a run is raised here once the runs under way have finished; runs not started are dropped.
    A child that dies (killed for memory) raises a CurateError naming the way out."""
    global _RUN
    if workers <= 1:
        for key in keys:
            yield key, run(key)
        return
    # a tokenizer used before the fork would warn in every child that its parallelism is now off
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _RUN = run
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_forked, key): key for key in keys}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BrokenProcessPool as e:
                raise CurateError(f"a fine-tune's process died ({e}); the finished fine-tunes are kept: rerun with "
                                  "--workers 1, or with fewer workers if memory ran out") from None
            finally:
                for future in futures:
                    future.cancel()
    finally:
        _RUN = None


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _forked(key: str) -> dict[str, Any]:
    assert _RUN is not None, "run_all sets the job before forking"
    return _RUN(key)
