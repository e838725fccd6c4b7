"""Embeddings for the `embedding` prune baseline (RDS+ of Humane et al., METHODS §3).

An example's embedding is the mean, over the non-padding tokens of its full chat-templated
sequence (prompt and response, cut at `max_length`), of the model's last hidden state: the base
model's `last_hidden_state`, which for a causal LM is `hidden_states[-1]` of the full model (after
the final norm) without computing the vocabulary logits. Batches are right-padded, so with causal
attention a row's embedding does not depend on what it is batched with.

The score of a pool row is the cosine similarity of its embedding to the mean of the normalised
query embeddings, m = mean_q(e_q / |e_q|). Since cos(x, m) = mean_q cos(x, e_q) / |m| and |m| > 0 is
the same for every row, this ranks rows exactly as the mean over queries of their cosine to each
query, while staying in [-1, 1] (a row equal to the only query scores 1).

torch is imported inside the functions so that `curate --help` does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from curate.data.example import Example

if TYPE_CHECKING:
    import torch


def embed_examples(model, tokenizer, examples: Sequence[Example], max_length: int | None,
                   batch_tokens: int) -> torch.Tensor:
    """Mean-pooled last hidden states, float32 [N, hidden], in the order of `examples`.

    Runs under `torch.no_grad()` on the model's device, in batches of at most `batch_tokens`
    padded tokens (longest first). Raises `DataError` for an example the chat template cannot
    render with an assistant response last (see `tokenize_example`).
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
    return out


def cosine_scores(pool: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """cos(pool_i, m) with m the mean of the normalised rows of `queries`: [N] from [N, H], [Q, H]."""
    import torch
    import torch.nn.functional as F

    direction = F.normalize(queries.to(torch.float64), dim=1).mean(dim=0)
    return F.normalize(pool.to(torch.float64), dim=1) @ F.normalize(direction, dim=0)


def embedding_scores(model_name: str, examples: Sequence[Example], queries: Sequence[Example], *,
                     max_length: int | None, batch_tokens: int, device: str = "auto") -> list[float]:
    """Load `model_name` (path, Hub id or alias) in float32 and score `examples` against `queries`.

    Returns one cosine score per example, in order (higher = more like the queries).
    """
    import torch

    from curate.models import load_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(model_name, dtype=torch.float32, device=device)
    query_emb = embed_examples(model, tokenizer, queries, max_length, batch_tokens)
    pool_emb = embed_examples(model, tokenizer, examples, max_length, batch_tokens)
    return cosine_scores(pool_emb, query_emb).tolist()
