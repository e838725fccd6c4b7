"""Exact per-token influence by forward-mode AD along the preconditioned query direction.

The training gradient is a sum over loss tokens, grad log p(z) = sum_t grad log p(z_t | z_<t), so
the token score grad log p(z_t | z_<t)^T V (V = the preconditioned query gradient) is the
directional derivative of each token's log-probability along V: one `torch.func.jvp` forward pass
gives all of them, and they sum exactly to the example's instance score. Masked prompt tokens
get no score. (Splitting weight gradients by the position where a weight was used, as
kronfluence's per-token mode does, answers a different question.)

Forward-mode AD has no flash/fused SDPA kernel: the pass runs `curate_blockwise` attention
(`curate.influence.blockwise_attention`), plain ops in query blocks, so memory stays O(T x block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from curate.influence.batches import Batch
from curate.influence.directions import Direction


def _weight_tangents(modules: dict[str, nn.Linear], directions: dict[str, Direction], f: int):
    """Primal parameters and tangents (function f of V) keyed by parameter name."""
    primals, tangents = {}, {}
    for name, m in modules.items():
        v = directions[name][f].to(m.weight.device, m.weight.dtype)
        primals[f"{name}.weight"] = m.weight.detach()
        tangents[f"{name}.weight"] = v[:, : m.in_features].contiguous()
        if m.bias is not None:
            primals[f"{name}.bias"] = m.bias.detach()
            tangents[f"{name}.bias"] = v[:, m.in_features].contiguous()
    return primals, tangents


def token_scores(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    directions: dict[str, Direction],
    n_rows: int,
) -> list[torch.Tensor]:
    """Per row (by `batch.rows`), a [F, n_loss_tokens] float64 tensor of token scores.

    Entry [f, j] is d/d(eps) log p(z_t | z_<t; theta + eps V_f) for the j-th response token t:
    the influence on query function f of that token's likelihood. Rows sum to the instance score.
    """
    from torch.func import functional_call, jvp

    from curate.influence.blockwise_attention import using_blockwise

    n_functions = next(iter(directions.values())).shape[0]
    out: list[torch.Tensor | None] = [None] * n_rows
    device = next(model.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        targets = batch.input_ids[:, 1:]
        mask = batch.loss_mask.bool()
        per_function = []
        for f in range(n_functions):
            primals, tangents = _weight_tangents(modules, directions, f)

            def logp_of(params, batch=batch, targets=targets):
                logits = functional_call(model, params, (), {"input_ids": batch.input_ids,
                                                             "attention_mask": batch.attention_mask}).logits[:, :-1]
                return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

            with torch.no_grad(), using_blockwise(model):
                _, tangent = jvp(logp_of, (primals,), (tangents,))
            per_function.append(tangent.to(torch.float64))
        stacked = torch.stack(per_function, dim=1)  # [B, F, T-1]
        for b, row in enumerate(batch.rows):
            out[row] = stacked[b][:, mask[b]].cpu()
    return out  # type: ignore[return-value]
