"""Scoring the fit examples from the empirical-Fisher covariance pass's pairs (no second model pass)."""

from __future__ import annotations

import shutil

import pytest

from curate.influence import scoring
from curate.influence.config import ScoreConfig
from curate.influence.engine import score_pool
from tests.tiny import add_example, tiny_chat_llama


def _model_and_data():
    model, tok = tiny_chat_llama()
    ex = add_example

    pool = [ex(i, f"{i} plus {i} is {2 * i}." + " Check." * (i % 3)) for i in range(7)]
    return model, tok, pool, {"q": [ex(20, "It is 40."), ex(21, "42.")]}


@pytest.mark.parametrize("memory_gb, disk_gb", [(2.0, 0.0), (0.0, 1.0)])
def test_replayed_scores_equal_a_scoring_pass(tmp_path, monkeypatch, memory_gb, disk_gb):
    """Pairs kept in memory or spilled to disk (deleted afterwards) score the fit examples."""
    model, tok, pool, queries = _model_and_data()
    calls = []
    real = scoring.run_pass
    monkeypatch.setattr(scoring, "run_pass", lambda *a, **k: (calls.append(len(a[2])), real(*a, **k))[1])
    common = dict(dtype="float64", fisher="empirical", fit_on=5, batch_tokens=64, normalize="train", query_splits=2,
                  pair_cache_gb=memory_gb, pair_spill_gb=disk_gb)
    # fit_on=5 of 7: five rows come from the replay, two from a scoring pass over the model.
    replayed = score_pool(pool, queries, ScoreConfig(model="tiny", **common), tmp_path / "a", model=model, tokenizer=tok)
    scored_rows = sum(calls[1:])  # calls[0]: the query gradients
    assert not [p for p in (tmp_path / "a").rglob("*.pt")]  # spilled pairs are gone
    # The same factors and query directions, found on disk: a resumed fit keeps no pairs, so
    # every example goes through the scoring pass.
    for stage in ("factors", "queries"):
        shutil.copytree(tmp_path / "a" / stage, tmp_path / "b" / stage)
    calls.clear()
    passed = score_pool(pool, queries, ScoreConfig(model="tiny", **common), tmp_path / "b", model=model, tokenizer=tok)
    assert scored_rows == 2 and sum(calls) == 7
    # Not bit-equal: the batches are padded differently, and LlamaRMSNorm rounds through float32.
    for col in [*replayed.columns, "curate_nll"]:
        a, b = replayed.table[col].to_numpy(), passed.table[col].to_numpy()
        assert abs(a - b).max() <= 1e-6 * abs(b).max(), col


def test_true_fisher_does_not_replay(tmp_path, monkeypatch):
    model, tok, pool, queries = _model_and_data()
    calls = []
    real = scoring.run_pass
    monkeypatch.setattr(scoring, "run_pass", lambda *a, **k: (calls.append(len(a[2])), real(*a, **k))[1])
    score_pool(pool, queries, ScoreConfig(model="tiny", dtype="float64", batch_tokens=64), tmp_path / "a",
               model=model, tokenizer=tok)
    assert sum(calls[1:]) == 7  # every pool example went through the scoring pass
