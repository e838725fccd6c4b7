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


def test_spilled_tags_write_what_the_frame_writes(tmp_path, monkeypatch):
    """`tag_pool(spill=True)` (what `curate tag` runs) keeps its annotations on disk; written, they
    give the same rows as the in-memory frame, in pool order or not."""
    import polars as pl
    import pyarrow.parquet as pq

    from curate.data import load_pool, write_pool
    from curate.data.rows import FileRows
    from curate.data.write import annotation_table
    from curate.tagging import tagger
    from curate.tagging.config import TagConfig

    monkeypatch.setattr(tagger, "OFFLINE_CHUNK", 7)  # many chunks, none aligned with the pool's batches
    pool = load_pool(SAMPLE)
    frame, report = tagger.tag_pool(pool, TagConfig(offline=True))
    spilled, again = tagger.tag_pool(pool, TagConfig(offline=True), spill=True)
    assert isinstance(spilled, FileRows) and spilled.num_rows == len(frame) == 80
    assert again.sources == report.sources == {"native": 48, "rule": 32}
    assert tagger.failed_requests(spilled) == tagger.failed_requests(frame) == (0, {})
    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(annotation_table(frame.sample(fraction=1.0, shuffle=True, seed=1)), shuffled)
    shuffled = FileRows((shuffled,), pq.read_schema(shuffled), 80)
    written = [pq.read_table(write_pool(pool, tmp_path / f"{name}.parquet", annotations=annotations))
               for name, annotations in (("frame", frame), ("spilled", spilled), ("shuffled", shuffled))]
    assert written[0].equals(written[1]) and written[0].equals(written[2])
    assert pl.from_arrow(written[0])["curate_difficulty"].null_count() == 0
