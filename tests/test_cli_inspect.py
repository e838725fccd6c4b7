"""`curate inspect`: tables on stderr, JSON on stdout, one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli, main

ROOT = Path(__file__).resolve().parent.parent


def run_main(argv, capsys):
    """Run `curate.cli.main` (the real entry point); return (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_goes_to_stdout(fixtures):
    result = CliRunner().invoke(cli, ["inspect", str(fixtures / "math500.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["shape"]["name"] == "math" and stats["rows"] == 4
    assert stats["difficulty"]["values"] == {"1": 1, "2": 1, "3": 1, "5": 1}
    assert set(stats["response_chars"]) == {"p10", "p50", "p90", "max"}


def test_tables_go_to_stderr(fixtures):
    result = CliRunner().invoke(cli, ["inspect", str(fixtures / "bespoke_stratos.jsonl")])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "sharegpt" in result.stderr and "prefix" in result.stderr and "p90" in result.stderr


def test_split_and_map_options(tmp_path, fixtures):
    import datasets

    rows = [{"q": "What is $x^2$ at 3?", "a": "9"}, {"q": "Say hi", "a": "hi"}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1]),
                          "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "dd"), "--split", "test",
                                      "--map", "prompt=q", "--map", "response=a", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["rows"], stats["split"], stats["shape"]["name"]) == (2, "test", "mapped")


def test_tagged_pool_shows_native_and_tagged_difficulty(tmp_path, fixtures):
    tagged = tmp_path / "tagged.parquet"
    result = CliRunner().invoke(cli, ["tag", str(fixtures / "math500.jsonl"), "--offline", "-o", str(tagged)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["inspect", str(tagged), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["difficulty"]["values"] == {"1": 1, "2": 1, "3": 1, "5": 1}  # the native `level` column
    tagged_stats = stats["tagged_difficulty"]
    assert tagged_stats["column"] == "curate_difficulty" and sum(tagged_stats["values"].values()) == 4
    assert tagged_stats["sources"] == {"native": 4}
    tables = " ".join(CliRunner().invoke(cli, ["inspect", str(tagged)]).stderr.split())  # rich wraps titles
    assert "native difficulty" in tables and "tagged difficulty" in tables and "curate_difficulty" in tables
    untagged = json.loads(CliRunner().invoke(cli, ["inspect", str(fixtures / "math500.jsonl"), "--json"]).stdout)
    assert untagged["tagged_difficulty"] is None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.jsonl"], 1, "missing.jsonl: no such file or directory"),
        (["ATTRIBUTION.md"], 1, "ATTRIBUTION.md: unknown format '.md'"),
        (["gsm8k.jsonl", "--map", "prompt=nope"], 1, "--map prompt=nope: "),
        (["gsm8k.jsonl", "--map", "colour=answer"], 2, "--map colour=...: unknown role 'colour'"),
        (["malformed.jsonl"], 1, "malformed.jsonl:3: invalid JSON"),
        (["no_assistant.jsonl"], 1, "no_assistant.jsonl: row 1: the conversation has no assistant turn"),
        (["EMPTY"], 1, "empty.jsonl: empty pool (0 rows)"),
    ],
)
def test_errors_are_one_line(tmp_path, fixtures, capsys, args, code, message):
    (tmp_path / "empty.jsonl").write_text("")
    path = tmp_path / "empty.jsonl" if args[0] == "EMPTY" else fixtures / args[0]
    exit_code, out, err = run_main(["inspect", str(path), *args[1:]], capsys)
    assert exit_code == code
    assert out == ""
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("name", ["missing.jsonl", "malformed.jsonl"])
def test_no_traceback_from_the_real_process(fixtures, name):
    proc = subprocess.run([sys.executable, "-m", "curate", "inspect", str(fixtures / name)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
