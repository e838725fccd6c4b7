"""`curate --help` is fast and never imports torch; unbuilt commands fail cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HELP = """
import json, sys, time
t0 = time.perf_counter()
import curate.cli
sys.argv = ["curate", "--help"]
try:
    curate.cli.main()
except SystemExit:
    pass
print(json.dumps({"seconds": time.perf_counter() - t0, "torch": "torch" in sys.modules,
                  "datasets": "datasets" in sys.modules}))
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_help_is_fast_and_torch_free():
    proc = _run("-c", HELP)
    assert proc.returncode == 0, proc.stderr
    *help_lines, last = proc.stdout.strip().splitlines()
    result = json.loads(last)
    assert "inspect" in "\n".join(help_lines)
    assert result["torch"] is False and result["datasets"] is False
    assert result["seconds"] < 1.0, result


def test_python_dash_m_help():
    proc = _run("-m", "curate", "--help")
    assert proc.returncode == 0 and "Commands" in proc.stdout


def test_inspect_help_imports_no_data_stack():
    proc = _run("-c", "import sys, curate.cli as c; sys.argv=['curate','inspect','--help']\n"
                      "try: c.main()\nexcept SystemExit: pass\n"
                      "print('torch' in sys.modules, 'datasets' in sys.modules)")
    assert proc.returncode == 0 and "--tokenizer" in proc.stdout
    assert proc.stdout.strip().endswith("False False")


def test_unbuilt_command_exits_2_with_one_line():
    from curate.cli import COMMANDS

    unbuilt = [name for name, (target, _) in COMMANDS.items() if target is None]
    if not unbuilt:
        pytest.skip("every command is built")
    proc = _run("-m", "curate", "flip" if "flip" in unbuilt else unbuilt[0])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "not built yet" in proc.stderr


def test_score_help_is_plain_text():
    from click.testing import CliRunner

    from curate.cli import cli

    result = CliRunner().invoke(cli, ["score", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "**" not in text and "Positive = up-weighting the example raises" in text
    assert "--query NAME=PATH" in text and "[required]" in text.split("--query NAME=PATH", 1)[1].split("--", 1)[0]


def test_prune_help_says_keep_has_no_default():
    from click.testing import CliRunner

    from curate.cli import cli

    result = CliRunner().invoke(cli, ["prune", "--help"])
    assert result.exit_code == 0
    assert "No default: give exactly one of --keep and --keep-n." in " ".join(result.output.split())
