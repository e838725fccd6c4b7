"""Batched generation with transformers: chat template, left padding, greedy or seeded sampling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curate.errors import DataError, UsageError
from curate.progress import Progress, Silent

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    """One sampled answer. `n_tokens`: generated tokens, the end-of-turn token included when
    present. `truncated`: generation stopped at `max_new_tokens` without an end-of-turn token.
    `error`: why there is no answer (a server refused the request), else None."""

    text: str
    n_tokens: int
    truncated: bool
    error: str | None = None


def chat_prompts(tokenizer: PreTrainedTokenizerBase, user_turns: Sequence[str]) -> list[str]:
    """Each user turn rendered by the tokenizer's chat template, ending with the assistant header."""
    if not getattr(tokenizer, "chat_template", None):
        return list(user_turns)
    return [tokenizer.apply_chat_template([{"role": "user", "content": u}], tokenize=False,
                                          add_generation_prompt=True) for u in user_turns]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    user_turns: Sequence[str],
    *,
    max_new_tokens: int = 512,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[list[Generation]]:
    """Answer each user turn `samples` times; returns `[len(user_turns)][samples]` generations.

    `temperature` 0 is greedy decoding (then all samples are identical, so `samples` must be 1);
    above 0 samples with that temperature and `top_p` (no top-k). Sampling is seeded per batch
    (`seed + index of the batch's first prompt`), so results do not depend on earlier batches.
    `batch_size` counts prompts; each batch is left padded and generates `batch_size * samples`
    sequences at once. No special tokens are added beyond the chat template's own.
    """
    import torch

    if temperature < 0:
        raise UsageError(f"temperature must be >= 0, got {temperature}")
    if samples > 1 and temperature == 0:
        raise UsageError("samples > 1 needs temperature > 0 (greedy answers would all be the same)")
    progress = progress or Silent()
    texts = chat_prompts(tokenizer, user_turns)
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    results: list[list[Generation]] = []
    try:
        with progress.task("generate", total=len(texts), unit="prompts") as advance, torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                                  add_special_tokens=False).to(device)
                kwargs = {"do_sample": False}
                if temperature > 0:
                    torch.manual_seed(seed + start)
                    kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                out = model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                     pad_token_id=pad_id, eos_token_id=eos, **kwargs)
                new = out[:, batch["input_ids"].shape[1]:].tolist()
                for i in range(len(new) // samples):
                    results.append([_decode(tokenizer, row, eos, max_new_tokens)
                                    for row in new[i * samples : (i + 1) * samples]])
                advance(len(new) // samples)
    finally:
        tokenizer.padding_side = side
    return results


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for i in value if isinstance(value, list) else [value]:
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise DataError("the tokenizer and model define no end-of-sequence token")
    return ids


def _decode(tokenizer: PreTrainedTokenizerBase, row: list[int], eos: list[int], max_new_tokens: int) -> Generation:
    end = next((j for j, t in enumerate(row) if t in eos), None)
    if end is None:
        tokens = row[:max_new_tokens]
        return Generation(tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), len(tokens) >= max_new_tokens)
    return Generation(tokenizer.decode(row[:end], skip_special_tokens=True), end + 1, False)
