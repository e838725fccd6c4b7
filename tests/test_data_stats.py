"""The numbers `curate inspect` shows."""

from __future__ import annotations

import pytest

from curate.data import load_pool, pool_stats
from curate.data.stats import quantiles


def test_math_stats(fixtures):
    stats = pool_stats(load_pool(fixtures / "math500.jsonl"))
    assert stats.rows == 4 and stats.shape["name"] == "math"
    assert stats.domains == [{"domain": "math", "source": "native", "rows": 4}]
    assert stats.difficulty == {"column": "level", "values": {"1": 1, "2": 1, "3": 1, "5": 1}}
    lengths = sorted(len(s) for s in load_pool(fixtures / "math500.jsonl").dataset["solution"])
    assert stats.response_chars == {"p10": lengths[0], "p50": lengths[1], "p90": lengths[3], "max": lengths[3]}
    assert stats.response_tokens is None


def test_difficulty_labels_sort_naturally(tmp_path, write_jsonl):
    labels = ["Level 10", "Level 2", "VERY_HARD", "EASY", "Level 2", "MEDIUM_HARD"]
    rows = [{"prompt": f"p{i}", "response": "r", "difficulty": d} for i, d in enumerate(labels)]
    stats = pool_stats(load_pool(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert list(stats.difficulty["values"].items()) == [
        ("EASY", 1), ("MEDIUM_HARD", 1), ("VERY_HARD", 1), ("Level 2", 2), ("Level 10", 1)]


def test_domain_counts_with_sources(fixtures):
    stats = pool_stats(load_pool(fixtures / "bespoke_stratos.jsonl"))
    assert stats.domains == [
        {"domain": "math", "source": "prefix", "rows": 2},
        {"domain": "code", "source": "prefix", "rows": 1},
        {"domain": "unknown", "source": "rule", "rows": 1},
    ]


def test_quantiles_are_nearest_rank():
    assert quantiles([1, 2, 3, 4]) == {"p10": 1, "p50": 2, "p90": 4, "max": 4}
    assert quantiles(list(range(1, 11))) == {"p10": 1, "p50": 5, "p90": 9, "max": 10}
    assert quantiles([]) == {"p10": 0, "p50": 0, "p90": 0, "max": 0}


@pytest.fixture
def word_tokenizer(tmp_path):
    """A whitespace word-level tokenizer saved as a local folder (no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]")
    fast.save_pretrained(str(tmp_path / "tok"))
    return tmp_path / "tok"


def test_token_lengths(tmp_path, write_jsonl, word_tokenizer):
    rows = [{"prompt": "p", "response": " ".join(["w"] * n)} for n in (1, 3, 5, 7)]
    stats = pool_stats(load_pool(write_jsonl(tmp_path / "t.jsonl", rows)), tokenizer=word_tokenizer)
    assert stats.response_tokens == {"p10": 1, "p50": 3, "p90": 7, "max": 7}
    assert stats.tokenizer == str(word_tokenizer)
