"""The rater client: `AsyncOpenAI` against one or more OpenAI-compatible servers.

- Load: each attempt goes to the server with the fewest requests in flight (relative to its own
  limit) among the healthy ones. A server whose attempt failed (5xx, 429, timeout, dropped
  connection) cools down for a backoff that doubles with its run of failures, and a retry avoids
  the server that failed it while another is up, so one dead server costs a few retries, not the
  run; a failed server is still used when no other is available.
- Bound: at most `concurrency` HTTP requests in flight in total (counted only while a request is
  on the wire, not while backing off), and at most `server_concurrency` on any one server when
  given. Within that bound the limit adapts as TCP's congestion window does: a timeout halves it
  (a slow server gets fewer requests at once), each success adds 1/limit, up to `concurrency`.
- Retries (ours, counted by cause; the openai client's own are off with `max_retries=0`): on 429
  (waiting at least the server's `Retry-After` / `retry-after-ms`), 408/409, 5xx, dropped
  connections and malformed bodies, up to `max_retries`; a timeout only `timeout_retries` times
  (a server keeps working on an abandoned request, so retrying a slow prompt adds load). Backoff
  `base * 2**attempt`, capped, times a jitter factor in [0.5, 1.5). Other 4xx fail at once; a
  context-length 400 fails with the cause `context`, which the tagger answers by shrinking the
  prompt once. Each request may carry its own timeout (the tagger's grows with the prompt).
- Dedupe: identical requests (same cache key) in flight at the same time are sent once.
- Every completed response is written to the cache before it is handed back.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

from curate.tagging.cache import ResponseCache
from curate.tagging.structured import REFUSED

CONSTRAINT_KEYS = ("response_format", "guided_regex")


@dataclass
class Outcome:
    """A finished request: `content` (None when it failed), usage, and the error after retries."""

    content: str | None
    tokens_in: int = 0
    tokens_out: int = 0
    error: str | None = None
    cached: bool = False


@dataclass
class Counters:
    """Accounting for one task: requests sent (attempts), retries, failures, cache hits, tokens."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    deduped: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failed attempts by cause ("timeout", "429", "context", ...)
    retry_causes: dict[str, int] = field(default_factory=dict)  # retries by the cause of the attempt before


def request_body(model: str, rendered: str, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of one chat request: the online call and the batch export both send this."""
    return {"model": model, "messages": [{"role": "user", "content": rendered}], **params}


@dataclass
class Server:
    """One base URL: its clients, requests in flight, limit, and health (for load balancing)."""

    url: str
    clients: list[Any]
    limit: int
    load: int = 0
    requests: int = 0
    failures: int = 0  # attempts that failed (any reason)
    streak: int = 0  # consecutive failed attempts; 0 after a success
    down_until: float = 0.0  # monotonic time before which it is only a last resort
    turn: int = 0  # round-robin over its clients


class RetryableError(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class Rater:
    """Sends chat requests with retries; one instance per event loop."""

    def __init__(self, *, base_urls: list[str], api_key: str, model: str, params: dict[str, Any],
                 concurrency: int, timeout: float, max_retries: int, backoff: float, max_backoff: float,
                 cache: ResponseCache, seed: int = 0, server_concurrency: int | None = None,
                 timeout_retries: int | None = None, fallback: bool = False) -> None:
        from openai import AsyncOpenAI

        # Several clients per server when concurrency is high: the HTTP connection pool scans its
        # connections for every request, so one pool of 256 costs more CPU than eight of 32.
        limit = min(concurrency, server_concurrency or concurrency)
        per_url = max(1, -(-limit // 32))
        self.servers = [
            Server(url, [AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=timeout)
                         for _ in range(per_url)], limit)
            for url in base_urls
        ]
        self.model = model
        self.params = params
        self.max_retries = max_retries
        self.timeout = timeout
        self.timeout_retries = max_retries if timeout_retries is None else timeout_retries
        self.fallback = fallback  # structured "auto": drop the answer constraint once a server refuses it
        self.unconstrained: str | None = None  # why the constraint was dropped (the server's message)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.cache = cache
        self.concurrency = concurrency
        self.window = float(concurrency)  # the adaptive limit on requests in flight (see the module doc)
        self.in_flight = 0
        self.freed = asyncio.Condition()  # notified when a request leaves the wire
        self.inflight: dict[str, asyncio.Future] = {}
        self.completed: dict[str, Outcome] = {}  # this run's responses, for copies queued after the first finished
        self.rng = random.Random(seed)

    async def close(self) -> None:
        for server in self.servers:
            for client in server.clients:
                await client.close()

    def _pick(self, avoid: Server | None) -> Server | None:
        """The least-loaded server under its limit: healthy ones first, `avoid` (the server that
        failed this request's last attempt) only when nothing else is free. None: all are full."""
        free = [s for s in self.servers if s.load < s.limit]
        if not free:
            return None
        clock = now()
        for pool in ([s for s in free if s.down_until <= clock and s is not avoid],
                     [s for s in free if s is not avoid], free):
            if pool:
                return min(pool, key=lambda s: (s.load / s.limit, s.down_until))
        return None

    async def _acquire(self, avoid: Server | None) -> Server:
        async with self.freed:
            while self.in_flight >= max(1, int(self.window)) or (server := self._pick(avoid)) is None:
                await self.freed.wait()
            server.load += 1
            self.in_flight += 1
            return server

    async def _release(self, server: Server) -> None:
        server.load -= 1
        self.in_flight -= 1
        async with self.freed:
            self.freed.notify_all()

    def _failed(self, server: Server) -> None:
        server.failures += 1
        server.streak += 1
        pause = min(self.max_backoff, self.backoff * 2 ** (server.streak - 1))
        server.down_until = max(server.down_until, now() + pause)

    def stats(self) -> dict[str, dict[str, int]]:
        """{url: {"requests", "failures"}} over this rater's life (attempts, not distinct requests)."""
        out: dict[str, dict[str, int]] = {}
        for s in self.servers:
            entry = out.setdefault(s.url, {"requests": 0, "failures": 0})
            entry["requests"] += s.requests
            entry["failures"] += s.failures
        return out

    async def complete(self, key: str, rendered: str, prompt: Any, counters: Counters,
                       timeout: float | None = None, params: dict[str, Any] | None = None) -> Outcome:
        """The response to one user message `rendered` (cache key `key`), sent at most once;
        `timeout`: seconds to wait for it (default: the rater's); `params`: sampling and answer
        constraint for this request (default: the rater's)."""
        done = self.completed.get(key)
        if done is not None:
            counters.deduped += 1
            return done
        running = self.inflight.get(key)
        if running is not None:
            counters.deduped += 1
            return await asyncio.shield(running)
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            outcome = await self._send(key, rendered, prompt, counters, timeout or self.timeout,
                                       self.params if params is None else params)
            if outcome.error is None:
                self.completed[key] = Outcome(outcome.content, 0, 0, cached=True)
            future.set_result(outcome)
            return outcome
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # mark retrieved: waiters (if any) get it, no "never retrieved" noise
            raise
        finally:
            del self.inflight[key]

    async def _send(self, key: str, rendered: str, prompt: Any, counters: Counters, timeout: float,
                    params: dict[str, Any]) -> Outcome:
        body = request_body(self.model, rendered, self._allowed(params))
        last = "no attempt"
        avoid: Server | None = None
        timeouts = 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                counters.retries += 1
                cause = last.split(":")[0]
                counters.retry_causes[cause] = counters.retry_causes.get(cause, 0) + 1
            server = await self._acquire(avoid)
            server.requests += 1
            counters.requests += 1
            error: RetryableError | FatalError | None = None
            try:
                server.turn = (server.turn + 1) % len(server.clients)
                client = server.clients[server.turn]
                try:
                    content, t_in, t_out = await self._call(client, body, timeout)
                except FatalError as err:
                    if not self._refused_constraint(body, str(err)):
                        raise
                    body = request_body(self.model, rendered, self._allowed(params))  # once, then never again
                    server.requests += 1
                    counters.requests += 1
                    content, t_in, t_out = await self._call(client, body, timeout)
            except (RetryableError, FatalError) as err:
                error = err
            finally:
                await self._release(server)  # off the wire: a backoff holds no slot
            if error is not None:
                last = str(error)
                counters.errors[last.split(":")[0]] = counters.errors.get(last.split(":")[0], 0) + 1
                if isinstance(error, FatalError):
                    server.failures += 1
                    break
                self._failed(server)
                avoid = server
                if last.startswith("timeout"):
                    timeouts += 1
                    self.window = max(1.0, self.window / 2)
                if attempt == self.max_retries or timeouts > self.timeout_retries:
                    break
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + self.rng.random())
                await asyncio.sleep(max(delay, error.wait or 0.0))
                continue
            server.streak, server.down_until = 0, 0.0
            self.window = min(float(self.concurrency), self.window + 1 / self.window)
            counters.tokens_in += t_in
            counters.tokens_out += t_out
            self.cache.put(key, model=self.model, prompt=prompt.name, prompt_hash=prompt.hash,
                           params=params, rendered=rendered, content=content,
                           tokens_in=t_in, tokens_out=t_out, base_url=server.url)
            return Outcome(content, t_in, t_out)
        counters.failures += 1
        return Outcome(None, error=f"request failed after {attempt + 1} attempt(s): {last}")

    def _allowed(self, params: dict[str, Any]) -> dict[str, Any]:
        """`params` without the answer constraint once a server has refused it."""
        if self.unconstrained is None:
            return params
        return {k: v for k, v in params.items() if k not in CONSTRAINT_KEYS}

    def _refused_constraint(self, body: dict[str, Any], error: str) -> bool:
        """Whether `error` is a server refusing the answer constraint `body` carries, under
        structured "auto"; then every later request goes without it (recorded once)."""
        if not (self.fallback and error.startswith("400") and any(k in body for k in CONSTRAINT_KEYS)
                and REFUSED.search(error)):
            return False
        self.unconstrained = self.unconstrained or error
        return True

    async def _call(self, client: Any, body: dict[str, Any], timeout: float) -> tuple[str | None, int, int]:
        import openai

        try:
            # `post` with a plain dict body: the same endpoint, retries and errors as
            # `chat.completions.create`, without its per-request type transform of the messages
            # (about 1 ms of CPU per request, the client's largest cost at hundreds of requests/s).
            data = await client.post("/chat/completions", body=body, cast_to=object, options={"timeout": timeout})
        except openai.APIStatusError as err:
            status = err.status_code
            if status == 429:
                raise RetryableError("429: rate limited", _retry_after(err.response.headers)) from None
            if status in (408, 409) or status >= 500:
                raise RetryableError(f"{status}: server error", _retry_after(err.response.headers)) from None
            message = _status_message(err)
            if status == 400 and CONTEXT_ERROR.search(message):
                raise FatalError(f"context: {status}: {_short(message, 400)}") from None
            raise FatalError(f"{status}: {_short(message)}") from None
        except openai.APITimeoutError:
            raise RetryableError("timeout: no response in time") from None
        except openai.APIConnectionError as err:
            raise RetryableError(f"connection: {_short(str(err.__cause__ or err))}") from None
        except (ValueError, TypeError, KeyError) as err:  # a body that is not the JSON we expect
            raise RetryableError(f"malformed: {_short(str(err))}") from None
        return completion_content(data)


def json_request(url: str, body: dict[str, Any] | None = None, *, api_key: str | None = None,
                 timeout: float = 30.0) -> Any:
    """GET (or POST `body` to) an endpoint of an OpenAI-compatible server and return its JSON.
    Raises `OSError` (no server, HTTP error) or `ValueError` (not JSON); callers decide."""
    import json
    import urllib.request

    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def served_models(base_url: str, api_key: str | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The entries of the server's `GET /v1/models` (`base_url` ends in /v1); raises as `json_request`."""
    return json_request(base_url.rstrip("/") + "/models", api_key=api_key, timeout=timeout).get("data") or []


def completion_content(data: Any) -> tuple[str | None, int, int]:
    """(content, prompt tokens, completion tokens) of a chat.completion body; `RetryableError`
    when it is not one (the online client retries it, a batch import reports the line)."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (TypeError, KeyError, IndexError):
        raise RetryableError("malformed: no choices[0].message.content in the response") from None
    if content is not None and not isinstance(content, str):
        raise RetryableError("malformed: message content is not text")
    usage = data.get("usage") or {}
    return content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class FatalError(Exception):
    pass


# How servers word a prompt over the context: OpenAI / vLLM ("maximum context length"), llama.cpp
# ("exceeds the available context size"), SGLang ("longer than the model's context length").
CONTEXT_ERROR = re.compile(r"context.length|maximum context|context size|context_length_exceeded|too many tokens",
                           re.I)


def _status_message(err: Any) -> str:
    """The server's own error message (not the client's "Error code: 400 - {...}" wrapping)."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(inner.get("message"), str):
            return inner["message"]
    return str(getattr(err, "message", err))


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds; HTTP dates are ignored)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is not None:
            try:
                return min(max(float(value) * scale, 0.0), 300.0)
            except ValueError:
                continue
    return None


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def now() -> float:
    return time.perf_counter()
