"""Pad tokenised examples into length-sorted batches and compute their response log-likelihoods."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from curate.influence.tokens import Tokenized


@dataclass
class Batch:
    """A right-padded batch.

    `input_ids`, `attention_mask`: [B, T]. `loss_mask`: [B, T-1] float, 1 where position t's
    prediction of token t+1 is a response token (so it enters the summed log-likelihood).
    `rows`: for each batch element, its index in the list the batch was made from.
    """

    ids: list[str]
    rows: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device) -> Batch:
        """The same batch with its tensors on `device`."""
        if self.input_ids.device == torch.device(device):
            return self
        return Batch(self.ids, self.rows, self.input_ids.to(device), self.attention_mask.to(device),
                     self.loss_mask.to(device))

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def make_batches(items: Sequence[Tokenized], batch_tokens: int, pad_id: int) -> list[Batch]:
    """Group `items` into batches of at most `batch_tokens` padded tokens (B x T_max).

    Items are sorted by length (longest first) so padding stays small; a single item longer than
    the budget gets a batch of its own.
    """
    order = sorted(range(len(items)), key=lambda i: -len(items[i].input_ids))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(items[groups[-1][0]].input_ids) * (len(groups[-1]) + 1) <= batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [_collate(items, g, pad_id) for g in groups]


def _collate(items: Sequence[Tokenized], rows: list[int], pad_id: int) -> Batch:
    width = max(len(items[i].input_ids) for i in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1))
    for b, i in enumerate(rows):
        ids = items[i].input_ids
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        # Position t predicts token t+1; response tokens start at loss_start.
        loss_mask[b, items[i].loss_start - 1 : len(ids) - 1] = 1.0
    return Batch([items[i].id for i in rows], list(rows), input_ids, attention, loss_mask)


def example_seed(seed: int, example_id: str) -> int:
    """A per-example seed that does not depend on batch composition or run order (for resume)."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def response_logits(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logits, keep)`: the output head at the response positions only (`curate.logits`),
    logits [N, V] for the N positions where `keep` [B, T-1] (bool, = `loss_mask`) is set, in
    row-major order; position t predicts token t+1."""
    from curate.logits import logits_at

    keep = batch.loss_mask.bool()
    logits = logits_at(model, torch.nn.functional.pad(keep, (0, 1)), input_ids=batch.input_ids,
                       attention_mask=batch.attention_mask)
    return logits, keep


def response_hidden(model, batch: Batch, head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(hidden, logits, keep)`: the hidden states `head` reads at the response positions, [N, d]
    (in the model's autograd graph; `curate.logits.hidden_at`), their logits [N, V] made from a
    detached copy (no graph: `curate.logits.head_logprobs` differentiates them itself), and `keep` [B, T-1] as
    in `response_logits`. For a model whose logits are `head`'s output unchanged
    (`curate.logits.returns_head_output`)."""
    from curate.logits import hidden_at

    keep = batch.loss_mask.bool()
    hidden = hidden_at(model, torch.nn.functional.pad(keep, (0, 1)), head=head, input_ids=batch.input_ids,
                       attention_mask=batch.attention_mask)
    with torch.no_grad():
        logits = torch.nn.functional.linear(hidden.detach(), head.weight, head.bias)
    return hidden, logits, keep


def sampled_targets(logits: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int]
                    ) -> torch.Tensor:
    """`targets` [B, T-1] with the kept positions replaced by tokens sampled from the model's own
    predictive distribution (the true Fisher of Grosse et al.). `logits` [N, V] at the `keep`
    positions (as `response_logits` gives them); row b draws with `torch.Generator` seeded
    `seeds[b]` (`example_seed`), so a rerun, another batch composition or another tool given the
    same seeds draws the same tokens."""
    sampled = targets.clone()
    with torch.no_grad():
        for b, rows in enumerate(logits.detach().split(keep.sum(dim=1).tolist())):
            # Inverse-CDF sampling, one uniform per position of the row (drawn for every position,
            # a prefix of the same stream whatever the width, so the draws do not depend on the mask
            # or the padding; torch.multinomial is ~50x slower over a 50k vocabulary); float64
            # cumulative sums keep the tail exact enough.
            gen = torch.Generator().manual_seed(seeds[b])
            u = torch.rand(keep.shape[1], 1, generator=gen, dtype=torch.float64).to(rows.device)[keep[b]]
            cdf = torch.softmax(rows, dim=-1).to(torch.float64).cumsum_(dim=-1)
            sampled[b, keep[b]] = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1).clamp_(max=cdf.shape[1] - 1)
    return sampled


def target_logprobs(logits: torch.Tensor, keep: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities [B, T-1] of `targets` [B, T-1] under `logits` [N, V] (the `keep`
    positions); zero outside `keep`."""
    return at_kept(-torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none"), keep)


def at_kept(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """values [N] (one per True of `keep` [B, T-1], row-major) placed in a [B, T-1] tensor, zero
    elsewhere."""
    return torch.zeros(keep.shape, dtype=values.dtype, device=values.device).masked_scatter(keep, values)


def response_logprobs(model, batch: Batch, *, sample_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the response targets.

    Returns `(logp, targets)`, both [B, T-1]; `logp` is zero outside `loss_mask`. Targets are the
    data tokens, or, when `sample_seed` is given, tokens sampled from the model
    (`sampled_targets`, seeded per example by `example_seed(sample_seed, id)`).

    Without gradients and with the data tokens (an evaluation), a model on the CPU whose head
    can be taken from its hidden states (`curate.logits.fusable_head`) gets them
    from its hidden states a chunk of rows at a time (`curate.logits.head_target_logprobs`),
    without the [N, V] logits: in at least float32 (for a float32 or float64 model the same
    numbers to rounding; for a bfloat16 one more exact than its own bfloat16 head).
    """
    from curate.logits import fusable_head, head_target_logprobs, hidden_at

    targets = batch.input_ids[:, 1:]
    head = model.get_output_embeddings()
    if (sample_seed is None and not torch.is_grad_enabled() and fusable_head(model, head)
            and head.weight.device.type == "cpu"):
        keep = batch.loss_mask.bool()
        hidden = hidden_at(model, torch.nn.functional.pad(keep, (0, 1)), head=head, input_ids=batch.input_ids,
                           attention_mask=batch.attention_mask)
        return at_kept(head_target_logprobs(hidden, head.weight, head.bias, targets[keep]), keep), targets
    logits, keep = response_logits(model, batch)
    if sample_seed is not None:
        targets = sampled_targets(logits, keep, targets, [example_seed(sample_seed, i) for i in batch.ids])
    return target_logprobs(logits, keep, targets), targets
