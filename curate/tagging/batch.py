"""OpenAI Batch JSONL: export the requests a tagging run still needs, import the answers.

The request file is the input format of the OpenAI Batch API and of `vllm run-batch`, one line per
distinct request not already in the cache:

    {"custom_id": "verification-<32 hex>", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": ..., "messages": [{"role": "user", "content": ...}], "temperature": ..., "max_tokens": ...}}

The body is `client.request_body`, the very body the online client sends. `custom_id` is the task
and the first 32 hex of the request's cache key (model, prompt hash, rendered input, sampling
parameters), so ids are stable and unique, and a results file made for another pool, prompt, model
or setting matches nothing and is refused (`DataError` naming the line). The results file is the
output format of both:

    {"id": ..., "custom_id": ..., "response": {"status_code": 200, "body": {chat.completion}}, "error": null}

An import stores each answered line in the cache under its key, exactly as the online run would;
a failed line (error set, status not 200, no message content) is reported and left out, so a later
export asks for it again.

Rows whose domain is unknown need their domain answer before their difficulty request can be
written (the prompt depends on the domain): import the first batch, then export again for those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import DataError, UsageError
from curate.stages import atomic_write_bytes
from curate.tagging.cache import Cached, ResponseCache
from curate.tagging.client import RetryableError, completion_content, request_body
from curate.tagging.config import TagConfig
from curate.tagging.tagger import Job, tag_pool

if TYPE_CHECKING:
    from curate.data import Pool

BATCH_URL = "/v1/chat/completions"
_KEY_HEX = 32


def custom_id(job: Job) -> str:
    """`<task>-<first 32 hex of the cache key>`: stable, unique per distinct request."""
    return f"{job.task}-{job.key[:_KEY_HEX]}"


@dataclass
class BatchExport:
    """What `export_batch` wrote: `requests` lines; `cached` requests already answered;
    `deferred` rows whose difficulty request waits for their domain answer (export again after
    importing this batch)."""

    path: str
    requests: int
    cached: int
    deferred: int


@dataclass
class BatchImport:
    """What `import_batch` read: result `lines`, answers `stored` in the cache, answers `already`
    cached, and `failed` lines (`"line N (custom_id): reason"`), left for a later run."""

    path: str
    lines: int = 0
    stored: int = 0
    already: int = 0
    failed: list[str] = field(default_factory=list)


def _plan(pool: Pool, config: TagConfig, cache: Any) -> list[Job]:
    """Every request a run of `config` makes, given the answers `cache` holds (sends nothing)."""
    if config.offline:
        raise UsageError("batch export/import needs a rater model (--model), not --offline")
    plan: list[Job] = []
    tag_pool(pool, replace(config, cache_only=True), cache=cache, plan=plan)
    return plan


def export_batch(pool: Pool, config: TagConfig, path: str | Path) -> BatchExport:
    """Write to `path` (atomically) one Batch request line per distinct request of this run
    (`config.shard` respected) that `config.cache` does not hold yet."""
    cache = ResponseCache(config.cache or ":memory:")
    try:
        plan = _plan(pool, config, cache)
        hits = cache.lookup({job.key for job in plan})
    finally:
        cache.close()
    lines, seen = [], set()
    for job in plan:
        if job.key in hits or job.key in seen:
            continue
        seen.add(job.key)
        lines.append(json.dumps({"custom_id": custom_id(job), "method": "POST", "url": BATCH_URL,
                                 "body": request_body(config.model, job.rendered, job.params)},
                                ensure_ascii=False))
    path = Path(path)
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))
    deferred = (len({j.row for j in plan if j.task == "domain" and j.key not in hits})
                if "difficulty" in config.tasks else 0)
    return BatchExport(str(path), len(lines), len({j.key for j in plan if j.key in hits}), deferred)


@dataclass
class _Line:
    number: int
    custom_id: str
    answer: tuple[str | None, int, int] | None  # (content, tokens in, tokens out) or None: failed
    reason: str = ""


def read_results(path: str | Path) -> list[_Line]:
    """The lines of a Batch results file; a line that is not a result object is a `DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such results file")
    out = []
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError:
                raise DataError(f"{path} line {number}: not JSON (expected a Batch result line)") from None
            cid = record.get("custom_id") if isinstance(record, dict) else None
            if not isinstance(cid, str):
                raise DataError(f"{path} line {number}: no custom_id (expected a Batch result line)")
            out.append(_result(number, cid, record))
    return out


def _result(number: int, cid: str, record: dict[str, Any]) -> _Line:
    error, response = record.get("error"), record.get("response")
    if error:
        message = error.get("message", error) if isinstance(error, dict) else error
        return _Line(number, cid, None, f"error: {message}")
    if not isinstance(response, dict):
        return _Line(number, cid, None, "no response")
    status = response.get("status_code")
    body = response.get("body")
    if status != 200:
        detail = body.get("error", {}).get("message", "") if isinstance(body, dict) and isinstance(
            body.get("error"), dict) else ""
        return _Line(number, cid, None, f"status {status}" + (f": {detail}" if detail else ""))
    try:
        return _Line(number, cid, completion_content(body))
    except RetryableError as err:
        return _Line(number, cid, None, str(err))
    except AttributeError:  # body is not an object
        return _Line(number, cid, None, "malformed: body is not a chat.completion")


class _Overlay:
    """The cache as it will be once a results file is stored (for planning; writes nothing)."""

    def __init__(self, cache: ResponseCache, answers: dict[str, tuple[str | None, int, int]]) -> None:
        self.cache, self.answers = cache, answers

    def lookup(self, keys: Any) -> dict[str, Cached]:
        keys = list(keys)
        out = self.cache.lookup(keys)
        for key in keys:
            answer = self.answers.get(key[:_KEY_HEX])
            if key not in out and answer is not None:
                out[key] = Cached(*answer)
        return out


def import_batch(pool: Pool, config: TagConfig, path: str | Path) -> BatchImport:
    """Store the answers of a Batch results file in `config.cache` under the keys the online run
    uses. Every custom_id must be a request of this run (`DataError` naming the first line that is
    not, before anything is stored); failed lines are reported in the result, not stored."""
    if not config.cache:
        raise UsageError("a batch import needs a cache file to store the answers in (--cache or -o)")
    lines = read_results(path)
    answers = {}
    for line in lines:
        if line.answer is not None:
            answers.setdefault(line.custom_id.rpartition("-")[2], line.answer)
    cache = ResponseCache(config.cache)
    try:
        planned = {custom_id(job): job for job in _plan(pool, config, _Overlay(cache, answers))}
        for line in lines:
            if line.custom_id not in planned:
                raise DataError(f"{path} line {line.number}: custom_id {line.custom_id!r} matches no request of "
                                "this run (a results file for another pool, prompt, model or setting?)")
        result = BatchImport(str(path), lines=len(lines))
        answered = {line.custom_id for line in lines if line.answer is not None}
        cached = cache.lookup({planned[cid].key for cid in answered})
        stored: set[str] = set()
        for line in lines:
            job = planned[line.custom_id]
            if line.answer is None:
                if line.custom_id not in answered:
                    result.failed.append(f"line {line.number} ({line.custom_id}): {line.reason}")
                continue
            if job.key in cached or job.key in stored:
                result.already += 1
                continue
            content, t_in, t_out = line.answer
            cache.put(job.key, model=config.model, prompt=job.prompt.name, prompt_hash=job.prompt.hash,
                      params=job.params, rendered=job.rendered, content=content, tokens_in=t_in,
                      tokens_out=t_out, base_url=f"batch:{Path(path).name}", commit=False)
            stored.add(job.key)
        cache.commit()
        result.stored = len(stored)
    finally:
        cache.close()
    return result
