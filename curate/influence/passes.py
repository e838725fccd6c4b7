"""One forward+backward over a list of batches, with the tracked layers tapped."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from curate.influence.batches import Batch, response_logprobs
from curate.influence.capture import Sink, tapped


def run_pass(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    sink: Callable[[Batch], Sink],
    *,
    sample_seed: int | None = None,
    weights: Callable[[Batch], torch.Tensor] | None = None,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
) -> None:
    """For each batch: forward, loss L = -sum_b w_b * sum_t log p(target_bt), backward.

    `sink(batch)` returns the per-layer callback for that batch (it receives s = dL/d(output) and
    a, unreduced over positions). Padding positions carry s = 0, since right padding never feeds
    the loss, but callbacks that average over positions must still mask them. `weights(batch)`
    ([B]) scales each example's loss (e.g. 1/n_tokens for per-token objectives); `on_batch`
    receives the per-token log-probs [B, T-1] (detached) after the backward.
    """
    device = next(model.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        with tapped(model, modules, sink(batch)):
            logp, _ = response_logprobs(model, batch, sample_seed=sample_seed)
            per_example = logp.sum(dim=1)
            if weights is not None:
                per_example = per_example * weights(batch).to(per_example.dtype)
            loss = -per_example.sum()
            loss.backward()
        if on_batch is not None:
            on_batch(batch, logp.detach())
