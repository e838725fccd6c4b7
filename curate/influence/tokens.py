"""Turn canonical examples into token ids and a loss mask, with the model's chat template."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from curate.data.example import Example
from curate.errors import DataError


@dataclass(frozen=True)
class Tokenized:
    """One tokenised example.

    `input_ids` has length T. `loss_start` is the index of the first response token: the summed
    log-likelihood covers tokens `input_ids[loss_start:]` (each predicted from its prefix), so the
    response has `T - loss_start` loss tokens. `truncated` is True when the rendered sequence was
    longer than the length bound and was cut at its end.
    """

    id: str
    input_ids: tuple[int, ...]
    loss_start: int
    truncated: bool
    full_length: int

    @property
    def n_loss_tokens(self) -> int:
        return len(self.input_ids) - self.loss_start

    @property
    def scorable(self) -> bool:
        """False when the length bound left no response token (the prompt filled it)."""
        return self.n_loss_tokens > 0


def _ids(encoded) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tokenize_example(tokenizer, example: Example, max_length: int | None) -> Tokenized:
    """Render `example` with the tokenizer's chat template; the prompt part is masked from the loss.

    The prompt is the template applied to all messages but the last, with the generation prompt;
    the response is everything after it (the assistant text and the template's end-of-turn
    tokens, so the model is scored on stopping too). Raises DataError when the template does not
    render the prompt as a prefix of the full conversation (a template that rewrites history).
    """
    if len(example.messages) < 2 or example.messages[-1]["role"] != "assistant":
        raise DataError(f"example {example.id}: the last message must be an assistant response")
    full = _ids(tokenizer.apply_chat_template(list(example.messages), tokenize=True))
    prompt = _ids(
        tokenizer.apply_chat_template(example.prompt_messages, tokenize=True, add_generation_prompt=True)
    )
    if full[: len(prompt)] != prompt:
        raise DataError(
            f"example {example.id}: the chat template does not render the prompt as a prefix of the "
            "conversation, so the response tokens cannot be located"
        )
    if len(full) <= len(prompt):
        raise DataError(f"example {example.id}: empty response")
    n = len(full)
    truncated = max_length is not None and n > max_length
    if truncated:
        full = full[:max_length]
    # When the bound cuts inside the prompt, no response token is left: the example is kept but
    # not scorable (`scorable` False), and the engine reports it instead of failing the run.
    return Tokenized(example.id, tuple(full), min(len(prompt), len(full)), truncated, n)


def tokenize_all(tokenizer, examples: Iterable[Example], max_length: int | None) -> Iterator[Tokenized]:
    for example in examples:
        yield tokenize_example(tokenizer, example, max_length)
