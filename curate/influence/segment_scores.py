"""Influence of the segments of a response (Infra's sequence level), two ways.

ablation (Infra eq. 7): I(y) = I(z) - I(z without y); every variant is one more scored example,
    all in the same batches as the originals.
linear: the sum of the exact token scores (`token_scores`) of the response tokens that start
    inside y: one forward-mode pass per query set however many segments, and the segments of an
    example (plus the template's end-of-turn tokens, which belong to none) sum to I(z). It ignores
    y's role as context for later tokens, which the ablation captures.
Both write one row per segment: curate_id, segment, start, end (characters of the response), text,
method, and segment_influence_<q> per query set.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import torch

from curate.data.example import Example
from curate.data.segments import segment
from curate.errors import UsageError
from curate.influence.batches import make_batches
from curate.influence.context import ScoreContext
from curate.influence.scoring import score_batches
from curate.influence.token_scores import token_scores
from curate.influence.tokens import Tokenized, tokenize_all


def segment_table(ctx: ScoreContext, chunk: Sequence[Example]) -> pl.DataFrame:
    """Segment scores of one chunk of examples by `config.sentence_method` (a chunk stage of
    `score_pool`, after the query directions are in `ctx`)."""
    config, columns = ctx.config, ctx.columns
    main = [j for j, c in enumerate(columns) if "_split" not in c]
    keys = [columns[j].replace("curate_influence_", "segment_influence_") for j in main]
    rows = (_linear if config.sentence_method == "linear" else _ablation)(ctx, chunk, main)
    data: dict[str, list] = {"curate_id": [], "segment": [], "start": [], "end": [], "text": []}
    data.update({k: [] for k in keys})
    for example, k, a, b, values in rows:
        data["curate_id"].append(example.id)
        data["segment"].append(k)
        data["start"].append(a)
        data["end"].append(b)
        data["text"].append(example.response[a:b])
        for key, v in zip(keys, values, strict=True):
            data[key].append(float(v))
    frame = pl.DataFrame(data, schema_overrides={"segment": pl.Int64, "start": pl.Int64, "end": pl.Int64})
    return frame.with_columns(pl.lit(config.sentence_method).alias("method"))


def _ablation(ctx: ScoreContext, chunk: Sequence[Example], main: list[int]):
    config = ctx.config
    variants, spans = [], []  # spans: (example index, k, start, end)
    for i, ex in enumerate(chunk):
        for k, (a, b) in enumerate(segment(ex.response, config.sentences)):
            rest = ex.response[:a] + ex.response[b:]
            if not rest.strip():
                continue  # removing the only segment leaves no response to score
            variants.append(Example(f"{ex.id}#seg{k}", (*ex.messages[:-1], {"role": "assistant", "content": rest})))
            spans.append((i, k, a, b))
    scorable = [z for z in tokenize_all(ctx.tokenizer, list(chunk) + variants, ctx.max_length) if z.scorable]
    batches = make_batches(scorable, config.batch_tokens, ctx.pad_id)
    index = {z.id: r for r, z in enumerate(scorable)}
    scores = torch.zeros(len(scorable), len(ctx.columns), dtype=torch.float64)
    for group in ctx.groups:
        scores += score_batches(ctx.model, group, batches, {n: ctx.directions[n] for n in group}, len(scorable),
                                per_token=config.per_token_train)
    for (i, k, a, b), variant in zip(spans, variants, strict=True):
        full, without = index.get(chunk[i].id), index.get(variant.id)
        if full is not None and without is not None:  # else not scorable within --max-length
            yield chunk[i], k, a, b, [scores[full, j] - scores[without, j] for j in main]


def response_offsets(tokenizer, example: Example, item: Tokenized) -> list[int]:
    """Character offset, within the response text, of the start of each loss token of `item`
    (-1 for tokens outside the response text, e.g. the template's end-of-turn).

    Needs a fast tokenizer whose chat template renders text that tokenises back to the same ids.
    """
    full = tokenizer.apply_chat_template(list(example.messages), tokenize=False)
    prompt = tokenizer.apply_chat_template(example.prompt_messages, tokenize=False, add_generation_prompt=True)
    start = full.find(example.response, len(prompt)) if full.startswith(prompt) else -1
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True) if start >= 0 else None
    if encoded is None or not getattr(tokenizer, "is_fast", False) or encoded["input_ids"] != list(item.input_ids):
        raise UsageError("--sentence-method linear needs a fast tokenizer and a chat template whose text "
                         "tokenises back to the same ids; use --sentence-method ablation")
    end = start + len(example.response)
    return [a - start if start <= a < end else -1 for a, _ in encoded["offset_mapping"][item.loss_start:]]


def _linear(ctx: ScoreContext, chunk: Sequence[Example], main: list[int]):
    config, tokenizer = ctx.config, ctx.tokenizer
    items = [z for z in tokenize_all(tokenizer, chunk, ctx.max_length) if z.scorable]
    if any(z.truncated for z in items):
        items = [z for z in items if not z.truncated]  # offsets of a cut sequence do not align: skip
    by_id = {ex.id: ex for ex in chunk}
    batches = make_batches(items, config.batch_tokens, ctx.pad_id)
    tokens = token_scores(ctx.model, ctx.modules, batches, {n: v[main] for n, v in ctx.directions.items()}, len(items))
    for z, per_token in zip(items, tokens, strict=True):
        example = by_id[z.id]
        if config.per_token_train:
            per_token = per_token / z.n_loss_tokens
        offsets = torch.tensor(response_offsets(tokenizer, example, z))
        for k, (a, b) in enumerate(segment(example.response, config.sentences)):
            inside = (offsets >= a) & (offsets < b)
            yield example, k, a, b, per_token[:, inside].sum(dim=1).tolist()
