"""curate_id: own id column or content hash, independent of the file's name, unique, stable."""

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
    assert ids[0].startswith("sha:") and len(ids[0]) == len("sha:") + 16
    assert [e.id for e in pool.examples()] == ids


def test_ids_are_stable_across_loads(fixtures):
    first = load_pool(fixtures / "bespoke_stratos.jsonl").dataset["curate_id"]
    second = load_pool(fixtures / "bespoke_stratos.jsonl").dataset["curate_id"]
    assert first == second


def test_ids_do_not_depend_on_the_file_name(tmp_path, write_jsonl):
    a = load_pool(write_jsonl(tmp_path / "a.jsonl", [ROW])).dataset["curate_id"][0]
    b = load_pool(write_jsonl(tmp_path / "copy of b.parquet.jsonl", [ROW])).dataset["curate_id"][0]
    named = load_pool(tmp_path / "a.jsonl", source="donor").dataset["curate_id"][0]
    assert a == b and a.startswith("sha:")
    assert named == "donor:" + a.split(":", 1)[1]  # an explicit qualifier keeps a set apart on purpose


def test_hash_covers_the_system_prompt(tmp_path, write_jsonl):
    rows = [dict(ROW, system="Be brief."), dict(ROW, system="Be verbose.")]
    ids = load_pool(write_jsonl(tmp_path / "s.jsonl", rows)).dataset["curate_id"]
    assert "#" not in ids[1] and ids[0] != ids[1]


def test_own_id_column_and_fallback(tmp_path, write_jsonl):
    rows = [dict(ROW, id=5), dict(ROW, id=None), dict(ROW, id=5)]
    ids = load_pool(write_jsonl(tmp_path / "own.jsonl", rows)).dataset["curate_id"]
    assert ids[0] == "id:5" and ids[2] == "id:5#2"
    assert ids[1].startswith("sha:") and len(ids[1]) == len("sha:") + 16  # no id: content hash
    mapped = load_pool(tmp_path / "own.jsonl", mapping={"id": "prompt"}).dataset["curate_id"]
    assert mapped == ["prompt:What is 2+2?", "prompt:What is 2+2?#2", "prompt:What is 2+2?#3"]


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


def test_outputs_of_separate_commands_join_on_curate_id(tmp_path):
    """The sample pool tagged by one command and pruned by another, each reading the raw file under
    another name, and the recipe's output: every output row's id is the input row's id."""
    import shutil

    import polars as pl
    from click.testing import CliRunner

    from curate.cli import cli
    from curate.demo import SAMPLE

    copy = tmp_path / "renamed-by-a-user.jsonl"
    shutil.copy(SAMPLE / "pool.jsonl", copy)
    runner = CliRunner()
    for args in (["tag", str(SAMPLE / "pool.jsonl"), "--offline", "-o", str(tmp_path / "tagged.parquet")],
                 ["prune", str(copy), "--strategy", "length", "--keep", "0.5", "-o", str(tmp_path / "pruned.parquet")]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    raw = load_pool(SAMPLE / "pool.jsonl").dataset["curate_id"]
    tagged = pl.read_parquet(tmp_path / "tagged.parquet")["curate_id"].to_list()
    pruned = pl.read_parquet(tmp_path / "pruned.parquet")["curate_id"].to_list()
    assert tagged == raw and len(pruned) == 40 and set(pruned) <= set(tagged)
    joined = pl.read_parquet(tmp_path / "pruned.parquet").join(
        pl.read_parquet(tmp_path / "tagged.parquet").select("curate_id", "curate_difficulty"), on="curate_id")
    assert joined.height == 40 and joined["curate_difficulty"].null_count() == 0


def test_all_distinct_compares_strings_where_hashes_meet(monkeypatch):
    """`all_distinct` sorts 64-bit hashes and compares strings only where two hashes are equal:
    a true repeat is found, and a hash collision between different strings is not one."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    from curate.data.pool import all_distinct

    values = pa.chunked_array([["a", "b"], ["c", "d"]])
    assert all_distinct(values) and not all_distinct(pa.chunked_array([["a", "b"], ["c", "a"]]))
    monkeypatch.setattr(pl.Series, "hash", lambda self, *a, **k: pl.Series(np.zeros(len(self), np.uint64)))
    assert all_distinct(values)  # every hash collides; the strings still differ
    assert not all_distinct(pa.chunked_array([["a", "b"], ["b"]]))
