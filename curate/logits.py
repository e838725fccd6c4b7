"""A causal LM's logits at chosen positions only: the output head applied where they are read.

A causal LM maps every position's hidden state to vocabulary logits, [B, T, V], while a loss or a
log-likelihood reads only some positions (a response's tokens; never the prompt or the padding).
On a small model with a large vocabulary (a 2-layer Llama with SmolLM2's 49k tokens) the head and
its softmax are most of the work, and even on SmolLM2-135M they are a fifth of a forward, so
applying the head at the N positions read, [N, V], gives the same numbers for less. Anything the
model does to its logits after the head (soft-capping, scaling) is elementwise and still applies.
The head is never a tracked module of the influence engine (`capture.select_modules`), so its
inputs may change shape.
"""

from __future__ import annotations

import torch


def logits_at(model, keep: torch.Tensor, *, head=None, **inputs) -> torch.Tensor:
    """`model(**inputs)`'s logits at the positions where `keep` ([B, T] bool) is True: [N, V],
    N = keep.sum(), rows in row-major order of `keep` (example by example, position by position).

    `head` is the model's output-embedding module (default `model.get_output_embeddings()`; pass
    it for a wrapped model). Raises ValueError when the model has none.
    """
    head = head if head is not None else model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings to restrict")

    def kept_only(module, args):  # hidden states [B, T, d] -> [1, N, d]
        return (args[0][keep].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(kept_only)
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    return logits.reshape(-1, logits.shape[-1])
