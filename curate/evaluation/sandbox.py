"""Run untrusted Python (model-written code) in a separate, limited and isolated process.

Every submission gets its own process and a fresh temporary working directory, removed afterwards:

- **rlimits** (set in the child before exec): CPU seconds, address space (`memory_mb`), file size
  (`output_bytes`: stdout and stderr are files, so this also caps the output) and, where it is
  safe, the number of processes of this user;
- **a new session**, killed as a whole (SIGKILL to its process group) when the wall-clock timeout
  passes;
- **a minimal environment** and `python -I` (no PYTHON* variables, no user site, no cwd on path);
- **OS isolation where the machine has it**, through util-linux `unshare`: a user namespace (so no
  real privileges are needed), a network namespace (no interfaces but a down loopback: every
  connection fails), a mount namespace in which every mount is remounted read-only except the
  working directory, with private empty tmpfs mounts over `/tmp`, `/var/tmp`, `/run` and `/dev/shm`
  (so the host's Unix sockets there, e.g. a Docker or D-Bus socket, cannot be reached), and a PID namespace (killing the sandbox
  kills everything it started). What was available is probed once per process and recorded in
  `SandboxResult.isolation`, e.g. "unshare: user+net+mount+pid", or "rlimits only" on a machine
  without unprivileged user namespaces: Python-level limits alone are not isolation, and results
  say so.

Not covered: a Unix socket file elsewhere (say in a home directory) still accepts `connect()`
under a read-only mount; only the usual socket directories are hidden.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RLIMITS_ONLY = "rlimits only"
# Arguments: N, then N paths to keep visible (the work dir first, then the interpreter's
# folders), then the command. Hide the host's socket and scratch directories (/tmp, /var/tmp,
# /run, /dev/shm) under private tmpfs mounts, put back each kept path that they covered (held open
# as fd 3.. meanwhile; bound with --no-canonicalize so the fd, not its now-hidden path, is the
# source), bind the work dir onto itself, remount every other mount read-only, then exec the
# command. A failure to make / read-only aborts (the probe then reports less isolation).
_MOUNT_SCRIPT = r"""
set -e
n="$1"
shift
i=0
while [ "$i" -lt "$n" ]; do
  eval "keep$i=\$1"
  eval "exec $((i + 3))<\"\$1\""
  shift
  i=$((i + 1))
done
for d in /tmp /var/tmp /run /dev/shm; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then
    mount -t tmpfs -o size=16m,nosuid,nodev tmpfs "$d" 2>/dev/null || true
  fi
done
i=0
while [ "$i" -lt "$n" ]; do
  eval "path=\$keep$i"
  if [ "$i" -eq 0 ] || [ ! -e "$path" ]; then
    mkdir -p "$path"
    mount --no-canonicalize --bind "/proc/self/fd/$((i + 3))" "$path"
  fi
  eval "exec $((i + 3))<&-"
  i=$((i + 1))
done
work="$keep0"
cd "$work"
awk '{print $5}' /proc/self/mountinfo | while read -r raw; do
  mp=$(printf '%b' "$raw")  # mountinfo writes a space as \040, a tab as \011, ...
  [ "$mp" = "$work" ] && continue
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
mount -o remount,bind,ro /
exec "$@"
"""
_UNSHARE_LEVELS = (
    ("user+net+mount+pid", ["-r", "-n", "-m", "-p", "-f", "--kill-child"], True),
    ("user+net+mount", ["-r", "-n", "-m"], True),
    ("user+net", ["-r", "-n"], False),
)


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    `status`: "ok" (exit 0), "error" (non-zero exit or killed by a signal), "timeout" (wall-clock or
    CPU limit), "memory" (MemoryError or allocation failure under the address-space limit),
    "output_limit" (stdout + stderr or a file passed `output_bytes`), "sandbox_error" (the sandbox
    itself could not start). `returncode` is negative for a signal (-9: SIGKILL). `stdout` and
    `stderr` are decoded UTF-8 (errors replaced), each at most `output_bytes` bytes.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    isolation: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@functools.cache
def isolation_level() -> tuple[str, tuple[str, ...], bool]:
    """(label, unshare flags, mount setup used) of the strongest isolation that works here; cached."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return RLIMITS_ONLY, (), False
    probe = tempfile.mkdtemp(prefix="curate-sandbox-probe-")
    try:
        for label, flags, mounts in _UNSHARE_LEVELS:
            cmd = _command(unshare, list(flags), mounts, probe, [sys.executable, "-I", "-c", "pass"])
            try:
                done = subprocess.run(cmd, capture_output=True, timeout=20,
                                      env=_env(probe), cwd=probe)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                return f"unshare: {label}", tuple(flags), mounts
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return RLIMITS_ONLY, (), False


def run_python(
    code: str,
    *,
    stdin: str | None = None,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    output_bytes: int = 1_000_000,
) -> SandboxResult:
    """Run `code` as a Python program (`python -I main.py`) in the sandbox and wait for it.

    `stdin`: text fed to standard input (empty when None). `timeout_s`: wall-clock seconds before
    the whole process group is killed (CPU time is limited to the same, rounded up). `memory_mb`:
    address-space limit in MiB. `output_bytes`: limit in bytes on stdout, stderr and any file written.
    """
    label, flags, mounts = isolation_level()
    work = Path(tempfile.mkdtemp(prefix="curate-sandbox-"))
    io_dir = Path(tempfile.mkdtemp(prefix="curate-sandbox-io-"))  # outside the sandbox's writable dir
    try:
        (work / "main.py").write_text(code, encoding="utf-8")
        (io_dir / "stdin").write_text(stdin or "", encoding="utf-8")
        argv = [sys.executable, "-I", "main.py"]
        cmd = _command(shutil.which("unshare") or "unshare", list(flags), mounts, str(work), argv) if flags else argv
        limits = functools.partial(_set_limits, timeout_s=timeout_s, memory_mb=memory_mb,
                                   output_bytes=output_bytes, nproc=_nproc_limit())
        with open(io_dir / "stdin", "rb") as fin, open(io_dir / "stdout", "wb") as fout, \
                open(io_dir / "stderr", "wb") as ferr:
            try:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=work, env=_env(work),
                                        start_new_session=True, preexec_fn=limits)
            except OSError as err:
                return SandboxResult("sandbox_error", "", str(err), None, label)
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)
                proc.wait()
            _kill_group(proc.pid)  # stragglers left in the group
        stdout = _read(io_dir / "stdout", output_bytes)
        stderr = _read(io_dir / "stderr", output_bytes)
        sizes = (io_dir / "stdout").stat().st_size + (io_dir / "stderr").stat().st_size
        status = _status(proc.returncode, timed_out, stderr, sizes >= output_bytes)
        return SandboxResult(status, stdout, stderr, proc.returncode, label)
    finally:
        _remove(work)
        _remove(io_dir)


def _command(unshare: str, flags: list[str], mounts: bool, work: str, argv: list[str]) -> list[str]:
    if not mounts:
        return [unshare, *flags, "--", *argv]
    keep = [os.path.realpath(work), *_interpreter_paths()]  # mountinfo lists canonical paths
    return [unshare, *flags, "--", "sh", "-c", _MOUNT_SCRIPT, "sandbox", str(len(keep)), *keep, *argv]


@functools.cache
def _interpreter_paths() -> tuple[str, ...]:
    """The folders the interpreter runs from (its environment, its installation, its binary's),
    outermost only: they stay visible (read-only) even under the sandbox's private /tmp."""
    resolved = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                              os.path.dirname(os.path.realpath(sys.executable)))}
    # the path the command names, as given: it may pass through a symlink that the private /tmp hides
    found = sorted(resolved | {os.path.dirname(os.path.abspath(sys.executable))})
    return tuple(p for p in found if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in found))


def _env(work: Path | str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }


def _set_limits(*, timeout_s: float, memory_mb: int, output_bytes: int, nproc: int | None) -> None:
    """Runs in the child between fork and exec, so it only calls setrlimit (limits reach the program)."""
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _nproc_limit(margin: int = 64) -> int | None:
    """RLIMIT_NPROC counts every process of the real user, so a fixed small number would break on a
    busy machine: allow what runs now plus `margin` (stops fork bombs, not normal use); None where
    that cannot be counted or would exceed the hard limit."""
    try:
        uid = os.getuid()
        running = sum(1 for p in os.listdir("/proc") if p.isdigit() and _owner(p) == uid)
    except OSError:
        return None
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    want = running + margin
    return want if hard == resource.RLIM_INFINITY or want <= hard else None


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _status(returncode: int | None, timed_out: bool, stderr: str, output_full: bool) -> str:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout"
    if returncode == -signal.SIGXFSZ or output_full:
        return "output_limit"
    if returncode == 0:
        return "ok"
    tail = stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail:
        return "memory"
    return "error"


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _remove(path: Path) -> None:
    """Remove a tree even where the program took away its own permissions."""
    def fix(func, name, _exc):
        try:
            os.chmod(os.path.dirname(name), 0o700)
            os.chmod(name, 0o700)
            func(name)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix)
    else:
        shutil.rmtree(path, onerror=fix)
