"""An audit's fine-tunes several at a time, each in a forked process on one core.

A small model's fine-tune does not use many cores well: its matrix products are narrow and much
of each step is one thread's bookkeeping. On 2 cores, two fine-tunes of the audit benchmark's
2-layer Llama at one thread each finished in 53.4 s together, against 59.7 s for the same two
one after the other at two threads (with the same final loss to the last bit; the evaluation's
sums differ in the 9th digit). The arms of an audit share nothing but their start (the model as
loaded, the pool as tokenised), so they run in processes forked after the start is prepared:
each child inherits it, copy-on-write, and returns only its record.

Each child runs torch on one thread: GNU OpenMP, which torch's Linux wheels use, does not
survive a fork, and a child that opens a parallel region after its parent did waits forever
(GCC bug 60035; measured here: 2 threads in the children hang, 1 does not).

`default_workers` picks how many: on a CPU one per thread this process was given
(`curate.cpu.configure_threads`) and no more than its cores, as many as half the available memory
holds by `training_bytes`; one on a GPU, which the fine-tunes would share, and one off Linux.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from curate.cpu import available_memory, cores
from curate.errors import CurateError, UsageError
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


def default_workers(model, train: TrainConfig, runs: int, *, device: str, threads: int) -> int:
    """How many of `runs` fine-tunes of `model` to run at once (see the module doc); `device` is
    where they train ("cpu", "cuda", ...), `threads` the torch threads this process has."""
    if runs < 2 or not can_fork(device):
        return 1
    workers = min(threads, cores(), runs)
    memory = available_memory()
    if memory is not None:
        workers = min(workers, memory // 2 // max(training_bytes(model, train), 1))
    return max(1, workers)


def can_fork(device: str) -> bool:
    """Whether fine-tunes on `device` may run in forked children: on a CPU, on Linux (a GPU's
    CUDA context does not survive a fork; macOS's system libraries are not fork-safe)."""
    return device == "cpu" and sys.platform == "linux"


def check_workers(workers: int, device: str) -> None:
    """Refuse more than one worker where `can_fork` says no (a UsageError naming the option)."""
    if workers > 1 and not can_fork(device):
        raise UsageError(f"--workers {workers}: fine-tunes run several at a time only on a CPU under Linux "
                         f"(training on {device!r}, {sys.platform}); use --workers 1")


def run_all(keys: Sequence[str], run: Callable[[str], dict[str, Any]], *, workers: int
            ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, run(key)) for every key, as each finishes: one after another in this process when
    `workers` is 1, else `workers` at a time in forked processes of one torch thread each (`run`
    and what it reads are inherited, not pickled; its record comes back pickled). After an error
    in a run no new run starts; the runs under way still come back, then the error is raised. A
    child that dies (killed for memory) raises a CurateError naming the way out. Stopping early
    (an exception, Ctrl-C, closing the iterator) terminates the children."""
    global _RUN
    if workers <= 1:
        for key in keys:
            yield key, run(key)
        return
    _RUN = run
    # a tokenizer used before the fork would warn in every child that its parallelism is now off
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_init)
    try:
        todo = iter(keys)
        running: dict[Future, str] = {}

        def start_next() -> None:
            key = next(todo, None)
            if key is not None:
                running[pool.submit(_forked, key)] = key

        for _ in range(workers):  # the fork (of every child at once) happens at the first submit
            start_next()
        _restore("TOKENIZERS_PARALLELISM", saved)
        error: BaseException | None = None
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool as e:
                    raise CurateError(f"a fine-tune's process died ({e}); the finished fine-tunes are kept: rerun "
                                      "with fewer --workers if memory ran out") from None
                except Exception as e:  # raised below, once the runs under way are back
                    error = error or e
                    continue
                if error is None:
                    start_next()
                yield key, record
        if error is not None:
            raise error
        pool.shutdown()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    finally:
        _RUN = None
        _restore("TOKENIZERS_PARALLELISM", saved)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _init() -> None:
    import ctypes
    import signal

    import torch

    torch.set_num_threads(1)
    # the parent's live progress display may have replaced these; a child writes to the terminal
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    # a parent killed outright (SIGKILL) takes its children with it: prctl(PR_SET_PDEATHSIG), which
    # fires when the forking thread ends (the thread iterating run_all, which outlives the runs)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _forked(key: str) -> dict[str, Any]:
    assert _RUN is not None, "run_all sets the job before forking"
    try:
        return _RUN(key)
    except Exception as e:
        try:  # it goes back pickled: one that cannot be would break the pool, read as a death
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001 - any failure to round-trip
            raise RuntimeError(f"{type(e).__name__}: {e}") from None
        raise
