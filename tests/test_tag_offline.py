"""`curate tag --offline` on the bundled sample: every math and code row gets a difficulty."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from curate.cli import cli

SAMPLE = str(Path(__file__).resolve().parents[1] / "curate" / "resources" / "sample" / "pool.jsonl")


def test_offline_tags_every_row_of_the_sample(tmp_path):
    out = tmp_path / "tagged.jsonl"
    result = CliRunner().invoke(cli, ["tag", SAMPLE, "-o", str(out), "--offline"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 80
    for row in rows:
        assert row["curate_domain"] in ("math", "code")
        assert 1 <= row["curate_difficulty"] <= 10
        assert row["curate_difficulty_raw"]
        assert row["curate_behavior_source"] == "rule"
        assert all(isinstance(row[f"curate_behavior_{b}"], int) for b in
                   ("exploration", "verification", "backtracking", "subgoal_setting", "backward_chaining"))
        if row["curate_domain"] == "math":  # MATH level L -> L + 1 by the native table
            assert row["curate_difficulty_source"] == "native"
            assert row["curate_difficulty"] == row["level"] + 1
        else:  # TACO slice: no native label, a rule estimate
            assert row["curate_difficulty_source"] == "rule"
            assert row["curate_difficulty_raw"].startswith("rule:code")
    assert len({r["curate_difficulty"] for r in rows if r["curate_domain"] == "code"}) > 1
    card = out.with_name("tagged.README.md").read_text()
    assert "mode: offline" in card and '"native": 48' in card


def test_native_map_overrides_the_table(tmp_path):
    out = tmp_path / "tagged.jsonl"
    result = CliRunner().invoke(cli, ["tag", SAMPLE, "-o", str(out), "--offline", "--tasks", "difficulty",
                                      "--native-map", "5=9"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["curate_difficulty"] for r in rows if r["level"] == 5} == {9}
    assert all(r["curate_behavior_verification"] is None for r in rows)


def test_help_imports_neither_openai_nor_torch():
    code = ("import sys; from curate.cli import main\n"
            "try:\n    main(['tag', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'openai' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--base-url" in done.stdout
