"""Independent `--shard i/N` score jobs plus `curate merge` equal one run; foreign parts are refused."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from curate.errors import DataError
from curate.influence.engine import score_pool
from curate.influence.parts import merge
from tests.distributed_job import build


def _jobs(model, tok, pool, queries, config, work, n):
    """One round of the n jobs; returns their messages."""
    return [score_pool(pool, queries, dataclasses.replace(config, shard=f"{i}/{n}"), work, model=model,
                       tokenizer=tok).pending for i in range(n)]


def test_shard_jobs_and_merge_equal_a_single_run(tmp_path, capsys):
    model, tok, pool, queries, config = build("true")
    # no replay in the single run either (jobs keep no pairs), so both score every row by a pass
    unreplayed = dataclasses.replace(config, pair_cache_gb=0, pair_spill_gb=0)
    single = score_pool(pool, queries, unreplayed, tmp_path / "single", model=model, tokenizer=tok).table
    work = tmp_path / "sharded"
    n = 3  # 9 fit examples in batches that do not divide by 3; 4 chunks of the 11-row pool
    messages = _jobs(model, tok, pool, queries, config, work, n)
    assert all("covariance part" in m for m in messages)
    with pytest.raises(DataError, match="no factors stage"):
        merge(tmp_path / "nowhere")
    # a part from another run (other settings) is refused by name
    other = tmp_path / "other"
    score_pool(pool, queries, dataclasses.replace(config, seed=1, shard="1/3"), other, model=model, tokenizer=tok)
    (part,) = (other / "factors").glob("covariances-*.part1of3.safetensors")
    good = work / "factors" / part.name
    shutil.copy(good, tmp_path / "keep.safetensors")
    shutil.copy(part, good)
    with pytest.raises(DataError, match="part1of3.*another run"):
        merge(work)
    shutil.copy(tmp_path / "keep.safetensors", good)
    assert "eigenbases" in merge(work)
    assert all("eigenvalue-correction part" in m for m in _jobs(model, tok, pool, queries, config, work, n))
    assert "factors complete" in merge(work)
    messages = _jobs(model, tok, pool, queries, config, work, n)
    assert "all chunks written" in messages[-1] and "missing" in messages[0]
    assert "all 4 chunks written" in merge(work)
    assembled = score_pool(pool, queries, config, work, model=model, tokenizer=tok).table
    assert assembled["curate_id"].to_list() == single["curate_id"].to_list()
    for col in [c for c in single.columns if c.startswith("curate_influence_")] + ["curate_nll"]:
        a, b = single[col].to_numpy(), assembled[col].to_numpy()
        assert abs(a - b).max() <= 1e-10 * abs(a).max(), col


def test_merge_names_missing_parts(tmp_path):
    model, tok, pool, queries, config = build("empirical")
    score_pool(pool, queries, dataclasses.replace(config, shard="0/2"), tmp_path, model=model, tokenizer=tok)
    with pytest.raises(DataError, match="parts 1/2 missing"):
        merge(tmp_path)
