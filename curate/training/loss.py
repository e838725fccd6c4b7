"""The SFT loss with the output head applied only at the positions that carry a label
(`curate.logits`): transformers' own causal-LM loss, for the head's cost at those positions alone.

Where the model's logits are its head's output unchanged (no soft-capping or scaling after it) and
the head is a plain `torch.nn.Linear`, the head and the cross-entropy run together a chunk of rows
at a time (`curate.logits.linear_cross_entropy`), so the [N, V] logits are never held.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def completion_loss(model, inputs: dict[str, Any], num_items_in_batch=None, *, head=None):
    """Next-token cross-entropy over the labelled positions of `inputs` (nats).

    `inputs` holds `labels` [B, T] (-100 = no loss; position t's logits predict label t+1, as in
    transformers' `ForCausalLMLoss`) and the model's other inputs. Returns the sum over labelled
    tokens divided by `num_items_in_batch` when given (the token count of the whole accumulated
    batch, as the Trainer passes it), else their mean: the number transformers computes from
    full logits. `head` is the output-embedding module (default: the model's own); with none,
    the model computes its loss from full logits.
    """
    import torch

    from curate.logits import fusable_head, hidden_at, linear_cross_entropy, logits_at

    head = head if head is not None else model.get_output_embeddings()
    labels = inputs["labels"]
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    if head is None:
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        return model(**rest, labels=labels, **extra).loss
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    keep = targets != IGNORE
    if fusable_head(model, head):
        hidden = hidden_at(model, keep, head=head, **rest)
        total = linear_cross_entropy(hidden, head.weight, head.bias, targets[keep])
    else:
        logits = logits_at(model, keep, head=head, **rest)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        total = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    if num_items_in_batch is None:
        return total / keep.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
