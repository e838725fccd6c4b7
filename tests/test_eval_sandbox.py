"""The code sandbox stops and fails hostile submissions and leaves the host untouched."""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from curate.evaluation.sandbox import RLIMITS_ONLY, isolation_level, run_python

ISOLATED = isolation_level()[0] != RLIMITS_ONLY
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="no unprivileged namespaces (unshare) here")


def test_ok_program_runs_with_stdin_and_reports_isolation():
    result = run_python("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 3\n",
                        timeout_s=10)
    assert result.status == "ok" and result.stdout.strip() == "6"
    assert result.isolation == isolation_level()[0]
    if ISOLATED:
        assert result.isolation.startswith("unshare: user+net+mount")


def test_error_exit_is_an_error():
    result = run_python("raise SystemExit(3)", timeout_s=10)
    assert result.status == "error" and result.returncode == 3 and not result.ok


def test_infinite_loop_times_out():
    result = run_python("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout" and not result.ok


def test_unbounded_allocation_is_stopped():
    code = "x = []\nwhile True:\n    x.append(bytearray(10**7))\n"
    result = run_python(code, timeout_s=20, memory_mb=256)
    assert result.status == "memory" and not result.ok, result.stderr[-300:]


def test_output_flood_is_cut():
    result = run_python("while True:\n    print('x' * 1000)\n", timeout_s=10, output_bytes=10_000)
    assert result.status == "output_limit" and len(result.stdout) <= 10_000


@needs_isolation
def test_writing_outside_the_temp_dir_fails_and_host_is_untouched(tmp_path):
    """/tmp is hidden behind a private tmpfs (the file's folder does not exist there); what stays
    visible, like the interpreter's environment, is read-only."""
    target = tmp_path / "escaped.txt"
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("host data")
    before = sorted(os.listdir(tmp_path))
    outside_tmp = Path(sys.prefix) / f".sandbox-escape-{os.getpid()}.txt"  # visible to the sandbox, read-only
    code = (f"import sys\nfor path in {[str(target), str(sentinel), str(outside_tmp)]!r}:\n"
            "    try:\n        open(path, 'w').write('pwned')\n        print('wrote', path)\n"
            "    except OSError as e:\n        print(type(e).__name__, e.strerror)\n")
    result = run_python(code, timeout_s=10)
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["FileNotFoundError No such file or directory"] * 2
    assert lines[2] == "OSError Read-only file system"
    assert not target.exists() and not outside_tmp.exists()
    assert sentinel.read_text() == "host data"
    assert sorted(os.listdir(tmp_path)) == before


@needs_isolation
def test_deleting_outside_the_temp_dir_fails(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    result = run_python(f"import os\nos.remove({str(victim)!r})\n", timeout_s=10)
    assert result.status == "error" and victim.read_text() == "keep"


def test_own_temp_dir_is_writable_and_removed_afterwards():
    result = run_python("import os\nopen('scratch.txt', 'w').write('ok')\nprint(os.getcwd())\n"
                        "print(open('scratch.txt').read())", timeout_s=10)
    assert result.status == "ok", result.stderr
    cwd, content = result.stdout.split()
    assert content == "ok" and not os.path.exists(cwd)


@needs_isolation
def test_socket_to_a_host_listener_fails_and_nothing_arrives():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            received.append(conn.recv(1024) or b"<connected>")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = ("import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "s.sendall(b'exfiltrated')\n")
    try:
        result = run_python(code, timeout_s=10)
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()
    assert result.status == "error" and "OSError" in result.stderr, result.stderr[-300:]
    assert received == []


@needs_isolation
def test_unix_socket_of_a_host_service_is_unreachable(tmp_path):
    """A socket in /tmp (pytest's tmp_path lives there) is hidden by the sandbox's private tmpfs."""
    assert str(tmp_path).startswith("/tmp/")
    path = tmp_path / "service.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    try:
        result = run_python(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})\n",
                            timeout_s=10)
    finally:
        server.close()
    assert result.status == "error" and "Error" in result.stderr


@pytest.mark.skipif("pid" not in isolation_level()[0], reason="needs a PID namespace to be safe to run")
def test_fork_bomb_is_contained():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_python(code, timeout_s=2)
    assert result.status == "timeout" and not result.ok
    # Nothing of it survives: a fresh run still starts.
    assert run_python("print('alive')", timeout_s=10).stdout.strip() == "alive"


@needs_isolation
def test_an_interpreter_under_tmp_stays_visible(tmp_path, monkeypatch):
    """The private /tmp must not hide the interpreter: a checkout (and its .venv) under /tmp still
    runs submissions (CI clones may live there)."""
    import venv

    from curate.evaluation import sandbox

    env = tmp_path / "venv"
    venv.create(env, with_pip=False, symlinks=True)
    monkeypatch.setattr(sys, "executable", str(env / "bin" / "python"))
    monkeypatch.setattr(sys, "prefix", str(env))
    sandbox._interpreter_paths.cache_clear()
    sandbox.isolation_level.cache_clear()
    try:
        result = run_python("import sys\nprint(sys.prefix)\nopen('/tmp/x', 'w')\n", timeout_s=20)
        assert sandbox.isolation_level()[0] == "unshare: user+net+mount+pid"
    finally:
        sandbox._interpreter_paths.cache_clear()
        sandbox.isolation_level.cache_clear()
    assert result.stdout.strip() == str(env)  # the venv under /tmp ran the code
    assert "Read-only file system" in result.stderr  # and /tmp is still not writable
