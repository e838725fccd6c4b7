"""Attention in query blocks from plain differentiable ops, for forward-mode AD on long traces.

No flash or fused SDPA kernel supports forward-mode AD, and eager attention materialises all
heads' T x T weights (and, under `jvp`, their tangents). This computes softmax(q k^T) v one block of
`BLOCK` queries at a time, so the transient is [B, H, BLOCK, T]: memory O(T x BLOCK) per layer
instead of O(T^2). Registered with transformers' attention interface as `curate_blockwise`, with
SDPA's mask (None for an unpadded causal batch, else a boolean [B, 1, T, S] keep-mask). It keeps
the model's dtype throughout (eager attention takes its softmax in float32).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

NAME = "curate_blockwise"
BLOCK = 256


def blockwise_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, H, T, D], key/value [B, H_kv, S, D] -> ([B, T, H, D], None)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: share each key/value head across its query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    t, s = query.shape[2], key.shape[2]
    key_pos = torch.arange(s, device=query.device)
    out = []
    for q0 in range(0, t, BLOCK):
        q = query[:, :, q0 : q0 + BLOCK]
        scores = (q @ key.transpose(-1, -2)) * scale  # [B, H, blk, S]
        if attention_mask is None:  # causal, no padding; queries sit at the end of the keys
            query_pos = torch.arange(q0, q0 + q.shape[2], device=query.device) + (s - t)
            keep = key_pos[None, :] <= query_pos[:, None]
        elif attention_mask.dtype == torch.bool:
            keep = attention_mask[:, :, q0 : q0 + q.shape[2]]
        else:  # an additive float mask
            scores = scores + attention_mask[:, :, q0 : q0 + q.shape[2]]
            keep = None
        if keep is not None:
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        out.append(torch.softmax(scores, dim=-1) @ value)
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `curate_blockwise` available to every transformers model (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, blockwise_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def using_blockwise(model) -> Iterator[None]:
    """Run `model` with blockwise attention inside the block, restoring its own afterwards."""
    register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
