"""`tag_pool`: domain, difficulty and behaviour tags for every row, from a rater LLM or offline.

Requests are planned per row and task, looked up in the SQLite cache in bulk, and only the misses
are sent (by `concurrency` workers). Domain requests go first (rows whose `curate_domain` is still
`unknown`), because a row's difficulty prompt depends on its domain.

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
             cache: ResponseCache | None = None, plan: list[Job] | None = None) -> tuple[pl.DataFrame, TagReport]:
    """Tag every row of `pool` (of its shard, with `config.shard`: the frame then holds those rows).

    Returns `(annotations, report)`: a polars frame keyed by `curate_id` with `curate_difficulty`
    (Int64, 1-10), `curate_difficulty_raw`, `curate_difficulty_source` (native/llm/rule),
    `curate_behavior_<name>` (Int64 counts; null when unparsed), `curate_behavior_source`,
    `curate_domain`/`curate_domain_source` (only rows whose domain was unknown and got a label;
    null elsewhere, so `write_pool` keeps the pool's own), `curate_tag_long` and `curate_tag_errors`
    (JSON `{task: {"reason", "raw"}}` or null); and a `TagReport`.

    `cache`: an open cache to use instead of `config.cache` (left open); `plan`: every request
    planned is appended to it (a batch export or import reads the plan).
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
        frame = _tag_offline(pool, config, progress)
        report.wall_s = time.perf_counter() - started
        counts = frame["curate_difficulty_source"].value_counts()
        found = dict(zip(counts["curate_difficulty_source"].to_list(), counts["count"].to_list(), strict=True))
        report.sources = {s: found[s] for s in ("native", "llm", "rule") if s in found}
        return frame, report
    rows = _Rows.of(pool, config)
    _tag_llm(rows, config, progress, pool.name, report, cache, plan)
    report.wall_s = time.perf_counter() - started
    report.price_in, report.price_out = config.price_in, config.price_out
    for task_name in report.tasks or {}:  # no reply at all (failed) apart from a reply that did not parse
        report.failed[task_name] = sum(task_name in e and e[task_name]["raw"] is None for e in rows.errors)
        report.unparsed[task_name] = sum(task_name in e and e[task_name]["raw"] is not None for e in rows.errors)
    if config.cache:
        cache_file = ResponseCache(config.cache)
        try:
            report.wall_total_s, report.runs = cache_file.record_run(report.wall_s, len(pool))
        finally:
            cache_file.close()
    sources = rows.out["curate_difficulty_source"]
    report.sources = {s: sources.count(s) for s in ("native", "llm", "rule") if s in sources}
    rows.out["curate_tag_errors"] = [json.dumps(e, sort_keys=True) if e else None for e in rows.errors]
    return _frame(rows.out), report


@dataclass
class _Rows:
    """The annotation columns under construction (`out`: column -> one value per row, in order),
    each row's errors by task, its domain as known so far, and what native labels say."""

    examples: list[Example]
    out: dict[str, list[Any]]
    errors: list[dict[str, Any]]
    domains: list[str]
    native_raw: list[Any]
    native_table: dict[str, int]
    traces: list[Trace | None]  # each row's thought, with exploration_spans (else empty)

    @classmethod
    def of(cls, pool: Pool, config: TagConfig) -> _Rows:
        examples = list(pool.examples())
        narrow = pool.columns(["curate_id", "curate_domain"])
        ids, known = narrow.column("curate_id").to_pylist(), narrow.column("curate_domain").to_pylist()
        n = len(ids)
        out: dict[str, list[Any]] = {
            "curate_id": ids, "curate_domain": [None] * n, "curate_domain_source": [None] * n,
            "curate_difficulty": [None] * n, "curate_difficulty_raw": [None] * n,
            "curate_difficulty_source": [None] * n,
            **{f"curate_behavior_{b}": [None] * n for b in BEHAVIORS},
            "curate_behavior_source": [None] * n, "curate_tag_long": [None] * n,
        }
        traces = _traces(pool, config)
        if traces:
            out[SPANS_COLUMN] = [None] * n
        return cls(examples, out, [{} for _ in range(n)], [d or "unknown" for d in known],
                   offline.native_labels(pool), offline.native_table(config.native_map), traces)

    def set_native(self, i: int) -> bool:
        """Row i's difficulty from its native label; False when it has none the table knows."""
        level = offline.native_difficulty(self.native_raw[i], self.native_table)
        if level is None:
            return False
        self.out["curate_difficulty"][i], self.out["curate_difficulty_raw"][i] = level, str(self.native_raw[i])
        self.out["curate_difficulty_source"][i] = "native"
        return True


def _traces(pool: Pool, config: TagConfig) -> list[Trace | None]:
    """Each row's thought with segments (None without one) when exploration_spans is asked for,
    else []: indexed on the stored text, as `curate strip` reads it."""
    if "exploration_spans" not in config.tasks:
        return []
    store = TraceStore(pool, pool.dataset.with_format("arrow")[:])
    return [_span_trace(store, i, config) for i in range(len(pool))]


OFFLINE_CHUNK = 16_384  # rows whose tags are held as Python values before they become a frame


def _tag_offline(pool: Pool, config: TagConfig, progress: Progress) -> pl.DataFrame:
    """Native labels, then rule estimates for difficulty; marker phrases for behaviours; the
    rule's exploration spans. The rows stream a batch at a time and the tags are kept as columns
    (`OFFLINE_CHUNK` rows at a time as Python values): memory holds a batch and the tags."""
    import polars as pl

    native = offline.native_table(config.native_map)
    column = pool.shape.columns.get("difficulty")
    labels = column if column and column in pool.column_names else None
    spans = "exploration_spans" in config.tasks
    names = ["curate_id", "curate_domain", "curate_domain_source", "curate_difficulty", "curate_difficulty_raw",
             "curate_difficulty_source", *(f"curate_behavior_{b}" for b in BEHAVIORS), "curate_behavior_source",
             "curate_tag_long", *([SPANS_COLUMN] if spans else []), "curate_tag_errors"]
    frames, out = [], {n: [] for n in names}
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
                frames.append(_frame(out))
                out = {n: [] for n in names}
    frames.append(_frame(out))
    return pl.concat(frames)


def _span_trace(store: TraceStore, i: int, config: TagConfig) -> Trace | None:
    """Row i's thought with segments, as `curate strip` reads it (None without one)."""
    text = store.get(i)[0]
    trace = find_trace(text, store.whole, config.segments) if text is not None else None
    return trace if trace is not None and trace.spans else None


def _tag_llm(rows: _Rows, config: TagConfig, progress: Progress, name: str, report: TagReport,
             cache: ResponseCache | None, plan: list[Job] | None) -> None:
    """The rater: unknown domains first (their difficulty prompt depends on the answer), then
    difficulty and behaviour requests; every answer parsed into `rows`, every failure recorded."""
    out, examples, domains, errors = rows.out, rows.examples, rows.domains, rows.errors
    prompts = load_prompts(config.prompt_names(), config.prompts_dir)
    report.model, report.params = config.model, config.params
    report.base_urls = [public_url(u) for u in config.base_urls]
    report.prompts = {p.name: {"version": p.version, "hash": p.hash} for p in prompts.values()}
    report.long, report.max_chars, report.structured = config.long, config.max_chars, config.structured
    budget = make_budget(config)
    report.budget = f"tokens counted by {budget.how}; context: " + (
        f"{budget.context} tokens" if budget.context else "unknown (prompts bounded by max_chars only)")
    planner = _Planner(config, prompts, budget)
    counters = {t: Counters() for t in (["domain"] if "domain" in config.tasks else [])
                + (["difficulty"] if "difficulty" in config.tasks else [])
                + (list(BEHAVIORS) if "behaviors" in config.tasks else [])
                + (["exploration_spans"] if "exploration_spans" in config.tasks else [])}
    report.tasks = counters
    results: dict[tuple[int, str], list[Outcome]] = {}
    own_cache = cache is None
    if cache is None:
        cache = ResponseCache(config.cache or ":memory:")
    extra = {"plan": plan, "report": report}
    try:
        if "domain" in config.tasks:
            total = sum(d == "unknown" for d in domains)
            if total:
                jobs = (planner.domain(i, ex) for i, ex in enumerate(examples) if domains[i] == "unknown")
                _run_fitting(jobs, total, f"tagging domains of {name}", config, cache, counters, results, progress,
                             **extra)
            for i in range(len(examples)):
                outcome = results.get((i, "domain"))
                if outcome:
                    label, reason = _parse("domain", outcome[0])
                    if label is None:
                        errors[i]["domain"] = _error(reason, outcome[0])
                    else:
                        domains[i] = out["curate_domain"][i] = label
                        out["curate_domain_source"][i] = "llm"
        total = (sum(d in ("math", "code") for d in domains) if "difficulty" in config.tasks else 0) + (
            sum(_n_windows(_trace(ex), config) for ex in examples) * len(BEHAVIORS)
            if "behaviors" in config.tasks else 0) + sum(t is not None for t in rows.traces)
        _run_fitting(_main_jobs(rows, config, planner), total, f"tagging {name}", config, cache, counters, results,
                     progress, **extra)
    finally:
        if own_cache:
            cache.close()
    report.not_cached = sum(1 for slots in results.values() for slot in slots
                            if slot[0] is not None and slot[0].error == NOT_CACHED)
    for i in range(len(examples)):
        if "difficulty" in config.tasks and (i, "difficulty") in results:
            outcome = results[i, "difficulty"][0]
            level, reason = _parse("difficulty", outcome)
            if level is None:  # no value, so no source: the error column says why
                errors[i]["difficulty"] = _error(reason, outcome)
            else:
                out["curate_difficulty"][i], out["curate_difficulty_raw"][i] = level, f"[[{level}]]"
                out["curate_difficulty_source"][i] = "llm"
        if "behaviors" in config.tasks:
            for b in BEHAVIORS:
                total_count: int | None = 0
                for outcome in results.get((i, b), []):
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
        if (i, "exploration_spans") in results:
            outcome = results[i, "exploration_spans"][0]
            reply, reason = _parse("exploration_spans", outcome)
            delete, reason = parse_delete(reply, len(rows.traces[i].spans)) if reply is not None else (None, reason)
            if delete is None:
                errors[i]["exploration_spans"] = _error(reason, outcome)
            else:
                out[SPANS_COLUMN][i] = encode_spans(rows.traces[i], config.segments, delete, "llm", reply)


def _run_fitting(jobs: Iterator[Job], total: int, title: str, config: TagConfig, cache: ResponseCache,
                 counters: dict[str, Counters], results: dict[tuple[int, str], list[Outcome]], progress: Progress,
                 *, plan: list[Job] | None, report: TagReport) -> None:
    """`run_jobs`, then once more for the requests a server refused as over its context: each is
    re-rendered with its clipped fields shrunk by what the server's message says (`over_context`)
    and sent again, once. `report.fitted` / `report.shrunk` count the two kinds of fitting."""
    sent: list[Job] = []
    run_jobs(jobs, total, title, config, cache, counters, results, progress, plan=sent, report=report)
    if plan is not None:
        plan.extend(sent)
    report.fitted += sum(j.fitted for j in sent)
    again: list[tuple[Job, Job]] = []
    for job in sent:
        slots = results[job.row, job.task]
        outcome = slots[0][0] if len(slots) == 1 else None
        if outcome is not None and outcome.error and ": context:" in outcome.error and job.refit is not None:
            again.append((job, job.refit(*over_context(outcome.error, config.max_tokens))))
    if not again:
        return
    retried: dict[tuple[int, str], list[Outcome]] = {}
    run_jobs(iter(j for _, j in again), len(again), f"{title}: shrunk to fit the context", config, cache, counters,
             retried, progress, plan=plan, report=report)
    for job, _ in again:
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


def _main_jobs(rows: _Rows, config: TagConfig, planner: _Planner) -> Iterator[Job]:
    """Difficulty requests (math and code rows without a native label, unless `native` is off)
    and behaviour requests (one per window of each trace), in row order."""
    for i, ex in enumerate(rows.examples):
        if "difficulty" in config.tasks and rows.domains[i] in ("math", "code"):
            if not (config.native and rows.set_native(i)):
                yield planner.difficulty(i, ex, rows.domains[i])
        if "behaviors" in config.tasks:
            jobs, label = planner.behaviors(i, ex)
            rows.out["curate_tag_long"][i] = label
            yield from jobs
        if rows.traces and rows.traces[i] is not None:
            job = planner.spans(i, rows.traces[i])
            if job is None:
                rows.errors[i]["exploration_spans"] = {"reason": "not sent: the numbered thought is over "
                                                                 f"spans_max_chars={config.spans_max_chars} or the "
                                                                 "context", "raw": ""}
            else:
                yield job


def estimate(pool: Pool, config: TagConfig) -> Estimate:
    """What `tag_pool` would send, without sending anything. Rows of unknown domain count as one
    math difficulty request each (their real prompt depends on the domain answer). With
    `config.shard`, only that shard's rows."""
    examples = list(shard_pool(pool, config).examples())
    budget = make_budget(config)
    planner = _Planner(config, load_prompts(config.prompt_names(), config.prompts_dir), budget)
    jobs: list[Job] = []
    for i, ex in enumerate(examples):
        domain = ex.domain or "unknown"
        if "domain" in config.tasks and domain == "unknown":
            jobs.append(planner.domain(i, ex))
        if "difficulty" in config.tasks and domain != "other":
            jobs.append(planner.difficulty(i, ex, domain if domain in ("math", "code") else "math"))
        if "behaviors" in config.tasks:
            jobs += planner.behaviors(i, ex)[0]
    if "exploration_spans" in config.tasks:
        traces = _traces(shard_pool(pool, config), config)
        jobs += [j for i, t in enumerate(traces) if t is not None and (j := planner.spans(i, t)) is not None]
    unique = {j.key: j for j in jobs}
    cached = 0
    if config.cache and os.path.exists(config.cache):
        cache = ResponseCache(config.cache)
        try:
            cached = len(cache.lookup(unique))
        finally:
            cache.close()
    return Estimate(requests=len(unique), cached=cached, tokens=sum(budget.tokens(j.rendered) for j in unique.values()),
                    how=budget.how)


def run_jobs(jobs: Iterator[Job], total: int, title: str, config: TagConfig, cache: ResponseCache,
             counters: dict[str, Counters], results: dict[tuple[int, str], list[Outcome]], progress: Progress,
             *, plan: list[Job] | None = None, report: TagReport | None = None) -> None:
    """Resolve `jobs` from the cache or the server; outcomes land in `results[(row, task)]` in job order.

    `plan` receives every job; `report.servers` accumulates {url: {"requests", "failures"}} and
    `report.unconstrained` the first refusal of the answer constraint (structured "auto"). With
    `config.cache_only` nothing is sent: a miss gets an outcome with the error `NOT_CACHED`.
    """
    if config.cache_only:
        with progress.task(title, total=total, unit="req") as advance:
            chunk: list[Job] = []
            for job in [*jobs, None]:
                if job is not None:
                    chunk.append(job)
                if chunk and (job is None or len(chunk) >= _CHUNK_ROWS * 6):
                    hits = cache.lookup({j.key for j in chunk})
                    for j in chunk:
                        hit = hits.get(j.key)
                        if hit is not None:
                            counters[j.task].cache_hits += 1
                        outcome = (Outcome(hit.content, hit.tokens_in, hit.tokens_out, cached=True) if hit
                                   else Outcome(None, error=NOT_CACHED))
                        results.setdefault((j.row, j.task), []).append([outcome])  # type: ignore[arg-type]
                        advance(1)
                    if plan is not None:
                        plan.extend(chunk)
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
                job, slot, advance = item
                slot[0] = await rater.complete(job.key, job.rendered, job.prompt, counters[job.task], job.timeout,
                                               job.params)
                advance(1)

        workers = [asyncio.create_task(worker()) for _ in range(config.concurrency)]
        try:
            with progress.task(title, total=total, unit="req") as advance:
                chunk: list[Job] = []
                for job in jobs:
                    if plan is not None:
                        plan.append(job)
                    chunk.append(job)
                    if len(chunk) >= _CHUNK_ROWS * 6:
                        await _dispatch(chunk, cache, counters, results, queue, advance, workers)
                        chunk = []
                await _dispatch(chunk, cache, counters, results, queue, advance, workers)
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
                    results: dict[tuple[int, str], list[Outcome]], queue: asyncio.Queue, advance, workers) -> None:
    hits = cache.lookup({j.key for j in chunk})
    for job in chunk:
        slot: list[Outcome | None] = [None]
        results.setdefault((job.row, job.task), []).append(slot)  # type: ignore[arg-type]
        hit = hits.get(job.key)
        if hit is not None:
            counters[job.task].cache_hits += 1
            slot[0] = Outcome(hit.content, hit.tokens_in, hit.tokens_out, cached=True)
            advance(1)
            continue
        for w in workers:
            if w.done() and w.exception():
                raise w.exception()
        await queue.put((job, slot, advance))


def _n_windows(trace: str, config: TagConfig) -> int:
    return -(-len(trace) // config.max_chars) if config.long == "split" and len(trace) > config.max_chars else 1


_FAILED_AFTER = re.compile(r"^request failed after \d+ attempt\(s\): ")


def failed_requests(annotations: pl.DataFrame) -> tuple[int, dict[str, int]]:
    """Rows of a `tag_pool` frame that lack a value because a request failed (no reply at all, as
    opposed to a reply that did not parse), and the count of failed tasks per cause (the error's
    first part, e.g. "timeout", "400"), most frequent first."""
    rows, causes = 0, Counter()
    for cell in annotations["curate_tag_errors"]:
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


def _frame(out: dict[str, list[Any]]) -> pl.DataFrame:
    import polars as pl

    schema = {name: pl.String for name in out}
    for name in out:
        if name == "curate_difficulty" or (name.startswith("curate_behavior_") and name != "curate_behavior_source"):
            schema[name] = pl.Int64
    return pl.DataFrame(out, schema=schema)
