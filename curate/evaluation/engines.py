"""Generation engines behind one interface: transformers in this process (`hf`), or any
OpenAI-compatible server (`server`: vLLM, SGLang, llama.cpp, a hosted API; `vllm` is a server
curate starts and stops itself, `curate.evaluation.vllm`).

    engine = ServerEngine(ServerSettings(base_url="http://localhost:8000/v1", model="my-model",
                                         cache="run/generations.sqlite"))
    answers = engine.generate(["What is 2 + 2?"], max_new_tokens=512, samples=4, temperature=0.6, top_p=0.95, seed=0)

`ServerEngine` drives the tagger's async client (`curate.tagging.client.Rater`): at most
`concurrency` requests in flight, retries with backoff on 429/5xx/dropped connections, a timeout
retried once, and every completion committed to a SQLite cache keyed by the server's model id,
the prompt and the sampling parameters (sample k of a prompt is sent with `seed = seed + k`), so a
killed evaluation, run again, regenerates nothing it finished. Before sending anything it asks
the server's `/v1/models` for the model and refuses a server that does not serve it. A request the
server refuses (e.g. HTTP 400, prompt over the context) becomes that answer's `error`: the answer
is graded wrong with that status and counted, the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from curate.errors import UsageError
from curate.evaluation.generate import Generation
from curate.progress import Progress, Silent

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ENGINES = ("hf", "server", "vllm")
PROMPT_ID = "generate-v1"  # the cache's prompt name and hash for generations (the rendered text is the user turn)


class Engine(Protocol):
    """Answers user turns: `[len(user_turns)][samples]` generations."""

    name: str

    def generate(self, user_turns: Sequence[str], *, max_new_tokens: int, samples: int, temperature: float,
                 top_p: float, seed: int, progress: Progress | None = None) -> list[list[Generation]]: ...


@dataclass
class HFEngine:
    """transformers' `generate` on a loaded model (`curate.evaluation.generate`)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    batch_size: int = 8
    name: str = "hf"

    def generate(self, user_turns: Sequence[str], *, max_new_tokens: int, samples: int, temperature: float,
                 top_p: float, seed: int, progress: Progress | None = None) -> list[list[Generation]]:
        from curate.evaluation.generate import generate

        return generate(self.model, self.tokenizer, user_turns, max_new_tokens=max_new_tokens, samples=samples,
                        temperature=temperature, top_p=top_p, seed=seed, batch_size=self.batch_size,
                        progress=progress)


@dataclass(frozen=True)
class ServerSettings:
    """An OpenAI-compatible endpoint: `base_url` (…/v1), `model` (its id on the server), the
    environment variable holding the key (never stored), requests in flight, seconds per
    request, and the SQLite cache file (None: in memory, nothing kept)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    timeout: float = 600.0
    max_retries: int = 4
    cache: str | None = None


@dataclass
class ServerEngine:
    settings: ServerSettings
    name: str = "server"

    def check(self) -> None:
        """Refuse a server that does not list the model (or does not answer `/v1/models`)."""
        from curate.tagging.client import served_models

        url = self.settings.base_url.rstrip("/") + "/models"
        try:
            served = [m.get("id") for m in served_models(self.settings.base_url,
                                                         os.environ.get(self.settings.api_key_env) or "EMPTY")]
        except (OSError, ValueError, AttributeError) as err:
            raise UsageError(f"{url}: no model list from the server ({err})") from None
        if self.settings.model not in served:
            raise UsageError(f"{url} serves {', '.join(map(str, served)) or 'no model'}, not "
                             f"{self.settings.model!r}: refusing to evaluate another model")

    def generate(self, user_turns: Sequence[str], *, max_new_tokens: int, samples: int, temperature: float,
                 top_p: float, seed: int, progress: Progress | None = None) -> list[list[Generation]]:
        """`samples` answers per turn; sample k is requested with `seed + k` (greedy when
        `temperature` is 0). `truncated`: the reply used all `max_new_tokens`."""
        import asyncio

        from curate.tagging.cache import ResponseCache, request_key
        from curate.tagging.client import Counters, Rater

        if samples > 1 and temperature == 0:
            raise UsageError("samples > 1 needs temperature > 0 (greedy answers would all be the same)")
        self.check()
        progress = progress or Silent()
        s = self.settings
        prompt = _CachePrompt(PROMPT_ID, PROMPT_ID)
        jobs = []
        for i, turn in enumerate(user_turns):
            for k in range(samples):
                params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, "seed": seed + k}
                jobs.append((i, k, turn, params, request_key(s.model, PROMPT_ID, turn, params)))
        cache = ResponseCache(s.cache or ":memory:")
        counters = Counters()
        out: list[list[Generation | None]] = [[None] * samples for _ in user_turns]

        async def run() -> None:
            rater = Rater(base_urls=[s.base_url], api_key=os.environ.get(s.api_key_env) or "EMPTY", model=s.model,
                          params={}, concurrency=s.concurrency, timeout=s.timeout, max_retries=s.max_retries,
                          backoff=0.5, max_backoff=30.0, cache=cache, timeout_retries=1)
            hits = cache.lookup(j[4] for j in jobs)
            try:
                with progress.task("generate (server)", total=len(jobs), unit="answers") as advance:
                    async def one(i: int, k: int, turn: str, params: dict, key: str) -> None:
                        hit = hits.get(key)
                        if hit is not None:
                            out[i][k] = _generation(hit.content, hit.tokens_out, max_new_tokens, None)
                        else:
                            done = await rater.complete(key, turn, prompt, counters, params=params)
                            out[i][k] = _generation(done.content, done.tokens_out, max_new_tokens, done.error)
                        advance(1)

                    await asyncio.gather(*(one(*job) for job in jobs))
            finally:
                await rater.close()

        try:
            asyncio.run(run())
        finally:
            cache.close()
        return [[g for g in row if g is not None] for row in out]


@dataclass(frozen=True)
class _CachePrompt:
    """What the cache records as a request's prompt (name and hash)."""

    name: str
    hash: str


def _generation(content: str | None, tokens_out: int, max_new_tokens: int, error: str | None) -> Generation:
    if error is not None or content is None:
        return Generation("", 0, False, error=error or "no content in the reply")
    return Generation(content, tokens_out, tokens_out >= max_new_tokens)
