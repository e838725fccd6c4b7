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


class PairCache:
    """Keeps every (s, a) pair of one pass in memory, under a byte budget, to replay them later.

    EK-FAC needs two passes over the fit data: covariances, then (in their eigenbasis) the
    eigenvalue correction. The second needs exactly the same s and a (labels are seeded per
    example), so when they fit in `budget_bytes` the second model pass is replaced by a replay.
    Past the budget the cache empties itself and `usable` turns False: callers then run the pass.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.entries: list[tuple[Batch, list[tuple[str, torch.Tensor, torch.Tensor]]]] = []
        self.bytes = 0
        self.overflow = False

    @property
    def usable(self) -> bool:
        return not self.overflow and bool(self.entries)

    def record(self, sink: Callable[[Batch], Sink]) -> Callable[[Batch], Sink]:
        """Wrap a sink factory so that every pair it receives is also kept."""

        def factory(batch: Batch) -> Sink:
            inner = sink(batch)
            pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
            seen: set[int] = set()  # gate and up projections share one input tensor
            if not self.overflow:
                self.entries.append((batch, pairs))

            def keep(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
                inner(name, s, a)
                if self.overflow:
                    return
                size = s.numel() * s.element_size()
                if a.data_ptr() not in seen:
                    seen.add(a.data_ptr())
                    size += a.numel() * a.element_size()
                if self.bytes + size > self.budget:
                    self.overflow = True
                    self.entries.clear()
                    return
                self.bytes += size
                pairs.append((name, s, a))

            return keep

        return factory

    def replay(self, sink: Callable[[Batch], Sink], on_batch: Callable[[Batch, None], None] | None = None) -> None:
        for batch, pairs in self.entries:
            callback = sink(batch)
            for name, s, a in pairs:
                callback(name, s, a)
            if on_batch is not None:
                on_batch(batch, None)
