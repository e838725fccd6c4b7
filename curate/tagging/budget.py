"""Token budgets for rater requests: count a prompt's tokens, know the server's context, fit to it.

Counting (`Budget.tokens`): with `--tokenizer` (a path, Hub id or alias: the rater's own) exactly;
else the server's `POST /tokenize` (llama.cpp, vLLM) when it answers one probe; else the estimate.
The estimate (`Budget.estimate`) errs long on purpose: ceil(chars / CHARS_PER_TOKEN) with
CHARS_PER_TOKEN = 2 (reasoning traces measure 1.8-4 characters per token; English prose ~4), so a
prompt it says fits does fit, and an exact count is only made for prompts it says may not. Every
count adds TEMPLATE_TOKENS for the chat template around the one user message.

Context (`Budget.context`): `--context N`, else the server's `GET /v1/models` entry for the model
(`max_model_len` as vLLM says it, or `context_length` / `context_window`), else unknown: prompts
are then bounded by `--max-chars` alone, and a context-length 400 shrinks and retries (the tagger).
A prompt fits when its tokens plus the reply bound (`max_tokens`) are within the context.

Timeouts (`Budget.timeout`): `--timeout` plus `--timeout-per-token` seconds per estimated prompt
token, since a server's prefill time grows with the prompt (llama.cpp on one CPU thread: ~40
tokens/s, so a 7.8k-token prompt needs minutes, not the 120 s that suits a short one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curate.tagging.client import json_request, served_models

if TYPE_CHECKING:
    from curate.tagging.config import TagConfig

CHARS_PER_TOKEN = 2.0
TEMPLATE_TOKENS = 16
_PROBE_TIMEOUT = 5.0  # seconds for the one /v1/models and /tokenize probe


@dataclass
class Budget:
    """`count`: exact token count of a text, or None (estimate only); `how` says which, for the
    card; `context`: the server's context in tokens, or None; `max_tokens`: the reply bound."""

    count: Callable[[str], int] | None
    how: str
    context: int | None
    max_tokens: int
    timeout_s: float
    timeout_per_token_s: float

    @staticmethod
    def estimate(text: str) -> int:
        """Tokens of a prompt by the estimate (errs long), template included."""
        return math.ceil(len(text) / CHARS_PER_TOKEN) + TEMPLATE_TOKENS

    def tokens(self, text: str) -> int:
        """Tokens of a prompt: exact when a count is known, else the estimate; template included."""
        return self.count(text) + TEMPLATE_TOKENS if self.count else self.estimate(text)

    @property
    def limit(self) -> int | None:
        """The most prompt tokens a request may have (None: unknown)."""
        return None if self.context is None else self.context - self.max_tokens

    def fits(self, text: str) -> bool:
        """Whether the prompt plus the reply bound fits the context (True when it is unknown)."""
        return self.limit is None or self.estimate(text) <= self.limit or self.tokens(text) <= self.limit

    def timeout(self, text: str) -> float:
        """Seconds to wait for this prompt's reply."""
        return self.timeout_s + self.timeout_per_token_s * self.estimate(text)


def make_budget(config: TagConfig) -> Budget:
    """The budget of a run: the tokenizer or the server's /tokenize for counts, and the context."""
    count, how = None, f"estimate (characters / {CHARS_PER_TOKEN:g}, errs long)"
    if config.tokenizer:
        from curate.models import load_tokenizer

        tokenizer = load_tokenizer(config.tokenizer)
        count, how = (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])), \
            f"tokenizer `{config.tokenizer}`"
    elif config.base_urls and not config.cache_only:
        count = _server_count(config.base_urls[0], config.model)
        how = "the server's /tokenize" if count else how
    context = config.context
    if context is None and config.base_urls and not config.cache_only:
        context = _server_context(config.base_urls[0], config.model, os.environ.get(config.api_key_env))
    return Budget(count, how, context, config.max_tokens, config.timeout, config.timeout_per_token)


def _root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


def _get_json(url: str, body: dict | None = None) -> dict | None:
    try:
        return json_request(url, body, timeout=_PROBE_TIMEOUT)
    except (OSError, ValueError):  # no such endpoint, not JSON, no server: the caller falls back
        return None


def _server_count(base_url: str, model: str) -> Callable[[str], int] | None:
    """A counter through the server's `/tokenize`, when one probe succeeds."""
    def count(text: str) -> int:
        answer = _get_json(_root(base_url) + "/tokenize", {"content": text, "prompt": text, "model": model})
        if answer is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)  # the server stopped answering: err long
        return int(answer["count"]) if "count" in answer else len(answer.get("tokens") or [])

    probe = _get_json(_root(base_url) + "/tokenize", {"content": "a b", "prompt": "a b", "model": model})
    return count if probe is not None and ("count" in probe or "tokens" in probe) else None


def _server_context(base_url: str, model: str, api_key: str | None) -> int | None:
    """The model's context from `GET /v1/models`, when the server says it."""
    try:
        entries = served_models(base_url, api_key, timeout=_PROBE_TIMEOUT)
    except (OSError, ValueError, AttributeError):
        return None
    entry = next((e for e in entries if e.get("id") == model), entries[0] if entries else {})
    for key in ("max_model_len", "context_length", "context_window"):
        if isinstance(entry.get(key), int):
            return entry[key]
    return None
