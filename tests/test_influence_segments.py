"""Segment (sentence/step/block) influence: the segmenters and the counterfactual I(z) - I(z \\ y)."""

from __future__ import annotations

import pytest

from curate.data.example import Example
from curate.data.segments import segment
from curate.errors import UsageError
from curate.influence.batches import make_batches
from curate.influence.capture import select_modules
from curate.influence.config import ScoreConfig
from curate.influence.engine import score_pool
from curate.influence.scoring import score_batches
from curate.influence.tokens import tokenize_example
from curate.stages import load_tensors
from tests.tiny import add_example, tiny_chat_llama


def test_segmenters_cover_the_text_without_overlap():
    text = "First, note 3.5 is big. Then we check!\n\nWait, is x=2? Yes.\nSo done."
    sentences = [text[a:b] for a, b in segment(text, "sentences")]
    assert sentences == ["First, note 3.5 is big. ", "Then we check!\n\n", "Wait, is x=2? ", "Yes.\n", "So done."]
    assert "".join(sentences) == text
    assert [text[a:b] for a, b in segment(text, "steps")] == ["First, note 3.5 is big. Then we check!\n\n",
                                                             "Wait, is x=2? Yes.\nSo done."]
    trace = "<|begin_of_thought|>\n\nthink\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\nanswer\n\n<|end_of_solution|>"
    assert [trace[a:b].strip() for a, b in segment(trace, "blocks")] == ["think", "answer"]
    with pytest.raises(ValueError):
        segment(text, "words")


def test_segment_influence_is_the_counterfactual_difference(tmp_path):
    model, tok = tiny_chat_llama()
    ex = add_example

    pool = [ex(0, "We add. 0 plus 0 is 0. Check: yes."), ex(1, "One and one. That makes 2.")]
    queries = {"q": [ex(9, "It is 18.")]}
    config = ScoreConfig(model="tiny", sentences="sentences", dtype="float64", fisher="empirical")
    result = score_pool(pool, queries, config, tmp_path / "w", model=model, tokenizer=tok)
    seg = result.sentences
    assert seg.height == 3 + 2 and set(seg.columns) >= {"curate_id", "segment", "start", "end", "text"}
    full = dict(zip(result.table["curate_id"], result.table["curate_influence_q"], strict=True))

    # independent bookkeeping check: score each counterfactual on its own, along the same cached
    # query direction, and subtract
    (direction_file,) = (tmp_path / "w" / "queries").glob("q-*.safetensors")
    directions = load_tensors(direction_file)
    modules = select_modules(model, "mlp")
    for row in seg.iter_rows(named=True):
        original = next(e for e in pool if e.id == row["curate_id"])
        text = original.response
        assert text[row["start"] : row["end"]] == row["text"]
        variant = Example("v", (original.messages[0], {"role": "assistant", "content": text[: row["start"]] + text[row["end"]:]}))
        (batch,) = make_batches([tokenize_example(tok, variant, None)], 10**6, tok.pad_token_id)
        without = float(score_batches(model, modules, [batch], directions, 1, per_token=False)[0, 0])
        assert row["segment_influence_q"] == pytest.approx(full[row["curate_id"]] - without, rel=1e-6, abs=1e-9)


def test_linear_segments_are_sums_of_token_scores(tmp_path):
    model, tok = tiny_chat_llama(seed=1)
    pool = [Example("p:0", ({"role": "user", "content": "Add 2 and 2."},
                            {"role": "assistant", "content": "We add. 2 plus 2 is 4.\n\nCheck: yes, 4."}))]
    queries = {"q": [Example("q:0", ({"role": "user", "content": "Add 3 and 3."}, {"role": "assistant", "content": "6."}))]}
    config = ScoreConfig(model="tiny", sentences="sentences", sentence_method="linear", tokens=True,
                         dtype="float64", fisher="empirical")
    result = score_pool(pool, queries, config, tmp_path / "w", model=model, tokenizer=tok)
    seg = result.sentences
    assert seg["method"].unique().to_list() == ["linear"] and seg.height == 3
    assert "".join(seg["text"]) == pool[0].response  # sentences tile the response
    token_row = result.tokens.row(0, named=True)
    ids, scores = token_row["token_ids"], token_row["token_influence_q"]
    # the segments hold every response-text token; the rest are the template's end-of-turn tokens
    tail = tok.apply_chat_template(list(pool[0].messages), tokenize=False).split(pool[0].response)[-1]
    n_tail = len(tok(tail, add_special_tokens=False)["input_ids"])
    assert len(ids) > n_tail
    assert sum(seg["segment_influence_q"]) == pytest.approx(sum(scores[: len(ids) - n_tail]), rel=1e-9, abs=1e-12)
    assert sum(scores) == pytest.approx(result.table["curate_influence_q"][0], rel=1e-5)


def test_planted_copy_of_a_query_answer_is_the_most_influential_segment(tmp_path):
    """Acceptance: a copy of the query answer inserted as one sentence of a training response gets
    the largest segment influence in that response, and removing it and re-scoring the example
    matches the reported value."""
    model, tok = tiny_chat_llama(seed=2)
    answer = "Seventeen violet kites drift over quiet harbors."
    queries = {"q": [Example("q:0", ({"role": "user", "content": "Add 5 and 5."}, {"role": "assistant", "content": answer}))]}
    fillers = ["We add the two numbers. ", "Both are equal here. ", "Then we write the sum down. ", "That is all. "]
    pool = [add_example(i, "".join(fillers[:k] + [answer + " "] + fillers[k:])) for i, k in ((1, 0), (2, 2), (3, 4))]
    config = ScoreConfig(model="tiny", sentences="sentences", dtype="float64", fisher="empirical", query_splits=0)
    result = score_pool(pool, queries, config, tmp_path / "w", model=model, tokenizer=tok)
    full = dict(zip(result.table["curate_id"], result.table["curate_influence_q"], strict=True))
    (direction_file,) = (tmp_path / "w" / "queries").glob("q-*.safetensors")
    directions = load_tensors(direction_file)
    for example in pool:
        segs = result.sentences.filter(result.sentences["curate_id"] == example.id)
        assert segs.height == len(fillers) + 1
        best = segs.sort("segment_influence_q", descending=True).row(0, named=True)
        assert best["text"].strip() == answer, segs.select("text", "segment_influence_q")
        rest = example.response[: best["start"]] + example.response[best["end"]:]
        variant = Example("v", (example.messages[0], {"role": "assistant", "content": rest}))
        (batch,) = make_batches([tokenize_example(tok, variant, None)], 10**6, tok.pad_token_id)
        without = float(score_batches(model, select_modules(model, "mlp"), [batch], directions, 1, per_token=False)[0, 0])
        assert best["segment_influence_q"] == pytest.approx(full[example.id] - without, rel=1e-6, abs=1e-9)


def test_tokens_top_scores_the_tokens_of_the_top_examples_only(tmp_path):
    """`tokens_top=1` gives token scores for the best example of each query set, equal to those of a
    run over every example, and resumes without recomputing."""
    model, tok = tiny_chat_llama(seed=3)
    pool = [add_example(i, text) for i, text in enumerate(["We add. 2 plus 2 is 4.", "One and one. That makes 2.",
                                                           "Sum: 7 and 5 give 12.", "It is 9, done."])]
    queries = {"a": [add_example(9, "It is 18.")], "b": [add_example(8, "Four plus four is 8.")]}
    settings = dict(model="tiny", dtype="float64", fisher="empirical", query_splits=0, tokens=True)
    every = score_pool(pool, queries, ScoreConfig(**settings), tmp_path / "all", model=model, tokenizer=tok)
    top = score_pool(pool, queries, ScoreConfig(**settings, tokens_top=1), tmp_path / "top", model=model, tokenizer=tok)
    best = {q: every.table.sort(f"curate_influence_{q}", descending=True)["curate_id"][0] for q in queries}
    assert set(top.tokens["curate_id"]) == set(best.values()) and every.tokens.height == len(pool)
    for row in top.tokens.iter_rows(named=True):
        ref = every.tokens.filter(every.tokens["curate_id"] == row["curate_id"]).row(0, named=True)
        assert row["token_ids"] == ref["token_ids"]
        for q in queries:  # each set's tokens for its own top example, none for the others
            if best[q] == row["curate_id"]:
                assert row[f"token_influence_{q}"] == pytest.approx(ref[f"token_influence_{q}"], rel=1e-9, abs=1e-12)
            else:
                assert row[f"token_influence_{q}"] is None
    (saved,) = (tmp_path / "top" / "scores").glob("tokens-top1.parquet")
    stamp = saved.stat().st_mtime_ns
    again = score_pool(pool, queries, ScoreConfig(**settings, tokens_top=1), tmp_path / "top", model=model, tokenizer=tok)
    assert saved.stat().st_mtime_ns == stamp and again.tokens.equals(top.tokens)
    with pytest.raises(UsageError, match="tokens_top"):
        ScoreConfig(model="tiny", tokens_top=2)  # only with tokens
