"""`tag_pool`: domain, difficulty and behaviour tags for every row, from a rater LLM or offline.

Requests are planned per row and task, looked up in the SQLite cache in bulk, and only the misses
are sent (by `concurrency` workers). The pool is read `WINDOW_ROWS` rows at a time: a window's
examples, prompts and answers are held while it is tagged, then only its narrow annotations are
kept, so memory does not grow with the pool's text. Within a window, domain requests go first (rows
whose `curate_domain` is still `unknown`), because a row's difficulty prompt depends on its domain.
Every answer is committed to the cache as it arrives: a killed run, started again, sends only what
is missing.

Long texts (policy recorded per row in `curate_tag_long` and in the card): every field sent is at
most `max_chars` characters. `truncate` keeps the first and last `max_chars // 2` characters around
a marker line; `split` (behaviour traces only) sends consecutive windows of `max_chars` characters
and sums their counts (a window that cannot be parsed leaves the row's count null). Problems and
solutions in difficulty/domain prompts are always truncated.

`config.shard = Shard(i, N)` tags only the rows of shard i (`shard_pool`); shards run into one cache, and
a later run over the whole pool finds every answer there and sends nothing. `config.cache_only`
sends nothing at all: answers come from the cache (a batch import), the rest stay null with the
reason `NOT_CACHED`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from curate.data.traces import Trace, TraceStore, find_trace
from curate.progress import Progress, Silent
from curate.shard import Shard
from curate.tagging import offline
from curate.tagging.budget import Budget, make_budget
from curate.tagging.cache import ResponseCache, request_key
from curate.tagging.client import Counters, Outcome, Rater
from curate.tagging.config import TagConfig
from curate.tagging.exploration import (
    PROMPT_NAME,
    SPANS_COLUMN,
    encode_spans,
    numbered,
    parse_delete,
    rule_deletions,
)
from curate.tagging.parse import parse_count, parse_domain, parse_rating
from curate.tagging.prompts import BEHAVIORS, Prompt, load_prompts

if TYPE_CHECKING:
    import polars as pl

    from curate.data import Example, Pool
    from curate.data.rows import FileRows

_CHUNK_ROWS = 512
_FIT_TRIES = 6  # renders per request at most while shrinking its clipped fields to fit the context
_RAW_LIMIT = 2000  # characters of an unparsed reply kept in curate_tag_errors
NOT_CACHED = "not answered yet: not in the cache, and this run sends nothing (batch export/import)"


@dataclass
class Job:
    row: int
    task: str  # "domain", "difficulty", a behaviour name or "exploration_spans"
    prompt: Prompt
    rendered: str
    key: str
    params: dict = field(default_factory=dict)  # sampling and answer constraint sent (`TagConfig.request_params`)
    timeout: float | None = None  # seconds to wait for the reply (None: the rater's default)
    fitted: bool = False  # its clipped fields were cut below max_chars to fit the context
    refit: Callable[[int | None, int | None], Job] | None = None  # shrunk: (prompt tokens asked, allowed)


@dataclass
class TagReport:
    """What a run did: per-task accounting, prompts, settings and the cost estimate."""

    mode: str
    rows: int
    model: str = ""
    base_urls: list[str] = field(default_factory=list)
    prompts: dict[str, dict[str, str]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    long: str = ""
    max_chars: int = 0
    tasks: dict[str, Counters] = field(default_factory=dict)
    unparsed: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    price_in: float = 0.0
    price_out: float = 0.0
    shard: Shard | None = None  # when only shard i of N was tagged
    shard_rows: tuple[int, int, int] | None = None  # (first row, end row, rows of the whole pool)
    servers: dict[str, dict[str, int]] = field(default_factory=dict)  # url -> attempts, failures
    not_cached: int = 0  # cache-only runs: requests left unanswered
    failed: dict[str, int] = field(default_factory=dict)  # task -> rows whose request failed (no reply)
    budget: str = ""  # how prompt tokens were counted and the context, for the card
    fitted: int = 0  # requests whose clipped fields were cut further to fit the context
    shrunk: int = 0  # requests resent shrunk after a context-length error
    wall_total_s: float = 0.0  # wall time over every run recorded in the cache file (resumes, shards)
    structured: str = "off"  # the answer constraint asked for (`TagConfig.structured`)
    unconstrained: str | None = None  # the server's refusal of it, after which requests went without
    runs: int = 0

    @property
    def cost(self) -> float:
        t_in = sum(c.tokens_in for c in self.tasks.values())
        t_out = sum(c.tokens_out for c in self.tasks.values())
        return (t_in * self.price_in + t_out * self.price_out) / 1e6

    def card(self) -> dict[str, str]:
        """{title: markdown} sections for the dataset card (the API key is never in here)."""
        lines = [f"- mode: {self.mode}", f"- rows: {self.rows}"]
        if self.shard and self.shard_rows:
            lines.append(f"- shard: {self.shard} (rows {self.shard_rows[0]}-{self.shard_rows[1] - 1} of "
                         f"{self.shard_rows[2]}, 0-based)")
        if self.mode == "llm":
            lines += [f"- rater model: `{self.model}`", f"- servers: {', '.join(self.base_urls) or '(none: cache only)'}",
                      f"- sampling: `{json.dumps(self.params, sort_keys=True)}`",
                      f"- long texts: `{self.long}` at {self.max_chars} characters per field "
                      "(per row in `curate_tag_long`)"]
            lines += [f"- prompt `{n}` v{p['version']} sha256:{p['hash']}" for n, p in self.prompts.items()]
        lines.append(f"- difficulty sources: {json.dumps(self.sources, sort_keys=True)}")
        lines.append(f"- unparsed replies: {json.dumps(self.unparsed, sort_keys=True)}; failed requests (no reply): "
                     f"{json.dumps(self.failed, sort_keys=True)} (null values; reasons in curate_tag_errors)")
        if self.mode == "llm":
            lines.append(f"- budget: {self.budget}; clipped further to fit: {self.fitted} request(s); resent "
                         f"shrunk after a context-length error: {self.shrunk}")
            lines.append(f"- structured answers: {self.structured}" + (
                f"; the server refused the constraint, so requests went without it from then on (text parsed): "
                f"{self.unconstrained}" if self.unconstrained else ""))
        sections = {"Tagging": "\n".join(lines)}
        if self.mode == "llm":
            rows = ["| task | requests | retries (by cause) | failures | failed attempts by cause | cache hits | "
                    "deduped | tokens in | tokens out |", "|---|---:|---|---:|---|---:|---:|---:|---:|"]
            for name, c in self.tasks.items():
                rows.append(f"| {name} | {c.requests} | {c.retries}{_causes(c.retry_causes)} | {c.failures} | "
                            f"{_causes(c.errors).strip(' ()') or '-'} | {c.cache_hits} | {c.deduped} | "
                            f"{c.tokens_in} | {c.tokens_out} |")
            across = (f"; {self.wall_total_s:.1f} s over the {self.runs} runs that filled this cache (resumes, "
                      "shards)" if self.runs > 1 else "")
            rows.append(f"\nwall time {self.wall_s:.1f} s this run{across}; estimated cost ${self.cost:.4f} "
                        f"(${self.price_in}/1M in, ${self.price_out}/1M out)")
            if len(self.servers) > 1:
                rows.append("\nper server (attempts / failed): " + ", ".join(
                    f"{u} {s['requests']}/{s['failures']}" for u, s in self.servers.items()))
            if self.not_cached:
                rows.append(f"\n{self.not_cached} request(s) not answered yet (cache only): null, "
                            "reason in curate_tag_errors")
            sections["Tagging accounting"] = "\n".join(rows)
        return sections


def _causes(counts: dict[str, int]) -> str:
    """" (timeout 2, 429 1)" from {cause: count}, most frequent first; "" when empty."""
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))})" if counts else ""


@dataclass
class Estimate:
    """`--dry-run`: requests a run would make, how many the cache already holds, and their input
    tokens counted as the run counts them (`how`: `Budget.how`)."""

    requests: int
    cached: int
    tokens: int
    how: str


def clip(text: str, max_chars: int) -> tuple[str, bool]:
    """`text`, or its first and last `max_chars // 2` characters around a marker line."""
    if len(text) <= max_chars:
        return text, False
    half = max_chars // 2
    omitted = len(text) - 2 * half
    return f"{text[:half]}\n\n[... {omitted} characters omitted by curate ...]\n\n{text[-half:]}", True


def windows(text: str, max_chars: int) -> list[str]:
    return [text[i:i + max_chars] for i in range(0, max(len(text), 1), max_chars)]


def _problem(example: Example) -> str:
    return next((m["content"] for m in reversed(example.prompt_messages) if m["role"] == "user"), "")


def _trace(example: Example) -> str:
    return example.thought or example.response


class _Planner:
    """Renders the requests of rows; keys follow `cache.request_key`. With a `Budget` whose
    context is known, a prompt's clipped fields (problem, solution, trace) shrink until prompt and
    reply fit it; each job's timeout grows with its prompt (`curate.tagging.budget`)."""

    def __init__(self, config: TagConfig, prompts: dict[str, Prompt], budget: Budget | None = None) -> None:
        self.config, self.prompts, self.budget = config, prompts, budget

    def _job(self, row: int, task: str, name: str, clipped: dict[str, tuple[str, int]] | None = None,
             **fixed: str) -> Job:
        """One request: `fixed` values as they are, `clipped` ones {var: (text, max chars)} cut to
        their head and tail (`clip`), further while the prompt does not fit the budget."""
        prompt, clipped = self.prompts[name], clipped or {}
        budget = self.budget
        scale, fitted = 1.0, False
        for _ in range(_FIT_TRIES):
            values = {**fixed, **{k: clip(t, max(200, int(min(m, len(t)) * scale)))[0] for k, (t, m) in clipped.items()}}
            rendered = prompt.render(**values)
            if not clipped or budget is None or budget.fits(rendered):
                break
            scale *= 0.9 * budget.limit / budget.tokens(rendered)
            fitted = True
        params = self.config.request_params(task)
        job = Job(row, task, prompt, rendered, request_key(self.config.model, prompt.hash, rendered, params), params,
                  budget.timeout(rendered) if budget else None, fitted)
        if clipped:
            def refit(asked: int | None, allowed: int | None) -> Job:
                """Shrunk so that its prompt loses what the server said was too much (`asked` -
                `allowed` tokens, at this prompt's characters per token, plus 15%); halved when
                the server gave no numbers."""
                chars = sum(max(200, int(min(m, len(t)) * scale)) for t, m in clipped.values())
                factor = 0.5
                if asked and allowed and asked > allowed:
                    cut = (asked - allowed) * len(rendered) / asked * 1.15 + 20
                    factor = max(0.02, (chars - cut) / chars)
                return self._job(row, task, name, {k: (t, max(200, int(min(m, len(t)) * scale * factor)))
                                                   for k, (t, m) in clipped.items()}, **fixed)

            job.refit = refit
        return job

    def domain(self, row: int, ex: Example) -> Job:
        m = self.config.max_chars
        return self._job(row, "domain", "domain", {"problem": (_problem(ex), m),
                                                   "response": (ex.response, max(m // 4, 200))})

    def difficulty(self, row: int, ex: Example, domain: str) -> Job:
        m = self.config.max_chars
        return self._job(row, "difficulty", f"difficulty_{domain}", {"problem": (_problem(ex), m),
                                                                     "solution": (ex.solution or ex.response, m)})

    def behaviors(self, row: int, ex: Example) -> tuple[list[Job], str]:
        trace, m = _trace(ex), self.config.max_chars
        if self.config.long == "split" and len(trace) > m:  # windows are sent whole: their counts add up
            label = f"split:{-(-len(trace) // m)}"
            return [self._job(row, b, f"behavior_{b}", trace=p) for b in BEHAVIORS for p in windows(trace, m)], label
        jobs = [self._job(row, b, f"behavior_{b}", {"trace": (trace, m)}) for b in BEHAVIORS]
        label = "full" if len(trace) <= m and not any(j.fitted for j in jobs) else "truncated"
        return jobs, label

    def spans(self, row: int, trace: Trace) -> Job | None:
        """The exploration_spans request of a thought (None when its numbered text is over
        `spans_max_chars` or the context: segment indices need the whole thought, so it is never
        clipped)."""
        text = numbered(trace)
        if len(text) > self.config.spans_max_chars:
            return None
        job = self._job(row, "exploration_spans", PROMPT_NAME, segments=text, n=str(len(trace.spans)))
        return job if self.budget is None or self.budget.fits(job.rendered) else None


def shard_pool(pool: Pool, config: TagConfig) -> Pool:
    """The rows of `config.shard` (contiguous, in order; `TagConfig.shard_range`), or `pool`."""
    if not config.shard:
        return pool
    return pool.take(config.shard_range(len(pool)))


def tag_pool(pool: Pool, config: TagConfig, progress: Progress | None = None, *,
             cache: ResponseCache | None = None, plan: list[Job] | None = None,
             spill: bool = False) -> tuple[pl.DataFrame | FileRows, TagReport]:
    """Tag every row of `pool` (of its shard, with `config.shard`: the frame then holds those rows).

    Returns `(annotations, report)`: a polars frame keyed by `curate_id` with `curate_difficulty`
    (Int64, 1-10), `curate_difficulty_raw`, `curate_difficulty_source` (native/llm/rule),
    `curate_behavior_<name>` (Int64 counts; null when unparsed), `curate_behavior_source`,
    `curate_domain`/`curate_domain_source` (only rows whose domain was unknown and got a label;
    null elsewhere, so `write_pool` keeps the pool's own), `curate_tag_long` and `curate_tag_errors`
    (JSON `{task: {"reason", "raw"}}` or null); and a `TagReport`. The domain and source columns
    are `pl.Categorical` (`CATEGORICAL`; strings when written), the other text columns strings.

    `cache`: an open cache to use instead of `config.cache` (left open); `plan`: every request
    planned is appended to it (a batch export or import reads the plan). `spill`: the annotations
    are written to a temporary parquet file as they are made and returned as `FileRows` (same
    columns, categoricals as strings), so memory does not grow with the pool.
    """
    progress = progress or Silent()
    started = time.perf_counter()
    total_rows = len(pool)
    pool = shard_pool(pool, config)
    report = TagReport(mode="offline" if config.offline else "llm", rows=len(pool))
    if config.shard:
        shard = config.shard_range(total_rows)
        report.shard, report.shard_rows = config.shard, (shard.start, shard.stop, total_rows)
    if config.offline:
        annotations, report.sources = _gather(_tag_offline(pool, config, progress), spill)
        report.wall_s = time.perf_counter() - started
        return annotations, report
    annotations, report.sources = _gather(_tag_llm(pool, config, progress, report, cache, plan), spill)
    report.wall_s = time.perf_counter() - started
    report.price_in, report.price_out = config.price_in, config.price_out
    if config.cache:
        cache_file = ResponseCache(config.cache)
        try:
            report.wall_total_s, report.runs = cache_file.record_run(report.wall_s, len(pool))
        finally:
            cache_file.close()
    return annotations, report


def _gather(chunks: Iterator[pl.DataFrame], spill: bool) -> tuple[pl.DataFrame | FileRows, dict[str, int]]:
    """The annotation chunks, in order, as one frame or (`spill`) one temporary parquet file read
    back as `FileRows`; and the rows per difficulty source (native, llm, rule), those present only,
    in that order."""
    import polars as pl

    from curate.data.rows import ParquetSpool
    from curate.data.write import annotation_table

    found: Counter = Counter()
    frames: list[pl.DataFrame] = []
    spool = None
    for frame in chunks:
        found.update(dict(frame["curate_difficulty_source"].value_counts().iter_rows()))
        if spill:
            table = annotation_table(frame)
            spool = spool or ParquetSpool(table.schema)
            spool.add(table)
        else:
            frames.append(frame)
    sources = {s: found[s] for s in ("native", "llm", "rule") if s in found}
    return (spool.close() if spill else pl.concat(frames)), sources


WINDOW_ROWS = 2048  # rows whose examples, requests and answers the rater path holds at once


@dataclass
class _Rows:
    """One window of rows on the rater path: their examples, raw native labels and (with
    exploration_spans) thoughts with segments; the annotation columns under construction (`out`:
    column -> one value per row, in order), each row's errors by task and its domain as known so
    far. `start` is the pool position of the first row: jobs and results carry pool positions."""

    start: int
    examples: list[Example]
    native_raw: list[Any]
    traces: list[Trace | None]  # each row's thought, with exploration_spans (else empty)
    spans: bool  # exploration_spans asked for: `out` has its column
    out: dict[str, list[Any]] = field(init=False)
    errors: list[dict[str, Any]] = field(init=False)
    domains: list[str] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.examples)
        self.out = {
            "curate_id": [ex.id for ex in self.examples], "curate_domain": [None] * n,
            "curate_domain_source": [None] * n, "curate_difficulty": [None] * n, "curate_difficulty_raw": [None] * n,
            "curate_difficulty_source": [None] * n,
            **{f"curate_behavior_{b}": [None] * n for b in BEHAVIORS},
            "curate_behavior_source": [None] * n, "curate_tag_long": [None] * n,
            **({SPANS_COLUMN: [None] * n} if self.spans else {}),
        }
        self.errors = [{} for _ in range(n)]
        self.domains = [ex.domain or "unknown" for ex in self.examples]

    def set_native(self, i: int, table: dict[str, int]) -> bool:
        """Row i's (index in the window) difficulty from its native label; False when it has none
        `table` knows."""
        level = offline.native_difficulty(self.native_raw[i], table)
        if level is None:
            return False
        self.out["curate_difficulty"][i], self.out["curate_difficulty_raw"][i] = level, str(self.native_raw[i])
        self.out["curate_difficulty_source"][i] = "native"
        return True

    def frame(self, report: TagReport) -> pl.DataFrame:
        """The window's annotations; its failed (no reply) and unparsed requests are added to `report`."""
        for errors in self.errors:
            for task, error in errors.items():
                tally = report.failed if error["raw"] is None else report.unparsed
                tally[task] = tally.get(task, 0) + 1
        self.out["curate_tag_errors"] = [json.dumps(e, sort_keys=True) if e else None for e in self.errors]
        return _frame(self.out)


def _native_column(pool: Pool) -> str | None:
    """The pool's native difficulty label column (its `difficulty` role), if it has one."""
    column = pool.shape.columns.get("difficulty")
    return column if column and column in pool.column_names else None


def _windows(pool: Pool, config: TagConfig) -> Iterator[_Rows]:
    """The pool's rows, `WINDOW_ROWS` or a batch more at a time, read from disk as they are needed
    (at least one window, empty for an empty pool)."""
    labels, spans = _native_column(pool), "exploration_spans" in config.tasks
    start, parts = 0, []
    for batch, examples in pool.example_batches():
        store = TraceStore(pool, batch) if spans else None
        parts.append((examples, batch.column(labels).to_pylist() if labels else [None] * len(examples),
                      [_span_trace(store, i, config) for i in range(len(examples))] if spans else []))
        if sum(len(p[0]) for p in parts) >= WINDOW_ROWS:
            window = _Rows(start, *(sum((p[k] for p in parts), []) for k in range(3)), spans)
            start, parts = start + len(window.examples), []
            yield window
    if parts or start == 0:
        yield _Rows(start, *(sum((p[k] for p in parts), []) for k in range(3)), spans)


OFFLINE_CHUNK = 16_384  # rows whose tags are held as Python values before they become a frame


def _tag_offline(pool: Pool, config: TagConfig, progress: Progress) -> Iterator[pl.DataFrame]:
    """Native labels, then rule estimates for difficulty; marker phrases for behaviours; the
    rule's exploration spans. The rows stream a batch at a time; the tags come as frames of
    `OFFLINE_CHUNK` rows or so (at least one frame, empty for an empty pool)."""
    native = offline.native_table(config.native_map)
    labels = _native_column(pool)
    spans = "exploration_spans" in config.tasks
    names = ["curate_id", "curate_domain", "curate_domain_source", "curate_difficulty", "curate_difficulty_raw",
             "curate_difficulty_source", *(f"curate_behavior_{b}" for b in BEHAVIORS), "curate_behavior_source",
             "curate_tag_long", *([SPANS_COLUMN] if spans else []), "curate_tag_errors"]
    out = {n: [] for n in names}
    with progress.task(f"tagging {pool.name} (offline)", total=len(pool), unit="rows") as advance:
        for batch, examples in pool.example_batches():
            raw = batch.column(labels).to_pylist() if labels else [None] * len(examples)
            store = TraceStore(pool, batch) if spans else None
            for i, ex in enumerate(examples):
                row = dict.fromkeys(names)
                row["curate_id"] = ex.id
                domain = ex.domain or "unknown"
                if "difficulty" in config.tasks and domain in ("math", "code"):
                    level = offline.native_difficulty(raw[i], native)
                    if level is not None:
                        row["curate_difficulty"], row["curate_difficulty_raw"] = level, str(raw[i])
                        row["curate_difficulty_source"] = "native"
                    else:
                        level, why = offline.rule_difficulty(domain, _problem(ex), ex.solution or ex.response)
                        row["curate_difficulty"], row["curate_difficulty_raw"] = level, why
                        row["curate_difficulty_source"] = "rule"
                if "behaviors" in config.tasks:
                    for b, count in offline.behavior_counts(_trace(ex)).items():
                        row[f"curate_behavior_{b}"] = count
                    row["curate_behavior_source"], row["curate_tag_long"] = "rule", "full"
                trace = _span_trace(store, i, config) if spans else None
                if trace is not None:
                    row[SPANS_COLUMN] = encode_spans(trace, config.segments, rule_deletions(trace)[0], "rule")
                for n in names:
                    out[n].append(row[n])
                advance(1)
            if len(out["curate_id"]) >= OFFLINE_CHUNK:
                yield _frame(out)
                out = {n: [] for n in names}
    if out["curate_id"] or not len(pool):
        yield _frame(out)


def _span_trace(store: TraceStore, i: int, config: TagConfig) -> Trace | None:
    """Row i's thought with segments, as `curate strip` reads it (None without one)."""
    text = store.get(i)[0]
    trace = find_trace(text, store.whole, config.segments) if text is not None else None
    return trace if trace is not None and trace.spans else None


def _tag_llm(pool: Pool, config: TagConfig, progress: Progress, report: TagReport, cache: ResponseCache | None,
             plan: list[Job] | None) -> Iterator[pl.DataFrame]:
    """The rater, `WINDOW_ROWS` rows at a time (`_tag_window`); each window's annotations, in pool
    order. Progress counts rows, each once every request of the row has its answer."""
    prompts = load_prompts(config.prompt_names(), config.prompts_dir)
    report.model, report.params = config.model, config.params
    report.base_urls = [public_url(u) for u in config.base_urls]
    report.prompts = {p.name: {"version": p.version, "hash": p.hash} for p in prompts.values()}
    report.long, report.max_chars, report.structured = config.long, config.max_chars, config.structured
    budget = make_budget(config)
    report.budget = f"tokens counted by {budget.how}; context: " + (
        f"{budget.context} tokens" if budget.context else "unknown (prompts bounded by max_chars only)")
    planner = _Planner(config, prompts, budget)
    report.tasks = {t: Counters() for t in (["domain"] if "domain" in config.tasks else [])
                    + (["difficulty"] if "difficulty" in config.tasks else [])
                    + (list(BEHAVIORS) if "behaviors" in config.tasks else [])
                    + (["exploration_spans"] if "exploration_spans" in config.tasks else [])}
    report.failed, report.unparsed = dict.fromkeys(report.tasks, 0), dict.fromkeys(report.tasks, 0)
    own_cache = cache is None
    if cache is None:
        cache = ResponseCache(config.cache or ":memory:")
    try:
        with progress.task(f"tagging {pool.name}", total=len(pool), unit="rows") as advance:
            for rows in _windows(pool, config):
                _tag_window(rows, config, planner, cache, report, plan, _RowsDone(advance))
                yield rows.frame(report)
    finally:
        if own_cache:
            cache.close()


class _RowsDone:
    """Advances a progress bar by one row once every request planned for the row has its outcome."""

    def __init__(self, advance: Callable[[int], None]) -> None:
        self.advance, self.pending = advance, {}

    def jobs(self, per_row: Iterator[list[Job]]) -> Iterator[Job]:
        """The jobs of each row in turn; a row without any is done at once."""
        for jobs in per_row:
            if not jobs:
                self.advance(1)
                continue
            self.pending[jobs[0].row] = len(jobs)
            yield from jobs

    def __call__(self, job: Job) -> None:
        self.pending[job.row] -= 1
        if not self.pending[job.row]:
            del self.pending[job.row]
            self.advance(1)


def _tag_window(rows: _Rows, config: TagConfig, planner: _Planner, cache: ResponseCache, report: TagReport,
                plan: list[Job] | None, done: _RowsDone) -> None:
    """Tag one window: unknown domains first (their difficulty prompt depends on the answer), then
    difficulty, behaviour and span requests; every answer parsed into `rows`, every failure recorded."""
    out, examples, domains, errors, start = rows.out, rows.examples, rows.domains, rows.errors, rows.start
    results: dict[tuple[int, str], list[Outcome]] = {}
    if "domain" in config.tasks:
        jobs = (planner.domain(start + i, ex) for i, ex in enumerate(examples) if domains[i] == "unknown")
        _run_fitting(jobs, config, cache, report, results, lambda job: None, plan)
        for i in range(len(examples)):
            outcome = results.get((start + i, "domain"))
            if outcome:
                label, reason = _parse("domain", outcome[0])
                if label is None:
                    errors[i]["domain"] = _error(reason, outcome[0])
                else:
                    domains[i] = out["curate_domain"][i] = label
                    out["curate_domain_source"][i] = "llm"
    _run_fitting(done.jobs(_main_jobs(rows, config, planner)), config, cache, report, results, done, plan)
    report.not_cached += sum(1 for slots in results.values() for slot in slots
                             if slot[0] is not None and slot[0].error == NOT_CACHED)
    for i in range(len(examples)):
        row = start + i
        if "difficulty" in config.tasks and (row, "difficulty") in results:
            outcome = results[row, "difficulty"][0]
            level, reason = _parse("difficulty", outcome)
            if level is None:  # no value, so no source: the error column says why
                errors[i]["difficulty"] = _error(reason, outcome)
            else:
                out["curate_difficulty"][i], out["curate_difficulty_raw"][i] = level, f"[[{level}]]"
                out["curate_difficulty_source"][i] = "llm"
        if "behaviors" in config.tasks:
            for b in BEHAVIORS:
                total_count: int | None = 0
                for outcome in results.get((row, b), []):
                    count, reason = _parse(b, outcome)
                    if count is None:
                        errors[i][b] = _error(reason, outcome)
                        total_count = None
                        break
                    total_count += count
                out[f"curate_behavior_{b}"][i] = total_count
            # The source only where the rater answered: a row with no count parsed has none.
            out["curate_behavior_source"][i] = "llm" if any(
                out[f"curate_behavior_{b}"][i] is not None for b in BEHAVIORS) else None
        if (row, "exploration_spans") in results:
            outcome = results[row, "exploration_spans"][0]
            reply, reason = _parse("exploration_spans", outcome)
            delete, reason = parse_delete(reply, len(rows.traces[i].spans)) if reply is not None else (None, reason)
            if delete is None:
                errors[i]["exploration_spans"] = _error(reason, outcome)
            else:
                out[SPANS_COLUMN][i] = encode_spans(rows.traces[i], config.segments, delete, "llm", reply)


def _run_fitting(jobs: Iterator[Job], config: TagConfig, cache: ResponseCache, report: TagReport,
                 results: dict[tuple[int, str], list[Outcome]], done: Callable[[Job], None],
                 plan: list[Job] | None) -> None:
    """`run_jobs`, then once more for the requests a server refused as over its context: each is
    re-rendered with its clipped fields shrunk by what the server's message says (`over_context`)
    and sent again, once. `report.fitted` / `report.shrunk` count the two kinds of fitting. Of the
    jobs sent, only the (row, task, refit) of those that can shrink are kept, not their prompts."""
    refits: list[tuple[int, str, Callable[[int | None, int | None], Job]]] = []

    def sent(job: Job) -> None:
        if plan is not None:
            plan.append(job)
        report.fitted += job.fitted
        if job.refit is not None:
            refits.append((job.row, job.task, job.refit))

    run_jobs(jobs, config, cache, report.tasks, results, done, on_send=sent, report=report)
    again: list[Job] = []
    for row, task, refit in refits:
        slots = results[row, task]
        outcome = slots[0][0] if len(slots) == 1 else None
        if outcome is not None and outcome.error and ": context:" in outcome.error:
            again.append(refit(*over_context(outcome.error, config.max_tokens)))
    if not again:
        return
    retried: dict[tuple[int, str], list[Outcome]] = {}
    run_jobs(iter(again), config, cache, report.tasks, retried, lambda job: None,
             on_send=plan.append if plan is not None else None, report=report)
    for job in again:
        results[job.row, job.task][0][0] = retried[job.row, job.task][0][0]
    report.shrunk += len(again)


def over_context(error: str, max_tokens: int) -> tuple[int | None, int | None]:
    """(prompt tokens the request had, prompt tokens the context allows) from a context-length
    error in OpenAI's wording ("maximum context length is M tokens. However, you requested N
    tokens"): (N - max_tokens, M - max_tokens); (None, None) when it gives no numbers."""
    context = re.search(r"context length is (\d+)", error)
    asked = re.search(r"requested (\d+) tokens", error)
    if not (context and asked):
        return None, None
    return int(asked.group(1)) - max_tokens, int(context.group(1)) - max_tokens


def _main_jobs(rows: _Rows, config: TagConfig, planner: _Planner) -> Iterator[list[Job]]:
    """Each row's difficulty request (math and code rows without a native label, unless `native`
    is off), behaviour requests (one per window of each trace) and span request, row by row."""
    table = offline.native_table(config.native_map)
    for i, ex in enumerate(rows.examples):
        row, jobs = rows.start + i, []
        if "difficulty" in config.tasks and rows.domains[i] in ("math", "code"):
            if not (config.native and rows.set_native(i, table)):
                jobs.append(planner.difficulty(row, ex, rows.domains[i]))
        if "behaviors" in config.tasks:
            behaviors, label = planner.behaviors(row, ex)
            rows.out["curate_tag_long"][i] = label
            jobs += behaviors
        if rows.traces and rows.traces[i] is not None:
            job = planner.spans(row, rows.traces[i])
            if job is None:
                rows.errors[i]["exploration_spans"] = {"reason": "not sent: the numbered thought is over "
                                                                 f"spans_max_chars={config.spans_max_chars} or the "
                                                                 "context", "raw": ""}
            else:
                jobs.append(job)
        yield jobs


def estimate(pool: Pool, config: TagConfig) -> Estimate:
    """What `tag_pool` would send, without sending anything. Rows of unknown domain count as one
    math difficulty request each (their real prompt depends on the domain answer). With
    `config.shard`, only that shard's rows. Reads the pool a window at a time; holds the distinct
    requests' keys and token counts."""
    budget = make_budget(config)
    planner = _Planner(config, load_prompts(config.prompt_names(), config.prompts_dir), budget)
    tokens: dict[str, int] = {}
    for rows in _windows(shard_pool(pool, config), config):
        for i, ex in enumerate(rows.examples):
            row, domain, jobs = rows.start + i, rows.domains[i], []
            if "domain" in config.tasks and domain == "unknown":
                jobs.append(planner.domain(row, ex))
            if "difficulty" in config.tasks and domain != "other":
                jobs.append(planner.difficulty(row, ex, domain if domain in ("math", "code") else "math"))
            if "behaviors" in config.tasks:
                jobs += planner.behaviors(row, ex)[0]
            if rows.traces and rows.traces[i] is not None and (job := planner.spans(row, rows.traces[i])):
                jobs.append(job)
            for job in jobs:
                if job.key not in tokens:
                    tokens[job.key] = budget.tokens(job.rendered)
    cached = 0
    if config.cache and os.path.exists(config.cache):
        cache = ResponseCache(config.cache)
        try:
            cached = len(cache.lookup(tokens))
        finally:
            cache.close()
    return Estimate(requests=len(tokens), cached=cached, tokens=sum(tokens.values()), how=budget.how)


def run_jobs(jobs: Iterator[Job], config: TagConfig, cache: ResponseCache, counters: dict[str, Counters],
             results: dict[tuple[int, str], list[Outcome]], done: Callable[[Job], None], *,
             on_send: Callable[[Job], None] | None = None, report: TagReport | None = None) -> None:
    """Resolve `jobs` from the cache or the server; outcomes land in `results[(row, task)]` in job
    order, and `done(job)` is called as each one does.

    `on_send` sees every job as it is taken from `jobs`; `report.servers` accumulates
    {url: {"requests", "failures"}} and `report.unconstrained` the first refusal of the answer
    constraint (structured "auto"). With `config.cache_only` nothing is sent: a miss gets an
    outcome with the error `NOT_CACHED`. Jobs are taken `_CHUNK_ROWS * 6` at a time (one cache
    query), and at most `4 * concurrency` wait for a worker.
    """
    if config.cache_only:
        chunk: list[Job] = []
        for job in [*jobs, None]:
            if job is not None:
                chunk.append(job)
                if on_send is not None:
                    on_send(job)
            if chunk and (job is None or len(chunk) >= _CHUNK_ROWS * 6):
                hits = cache.lookup({j.key for j in chunk})
                for j in chunk:
                    hit = hits.get(j.key)
                    if hit is not None:
                        counters[j.task].cache_hits += 1
                    outcome = (Outcome(hit.content, hit.tokens_in, hit.tokens_out, cached=True) if hit
                               else Outcome(None, error=NOT_CACHED))
                    results.setdefault((j.row, j.task), []).append([outcome])  # type: ignore[arg-type]
                    done(j)
                chunk = []
        return

    async def main() -> None:
        api_key = os.environ.get(config.api_key_env) or "EMPTY"  # local servers often need none
        rater = Rater(base_urls=list(config.base_urls), api_key=api_key, model=config.model,
                      params=config.params, concurrency=config.concurrency, timeout=config.timeout,
                      max_retries=config.max_retries, backoff=config.backoff,
                      max_backoff=config.max_backoff, cache=cache, seed=config.seed,
                      server_concurrency=config.server_concurrency, timeout_retries=config.timeout_retries,
                      fallback=config.structured == "auto")
        queue: asyncio.Queue = asyncio.Queue(maxsize=4 * config.concurrency)

        async def worker() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                job, slot = item
                slot[0] = await rater.complete(job.key, job.rendered, job.prompt, counters[job.task], job.timeout,
                                               job.params)
                done(job)

        workers = [asyncio.create_task(worker()) for _ in range(config.concurrency)]
        try:
            chunk: list[Job] = []
            for job in jobs:
                if on_send is not None:
                    on_send(job)
                chunk.append(job)
                if len(chunk) >= _CHUNK_ROWS * 6:
                    await _dispatch(chunk, cache, counters, results, queue, done, workers)
                    chunk = []
            await _dispatch(chunk, cache, counters, results, queue, done, workers)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await rater.close()
            if report is not None:
                report.unconstrained = report.unconstrained or rater.unconstrained
                for url, stats in rater.stats().items():
                    entry = report.servers.setdefault(public_url(url), {"requests": 0, "failures": 0})
                    for name, value in stats.items():
                        entry[name] += value

    asyncio.run(main())


async def _dispatch(chunk: list[Job], cache: ResponseCache, counters: dict[str, Counters],
                    results: dict[tuple[int, str], list[Outcome]], queue: asyncio.Queue,
                    done: Callable[[Job], None], workers) -> None:
    hits = cache.lookup({j.key for j in chunk})
    for job in chunk:
        slot: list[Outcome | None] = [None]
        results.setdefault((job.row, job.task), []).append(slot)  # type: ignore[arg-type]
        hit = hits.get(job.key)
        if hit is not None:
            counters[job.task].cache_hits += 1
            slot[0] = Outcome(hit.content, hit.tokens_in, hit.tokens_out, cached=True)
            done(job)
            continue
        for w in workers:
            if w.done() and w.exception():
                raise w.exception()
        await queue.put((job, slot))


def _n_windows(trace: str, config: TagConfig) -> int:
    return -(-len(trace) // config.max_chars) if config.long == "split" and len(trace) > config.max_chars else 1


_FAILED_AFTER = re.compile(r"^request failed after \d+ attempt\(s\): ")


def failed_requests(annotations: pl.DataFrame | FileRows) -> tuple[int, dict[str, int]]:
    """Rows of `tag_pool`'s annotations (a frame, or spilled) that lack a value because a request
    failed (no reply at all, as opposed to a reply that did not parse), and the count of failed
    tasks per cause (the error's first part, e.g. "timeout", "400"), most frequent first."""
    import polars as pl

    cells = (annotations["curate_tag_errors"] if isinstance(annotations, pl.DataFrame) else
             (cell for batch in annotations.batches(["curate_tag_errors"])
              for cell in batch.column("curate_tag_errors").to_pylist()))
    rows, causes = 0, Counter()
    for cell in cells:
        failed = [e["reason"] for e in (json.loads(cell) if cell else {}).values() if e["raw"] is None]
        rows += bool(failed)
        causes.update(_FAILED_AFTER.sub("", reason or "no reason").split(":", 1)[0].strip() for reason in failed)
    return rows, dict(causes.most_common())


def _parse(task: str, slot: Any) -> tuple[Any, str | None]:
    outcome = slot[0] if isinstance(slot, list) else slot
    if outcome is None:
        return None, "no response (run interrupted)"
    if outcome.error:
        return None, outcome.error
    if task == "domain":
        return parse_domain(outcome.content)
    if task == "difficulty":
        return parse_rating(outcome.content)
    if task == "exploration_spans":  # the caller reads <delete> against the row's segment count
        return outcome.content, None
    return parse_count(outcome.content)


def _error(reason: str | None, slot: Any) -> dict[str, Any]:
    outcome = slot[0] if isinstance(slot, list) else slot
    raw = outcome.content if outcome is not None else None
    return {"reason": reason, "raw": raw[:_RAW_LIMIT] if raw else raw}


def public_url(url: str) -> str:
    """A base URL without any user:password part, for the card."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    return urlunsplit(parts)


# Columns of a few distinct values: categoricals, 4 bytes a row where a string takes 16,
# written out as strings (`curate.data.write.annotation_table`).
CATEGORICAL = ("curate_domain", "curate_domain_source", "curate_difficulty_source", "curate_behavior_source")


def _frame(out: dict[str, list[Any]]) -> pl.DataFrame:
    import polars as pl

    schema = {name: pl.Categorical if name in CATEGORICAL else pl.String for name in out}
    for name in out:
        if name == "curate_difficulty" or (name.startswith("curate_behavior_") and name != "curate_behavior_source"):
            schema[name] = pl.Int64
    return pl.DataFrame(out, schema=schema)
