"""Scoring the fit examples from the covariance pass's pairs (no second model pass), with either Fisher."""

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


@pytest.mark.parametrize("fisher, memory_gb, disk_gb",
                         [("empirical", 2.0, 0.0), ("empirical", 0.0, 1.0), ("true", 2.0, 0.0), ("true", 0.0, 1.0)])
def test_replayed_scores_equal_a_scoring_pass(tmp_path, monkeypatch, fisher, memory_gb, disk_gb):
    """Pairs kept in memory or spilled to disk (deleted afterwards) score the fit examples: with
    the true Fisher, the data labels' pairs from the covariance pass's second backward."""
    model, tok, pool, queries = _model_and_data()
    calls = []
    real = scoring.run_pass
    monkeypatch.setattr(scoring, "run_pass", lambda *a, **k: (calls.append(len(a[2])), real(*a, **k))[1])
    common = dict(dtype="float64", fisher=fisher, fit_on=5, batch_tokens=64, normalize="train", query_splits=2,
                  pair_cache_gb=memory_gb, pair_spill_gb=disk_gb)
    # fit_on=5 of 7: five rows come from the replay, two from a scoring pass over the model.
    replayed = score_pool(pool, queries, ScoreConfig(model="tiny", **common), tmp_path / "a", model=model, tokenizer=tok)
    scored_rows = sum(calls[1:])  # calls[0]: the query gradients
    assert not [p for p in (tmp_path / "a").rglob("*.pt")]  # spilled pairs are gone
    assert not list((tmp_path / "a" / "factors").glob(".bases-*"))  # and the parked float64 bases
    # The same factors and query directions, found on disk: a resumed fit keeps no pairs, so
    # every example goes through the scoring pass.
    for stage in ("factors", "queries"):
        shutil.copytree(tmp_path / "a" / stage, tmp_path / "b" / stage)
    (tmp_path / "b" / "factors" / ".bases-0").mkdir()  # as a run killed after its last factor file leaves it
    calls.clear()
    passed = score_pool(pool, queries, ScoreConfig(model="tiny", **common), tmp_path / "b", model=model, tokenizer=tok)
    assert scored_rows == 2 and sum(calls) == 7
    assert not list((tmp_path / "b" / "factors").glob(".bases-*"))
    # Not bit-equal: the batches are padded differently, and LlamaRMSNorm rounds through float32.
    for col in [*replayed.columns, "curate_nll"]:
        a, b = replayed.table[col].to_numpy(), passed.table[col].to_numpy()
        assert abs(a - b).max() <= 1e-6 * abs(b).max(), col
