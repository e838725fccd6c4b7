"""Embedding similarity, the RDS+ baseline of Humane et al. (METHODS §3): `curate score --method
embedding` writes `curate_embedding_<q>` per query set q, which `curate prune --strategy embedding`
ranks by.

An example's embedding is the mean, over the non-padding tokens of its full chat-templated
sequence (prompt and response, cut at `max_length`), of the model's last hidden state: the base
model's `last_hidden_state`, which for a causal LM is `hidden_states[-1]` of the full model (after
the final norm) without computing the vocabulary logits. Batches are right-padded, so with causal
attention a row's embedding does not depend on what it is batched with.

The score of a pool row on query set Q is the cosine similarity of its embedding to the mean of
the normalised query embeddings, m = mean_{q in Q}(e_q / |e_q|). Since cos(x, m) = mean_q cos(x, e_q) / |m| and |m| > 0 is
the same for every row, this ranks rows exactly as the mean over queries of their cosine to each
query, while staying in [-1, 1] (a row equal to the only query scores 1).

torch is imported inside the functions so that `curate --help` does not load it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from curate.data.columns import EMBEDDING_PREFIX
from curate.data.example import Example

WINDOW_ROWS = 4096  # pool rows tokenised and embedded together; only their scores are kept

if TYPE_CHECKING:
    import polars as pl
    import torch

    from curate.data import Pool
    from curate.influence.config import ScoreConfig
    from curate.progress import Progress


def embed_examples(model, tokenizer, examples: Sequence[Example], max_length: int | None,
                   batch_tokens: int, advance: Callable[[int], None] | None = None) -> torch.Tensor:
    """Mean-pooled last hidden states, float32 [N, hidden], in the order of `examples`.

    Runs under `torch.no_grad()` on the model's device, in batches of at most `batch_tokens`
    padded tokens (longest first). Raises `DataError` for an example the chat template cannot
    render with an assistant response last (see `tokenize_example`). `advance(n)` is called with
    the rows of each batch done.
    """
    import torch

    from curate.influence.batches import make_batches
    from curate.influence.tokens import tokenize_example

    items = [tokenize_example(tokenizer, e, max_length) for e in examples]
    device = next(model.parameters()).device
    base = getattr(model, "base_model", model)  # the decoder without the LM head
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    hidden = int(model.config.hidden_size)
    out = torch.zeros((len(items), hidden), dtype=torch.float32)
    with torch.no_grad():
        for batch in make_batches(items, batch_tokens, pad_id):
            batch = batch.to(device)
            states = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            mask = batch.attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (states.to(torch.float32) * mask).sum(dim=1) / mask.sum(dim=1)
            out[torch.tensor(batch.rows)] = pooled.cpu()
            if advance is not None:
                advance(len(batch.rows))
    return out


def cosine_scores(pool: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """cos(pool_i, m) with m the mean of the normalised rows of `queries`: [N] from [N, H], [Q, H]."""
    import torch
    import torch.nn.functional as F

    direction = F.normalize(queries.to(torch.float64), dim=1).mean(dim=0)
    return F.normalize(pool.to(torch.float64), dim=1) @ F.normalize(direction, dim=0)


def embedding_table(pool: Pool, queries: dict[str, Pool], config: ScoreConfig, *, model=None, tokenizer=None,
                    progress: Progress | None = None) -> pl.DataFrame:
    """`curate_id` and `curate_embedding_<q>` (float64 cosine in [-1, 1], higher = more like query
    set q) for every row of `pool`, in order, under `config.model` (loaded in `config.dtype` on
    `config.resolved_device` unless `model`/`tokenizer` are given), with `config.max_length`
    tokens per example and `config.batch_tokens` per batch. Each row is embedded once.

    The query sets are embedded first; the pool is then read and embedded `WINDOW_ROWS` rows at a
    time, and only each row's scores are kept (not its text or its embedding)."""
    import itertools

    import polars as pl
    import torch

    from curate.models import load_model
    from curate.progress import Silent

    progress = progress or Silent()
    if model is None:
        model, tokenizer = load_model(config.model, dtype=getattr(torch, config.dtype), device=config.resolved_device,
                                      trust_remote_code=config.trust_remote_code)
    total = len(pool) + sum(len(q) for q in queries.values())
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in queries}
    with progress.task("embedding queries and rows", total=total, unit="rows") as advance:
        directions = {name: embed_examples(model, tokenizer, list(query.examples()), config.max_length,
                                           config.batch_tokens, advance) for name, query in queries.items()}
        examples = pool.examples()
        while window := list(itertools.islice(examples, WINDOW_ROWS)):
            rows = embed_examples(model, tokenizer, window, config.max_length, config.batch_tokens, advance)
            for name, direction in directions.items():
                scores[name].append(cosine_scores(rows, direction))
    columns = {f"{EMBEDDING_PREFIX}{name}": (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)).numpy()
               for name, parts in scores.items()}
    return pl.DataFrame({"curate_id": pl.Series(pool.columns(["curate_id"]).column("curate_id")), **columns},
                        schema_overrides={c: pl.Float64 for c in columns})
