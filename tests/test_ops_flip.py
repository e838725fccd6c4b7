"""flip and decontamination on the bundled sample pool and donor (difficulty added in the test)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curate.cli import main
from curate.data import load_pool
from curate.data.text import problem_texts, response_chars
from curate.errors import DataError
from curate.ops import FlipConfig, flip, load_donor
from curate.ops.decontam import Benchmark, normalise
from tests.cli_helpers import cli_error

SAMPLE = Path(__file__).parent.parent / "curate" / "resources" / "sample"
ROBOT = "A robot moving forward at a constant speed takes 2.5 hours to travel 1 kilometer."


SCALE = {"easy_max": 4, "hard_min": 7}


def with_difficulty(pool):
    """curate_difficulty: math 2 x level (native); code 1-10 by response length (rule). On this
    scale the tests flip with easy_max=4, hard_min=7 (MATH levels 1-2 easy, 4-5 hard)."""
    ds = pool.dataset
    level = pl.Series(ds["level"], dtype=pl.Float64)
    domain = pl.Series(ds["curate_domain"])
    chars = pl.DataFrame({"c": response_chars(pool).cast(pl.Float64), "d": domain})
    code_rank = chars.select((pl.col("c").rank().over("d") / pl.len().over("d") * 10).ceil().clip(1, 10)).to_series()
    diff = pl.select(pl.when(domain == "math").then(2 * level).otherwise(code_rank)).to_series()
    src = pl.select(pl.when(domain == "math").then(pl.lit("native")).otherwise(pl.lit("rule"))).to_series()
    ds = ds.add_column("curate_difficulty", diff.to_list()).add_column("curate_difficulty_source", src.to_list())
    return pool.with_dataset(ds)


@pytest.fixture(scope="module")
def pool():
    return with_difficulty(load_pool(SAMPLE / "pool.jsonl"))


@pytest.fixture(scope="module")
def donor():
    return with_difficulty(load_donor(SAMPLE / "donor.jsonl"))


def mean_diff(p, domain):
    f = pl.DataFrame({"d": p.dataset["curate_domain"], "x": p.dataset["curate_difficulty"]})
    return f.filter(pl.col("d") == domain)["x"].mean()


def domain_counts(p):
    return dict(pl.Series(p.dataset["curate_domain"]).value_counts().iter_rows())


def test_flip_keeps_size_and_domains_and_moves_difficulty(pool, donor):
    result = flip(pool, donor, FlipConfig(**SCALE))
    out = result.pool
    assert len(out) == len(pool) and domain_counts(out) == domain_counts(pool)
    assert mean_diff(out, "math") > mean_diff(pool, "math")
    assert mean_diff(out, "code") < mean_diff(pool, "code")
    added = [e.replaced_by for e in result.manifest]
    assert len(added) == len(set(added)) == 12 + 8  # round(0.25 * 48), round(0.25 * 32)
    assert all(e.action == "replaced" and e.reason.startswith("flip:") for e in result.manifest)
    # no donor is a problem already in the pool
    pool_problems = set(normalise(problem_texts(pool)).to_list())
    new = out.with_dataset(out.dataset.filter(lambda r: r["curate_id"] in set(added)))
    assert not set(normalise(problem_texts(new)).to_list()) & pool_problems
    # rendered in the pool's schema, with Bespoke-Stratos markers and prefixes
    assert out.dataset.features == pool.dataset.features
    row = new.dataset[0]
    assert row["conversations"][1]["value"].endswith("<|end_of_solution|>")
    assert row["conversations"][0]["value"].startswith(("Return your final response", "Generate an executable"))


def test_reverse_does_the_opposite(pool, donor):
    out = flip(pool, donor, FlipConfig(**SCALE, reverse=True)).pool
    assert len(out) == len(pool) and domain_counts(out) == domain_counts(pool)
    assert mean_diff(out, "math") < mean_diff(pool, "math")
    assert mean_diff(out, "code") > mean_diff(pool, "code")


def test_decontamination_drops_overlapping_donors(pool, donor):
    bench = [Benchmark("math500.jsonl", normalise(pl.Series([ROBOT + " How many meters long is the hallway?"])).to_list())]
    result = flip(pool, donor, FlipConfig(**SCALE, swap_frac=1.0, domains=("math",)), benchmarks=bench)
    added = {e.replaced_by for e in result.manifest}
    texts = problem_texts(result.pool.with_dataset(result.pool.dataset.filter(lambda r: r["curate_id"] in added)))
    assert not any(t.startswith("A robot moving forward") for t in texts)
    assert "overlapping benchmarks: 1" in result.report.card["Difficulty flip"]


def test_decontaminate_cli_with_benchmark_file(tmp_path, pool, donor, write_jsonl):
    problems = problem_texts(donor)
    overlapping = [p for p in problems if p.startswith(("A robot", "In the diagram, the three", "Sam is carrying"))]
    assert len(overlapping) == 3
    bench = write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": p, "solution": "x", "answer": "1", "level": 5, "unique_id": f"test/{i}"} for i, p in enumerate(overlapping)])
    pool_path, donor_path = tmp_path / "pool.parquet", tmp_path / "donor.parquet"
    pool.dataset.to_parquet(pool_path)
    donor.dataset.remove_columns(["curate_id", "curate_domain", "curate_domain_source"]).to_parquet(donor_path)
    out = tmp_path / "out.parquet"
    main(["flip", str(pool_path), "--donor", str(donor_path), "-o", str(out), "--swap-frac", "1",
          "--decontaminate", str(bench)])
    flipped = load_pool(out)
    texts = set(problem_texts(flipped).to_list())
    assert not texts & set(overlapping)
    assert (tmp_path / "out.difficulty.png").stat().st_size > 1000
    card = (tmp_path / "out.README.md").read_text()
    assert "| difficulty | code before | code after | math before | math after |" in card
    entries = [json.loads(line) for line in (tmp_path / "out.manifest.jsonl").read_text().splitlines()]
    assert entries and all(e["replaced_by"] for e in entries)


def test_mixed_sources_refused(pool, donor):
    ds = donor.dataset.remove_columns("curate_difficulty_source").add_column("curate_difficulty_source", ["llm"] * len(donor))
    with pytest.raises(DataError, match="--allow-mixed-sources"):
        flip(pool, donor.with_dataset(ds), FlipConfig(**SCALE))
    assert len(flip(pool, donor.with_dataset(ds), FlipConfig(**SCALE, allow_mixed_sources=True)).pool) == len(pool)


def test_short_donor_swaps_what_it_can(pool, donor):
    result = flip(pool, donor, FlipConfig(**SCALE, swap_n=40, domains=("math",)))
    assert result.report.counts["math swapped"] < 40
    assert any("swapped" in n and "donor has only" in n for n in result.report.notes)


def test_donor_without_code_is_an_error(tmp_path, write_jsonl, capsys):
    rows = [json.loads(line) for line in (SAMPLE / "donor.jsonl").read_text().splitlines()]
    donor_path = write_jsonl(tmp_path / "donor.jsonl", [r for r in rows if r["domain"] == "math"])
    msg = cli_error(["flip", str(SAMPLE / "pool.jsonl"), "--donor", str(donor_path), "-o", str(tmp_path / "o.parquet")], capsys)
    assert "no code rows" in msg


def test_bad_flip_options(tmp_path, capsys):
    msg = cli_error(["flip", str(SAMPLE / "pool.jsonl"), "--donor", str(SAMPLE / "donor.jsonl"), "-o", str(tmp_path / "o"),
                     "--swap-frac", "0", "--easy-max", "8"], capsys)
    assert "--swap-frac 0.0: must be in (0, 1]" in msg and "--easy-max 8.0, --hard-min 5.0: need --easy-max < --hard-min" in msg


def test_a_donor_id_already_in_the_pool_is_refused(pool, donor):
    """An id on both sides (the same own id, or the same content loaded without a qualifier) is a
    one-line error naming it, found by hashing the ids (no set of id strings is built)."""
    ids = donor.dataset["curate_id"]
    shared = pool.dataset["curate_id"][7]
    clashing = donor.with_dataset(donor.dataset.remove_columns("curate_id").add_column(
        "curate_id", [shared if i == 3 else x for i, x in enumerate(ids)]))
    with pytest.raises(DataError, match=f"donor ids clash with pool ids \\(e.g. '{shared}'\\)"):
        flip(pool, clashing, FlipConfig(easy_max=4, hard_min=7))
