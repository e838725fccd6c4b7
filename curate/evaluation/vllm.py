"""`--engine vllm`: start `vllm serve` on a checkpoint, evaluate through it, always shut it down.

`serving(launch)` builds the command (`command`), starts it in its own process group with its log
in a file, waits until `GET /health` answers (or the process dies, or `startup_timeout` passes:
then a one-line error quoting the log's tail), yields the server's base URL for a `ServerEngine`,
and on the way out (normal end, error or Ctrl-C) sends SIGTERM to the group, then SIGKILL after
`stop_timeout`. A LoRA checkpoint is served on its base model with `--enable-lora --lora-modules
NAME=ADAPTER` and asked for by NAME.

`vllm_available()`: the default engine is `vllm` when the `vllm` executable is on PATH and a CUDA
device is present, else `hf`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import DataError, MissingDependencyError


@dataclass(frozen=True)
class VLLMLaunch:
    """What to serve: `model` (a folder or Hub id: the base model when `lora` is given),
    `served_name` (the id requests ask for), `lora` ({name: adapter folder}), `port` (None: a
    free one), `extra_args` (passed to `vllm serve` as they are), `log` (the server's output file)."""

    model: str
    served_name: str
    lora: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    extra_args: tuple[str, ...] = ()
    log: Path | None = None
    startup_timeout: float = 900.0
    stop_timeout: float = 30.0


def vllm_available() -> bool:
    """Whether `--engine vllm` can run here: the `vllm` executable and a CUDA device."""
    if shutil.which("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def command(launch: VLLMLaunch, port: int) -> list[str]:
    """The `vllm serve` command line for `launch` on `port`."""
    cmd = ["vllm", "serve", launch.model, "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", launch.served_name]
    if launch.lora:
        cmd += ["--enable-lora", "--lora-modules", *(f"{name}={path}" for name, path in launch.lora.items())]
    return [*cmd, *launch.extra_args]


@contextmanager
def serving(launch: VLLMLaunch) -> Iterator[str]:
    """Run `vllm serve` for the duration of the block; yields its base URL (…/v1)."""
    if shutil.which("vllm") is None:
        raise MissingDependencyError("--engine vllm needs the `vllm` executable on PATH (pip install vllm)")
    port = launch.port or _free_port()
    log_path = launch.log or Path(os.environ.get("TMPDIR", "/tmp")) / f"curate-vllm-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command(launch, port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(proc, port, launch.startup_timeout, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc, launch.stop_timeout)


def _wait_healthy(proc: subprocess.Popen, port: int, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DataError(f"vllm serve exited with code {proc.returncode} before it was ready: {_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise DataError(f"vllm serve was not ready after {timeout:.0f} s: {_tail(log_path)}")


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the server's process group, SIGKILL it after `timeout` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _tail(path: Path, chars: int = 400) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return " ".join(text[-chars:].split()) or f"(empty log {path})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
