"""kronfluence's side of the comparisons: a Task with our objective, and token data as a Dataset.

Shared by `tests/test_influence_kronfluence.py` and `benchmarks/bench_influence.py` so both run
kronfluence on exactly what curate computes: the train loss and the measurement are the summed
NLL of the response tokens (prompt positions get label -100), padding is excluded through the
attention mask, and the tracked modules are the ones curate selects. For the true Fisher the
labels are drawn as curate draws them (`curate.influence.batches.sampled_targets`, one seeded
stream per example), so both tools fit the same sampled Fisher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kronfluence.task import Task
from torch.utils.data import Dataset

from curate.influence.batches import example_seed, sampled_targets
from curate.influence.tokens import Tokenized

IGNORE = -100


def response_nll(model, batch: dict, *, sample: bool = False) -> torch.Tensor:
    """Summed NLL of the response tokens of a batch (prompt and padding labelled -100).

    `sample`: targets drawn from the model's predictive distribution (kronfluence's true Fisher),
    with each example's seed (`TokenDataset`) as curate draws them.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    if sample:
        keep = labels != IGNORE
        labels = sampled_targets(logits[keep], keep, labels, batch["seed"].tolist())
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )


class ResponseNLLTask(Task):
    """Train loss and measurement = summed response NLL; so a kronfluence pairwise score is
    grad NLL(q)^T (EK-FAC + damping)^{-1} grad NLL(z) = grad log p(q)^T (...)^{-1} grad log p(z),
    curate's score of z for a query set made of q alone."""

    def __init__(self, tracked: Sequence[str]):
        self.tracked = list(tracked)

    def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
        return response_nll(model, batch, sample=sample)

    def compute_measurement(self, batch, model) -> torch.Tensor:
        return response_nll(model, batch)

    def get_influence_tracked_modules(self) -> list[str]:
        return self.tracked

    def get_attention_mask(self, batch) -> torch.Tensor:
        return batch["attention_mask"]


class TokenDataset(Dataset):
    """`Tokenized` items right-padded to one width (the longest item), as kronfluence batches, with
    each item's label-sampling seed (`example_seed(sample_seed, id)`, curate's)."""

    def __init__(self, items: Sequence[Tokenized], pad_id: int = 0, sample_seed: int = 0):
        width = max(len(z.input_ids) for z in items)
        n = len(items)
        self.input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((n, width), dtype=torch.long)
        self.labels = torch.full((n, width), IGNORE, dtype=torch.long)
        self.seeds = torch.tensor([example_seed(sample_seed, z.id) for z in items], dtype=torch.long)
        for i, z in enumerate(items):
            ids = torch.tensor(z.input_ids)
            self.input_ids[i, : len(ids)] = ids
            self.attention_mask[i, : len(ids)] = 1
            self.labels[i, z.loss_start : len(ids)] = ids[z.loss_start :]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i],
                "seed": self.seeds[i]}
