"""curate_id: own id column or content hash, qualified by source, unique, stable."""

from __future__ import annotations

import pytest

from curate.data import load_pool
from curate.data.pool import unique_ids

ROW = {"prompt": "What is 2+2?", "response": "4"}


def test_duplicates_get_numbered_suffixes(tmp_path, write_jsonl):
    other = {"prompt": "What is 3+3?", "response": "6"}
    pool = load_pool(write_jsonl(tmp_path / "dup.jsonl", [ROW, other, ROW, ROW]))
    ids = pool.dataset["curate_id"]
    assert len(set(ids)) == 4
    assert ids[2] == ids[0] + "#2" and ids[3] == ids[0] + "#3"
    assert ids[0].startswith("dup:") and len(ids[0]) == len("dup:") + 16
    assert [e.id for e in pool.examples()] == ids


def test_ids_are_stable_across_loads(fixtures):
    first = load_pool(fixtures / "bespoke_stratos.jsonl").dataset["curate_id"]
    second = load_pool(fixtures / "bespoke_stratos.jsonl").dataset["curate_id"]
    assert first == second


def test_ids_differ_by_source(tmp_path, write_jsonl):
    a = load_pool(write_jsonl(tmp_path / "a.jsonl", [ROW])).dataset["curate_id"][0]
    b = load_pool(write_jsonl(tmp_path / "b.jsonl", [ROW])).dataset["curate_id"][0]
    named = load_pool(tmp_path / "a.jsonl", source="donor").dataset["curate_id"][0]
    assert a.split(":", 1)[1] == b.split(":", 1)[1] == named.split(":", 1)[1]
    assert (a.split(":")[0], b.split(":")[0], named.split(":")[0]) == ("a", "b", "donor")


def test_hash_covers_the_system_prompt(tmp_path, write_jsonl):
    rows = [dict(ROW, system="Be brief."), dict(ROW, system="Be verbose.")]
    ids = load_pool(write_jsonl(tmp_path / "s.jsonl", rows)).dataset["curate_id"]
    assert "#" not in ids[1] and ids[0] != ids[1]


def test_own_id_column_and_fallback(tmp_path, write_jsonl):
    rows = [dict(ROW, id=5), dict(ROW, id=None), dict(ROW, id=5)]
    ids = load_pool(write_jsonl(tmp_path / "own.jsonl", rows)).dataset["curate_id"]
    assert ids[0] == "own:5" and ids[2] == "own:5#2"
    assert len(ids[1]) == len("own:") + 16  # no id: content hash
    mapped = load_pool(tmp_path / "own.jsonl", mapping={"id": "prompt"}).dataset["curate_id"]
    assert mapped == ["own:What is 2+2?", "own:What is 2+2?#2", "own:What is 2+2?#3"]


def test_unique_ids_avoid_natural_collisions():
    assert unique_ids(["a", "a", "a#2"]) == ["a", "a#3", "a#2"]
    assert unique_ids(["a#2", "a", "a"]) == ["a#2", "a", "a#3"]


@pytest.mark.parametrize("out", ["out.jsonl", "out.parquet", "out"])
def test_reloading_a_written_pool_keeps_ids(tmp_path, fixtures, out):
    from curate.data import write_pool

    pool = load_pool(fixtures / "math500.jsonl")
    out = write_pool(pool, tmp_path / out)
    again = load_pool(out, source="elsewhere")
    assert again.dataset["curate_id"] == pool.dataset["curate_id"]
    assert again.dataset.column_names == pool.dataset.column_names
