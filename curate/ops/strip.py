"""`strip`: remove post-answer exploration from reasoning traces (the Infra ablation, App. D).

Only the thought part of a trace is edited (Sky-T1 `<|begin_of_thought|>...<|end_of_thought|>`,
R1 `<think>...</think>`, or an OpenThoughts `thought` column); the solution part is never touched.
The thought is cut into segments (`curate.influence.segments.segment`, `unit` = steps or
sentences) and whole segments are deleted; nothing is ever rewritten.

Which segments (offline rule, transparent on purpose):

1. The *answer point* is the first segment that reaches an answer: it holds an `ANSWER_MARKERS`
   phrase (`\\boxed{`, "the answer is", "final answer", ...) or closes a fenced code block.
   No answer point: the row is unchanged.
2. After it, a segment *opens* exploration when its first sentence holds one of `markers`
   ("alternatively", "another way", "a different approach", ...) and no `BACKTRACK_CUES` word
   (post-answer "wait, that is wrong, let me try a different approach" is repair, not exploration).
   Segments that start inside an open code block never open or stop anything.
3. The opener and every following segment are deleted until a segment that starts with one of
   `stops` ("Final answer", "In conclusion", "Anyway", "Back to", "So the answer is", ...), which is
   kept; a later opener starts a new run. A run may reach the end of the thought.

With a rater (`base_urls`), the LLM marks the segments to delete instead (`prompts/strip_exploration.md`,
reply `<delete>3, 7-9</delete>`, 1-based; the last tag wins) through the tagger's client and SQLite
cache. Either way, every result is checked before it is used, and a row that fails keeps its
original text and is listed as refused with the reason:

- deletion: the new text equals the original with exactly the chosen segments removed
  (rebuilt from the kept pieces and verified as a character subsequence of the original);
- final answer: everything outside the thought is identical, the thought's last `\\boxed{...}` and
  the response's last fenced code block are unchanged, the answer segment is kept and no segment before it is
  deleted (when an answer point is found).

Manifest: a stripped row is a new example, so it gets the id `<curate_id>~strip` and the entry
`replaced` (old id -> new id, reason `strip:exploration -N chars, segments ...`); scores keyed by the
old id therefore never join silently onto the shorter text, and response-derived annotation columns
(`curate_tokens`, `curate_nll`, `curate_influence_*`, `curate_behavior_*`) are set to null on it.
Unchanged and refused rows keep their ids and are not in the manifest (refusals are in the report).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from curate.data import ManifestEntry, Pool
from curate.data.canonical import SHAREGPT_ROLES
from curate.errors import UsageError
from curate.influence.segments import segment
from curate.ops.result import OpReport, OpResult
from curate.tagging.prompts import BEHAVIORS

if TYPE_CHECKING:
    from curate.progress import Progress

BUILT_BEHAVIORS = ("exploration",)
UNITS = ("steps", "sentences")
PROMPT_NAME = "strip_exploration"
# The tagger's prompt table names the variables each prompt may use; register ours beside them.

ANSWER_MARKERS = (r"\\boxed\s*\{", r"\bthe (?:final )?answer is\b", r"\bso the (?:final )?answer\b", r"\bfinal answer\b")
EXPLORATION_MARKERS = (
    r"\balternatively\b", r"\bout of curiosity\b",
    r"\b(?:another|a different|an alternative|a second|one more|other|alternative) "
    r"(?:ways?|approach(?:es)?|methods?|routes?|perspectives?|angles?|derivations?|proofs?|strateg(?:y|ies))\b",
    r"\blet me also (?:try|solve|derive)\b", r"\bwe (?:can|could) also (?:solve|derive|see|get)\b",
)
STOP_MARKERS = (
    r"final answer", r"in conclusion", r"in summary", r"to summari[sz]e", r"overall\b", r"anyway\b",
    r"either way\b", r"back to\b", r"returning to\b", r"(?:so|thus|therefore|hence),? the (?:final )?answer\b",
    r"the (?:final )?answer is\b",
)
BACKTRACK_CUES = r"\bwait\b|\bmistake\b|\bwrong\b|\bincorrect\b|\berror\b|does(?:n't| not) work|\bnot right\b"
_LEAD = r"^\s*(?:\*\*|#+\s*)?(?:(?:but|so|and|also|hmm+|well|ok(?:ay)?|now)[,.!]?\s+)*"
_FENCE = "```"
_STALE = ("curate_tokens", "curate_nll")
_STALE_PREFIXES = ("curate_influence_", "curate_behavior_")


@dataclass(frozen=True)
class StripConfig:
    """How to strip. Offline rules unless `base_urls` names a rater server."""

    behavior: str = field(default="exploration", metadata={"help": "Behaviour to remove (only exploration is built)."})
    unit: str = field(default="steps", metadata={"help": "Segments: steps (paragraphs) or sentences."})
    offline: bool = field(default=False, metadata={"help": "Rule-based (the default without base_urls)."})
    markers: tuple[str, ...] = field(default=EXPLORATION_MARKERS, metadata={"help": "Regexes opening exploration."})
    stops: tuple[str, ...] = field(default=STOP_MARKERS, metadata={"help": "Regexes (at a segment's start) ending a run."})
    base_urls: tuple[str, ...] = field(default=(), metadata={"help": "OpenAI-compatible rater servers (.../v1)."})
    model: str = field(default="", metadata={"help": "Rater model name on the server."})
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32
    temperature: float = 0.0
    max_tokens: int = field(default=512, metadata={"help": "Bound on each rater reply."})
    timeout: float = 120.0
    max_retries: int = 6
    max_chars: int = field(default=60000, metadata={"help": "Longer numbered traces are not sent (kept, refused)."})
    prompts_dir: str | None = None
    cache: str | None = field(default=None, metadata={"help": "SQLite request cache (None: in memory)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer path for removed tokens (else chars/4)."})

    def __post_init__(self) -> None:
        for name in ("markers", "stops", "base_urls"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.behavior not in BUILT_BEHAVIORS:
            known = "is a behaviour but stripping it is not built" if self.behavior in BEHAVIORS else "is unknown"
            problems.append(f"behavior {self.behavior!r} {known}; choose from {', '.join(BUILT_BEHAVIORS)}")
        if self.unit not in UNITS:
            problems.append(f"unit {self.unit!r}: choose from {', '.join(UNITS)}")
        if self.offline and self.base_urls:
            problems.append("give --offline or --base-url, not both")
        if self.base_urls and not self.model:
            problems.append("give --model (the rater's name on the server) with --base-url")
        if not self.markers:
            problems.append("give at least one exploration marker")
        for pattern in (*self.markers, *self.stops):
            try:
                re.compile(pattern)
            except re.error as err:
                problems.append(f"marker {pattern!r}: not a regex ({err})")
        if self.concurrency < 1 or self.max_tokens < 1 or self.max_retries < 0 or self.max_chars < 200:
            problems.append("need concurrency >= 1, max_tokens >= 1, max_retries >= 0, max_chars >= 200")
        if problems:
            raise UsageError("; ".join(problems))
        if not self.base_urls:
            object.__setattr__(self, "offline", True)


@dataclass
class Trace:
    """Where a row's trace lives: `text` (as stored), its thought span [t0, t1), segment spans."""

    text: str
    t0: int
    t1: int
    spans: list[tuple[int, int]]


def find_trace(text: str, whole: bool, unit: str) -> Trace | None:
    """The thought of `text` (the whole text when `whole`, e.g. an OpenThoughts thought column)."""
    if whole:
        t0, t1 = 0, len(text)
    elif (m := re.search(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>", text, re.S)):
        t0, t1 = m.span(1)
    elif "</think>" in text:
        t1 = text.index("</think>")
        m = re.match(r"\s*<think>", text)
        t0 = m.end() if m else 0
    else:
        return None
    return Trace(text, t0, t1, [(t0 + a, t0 + b) for a, b in segment(text[t0:t1], unit)])


def rule_deletions(trace: Trace, config: StripConfig) -> tuple[list[int], str]:
    """0-based segments to delete by the offline rule, and why none when empty."""
    texts = [trace.text[a:b] for a, b in trace.spans]
    answer = answer_point(trace)
    if answer is None:
        return [], "no answer reached in the thought"
    opener = re.compile("|".join(f"(?:{p})" for p in config.markers), re.I)
    stop = re.compile(_LEAD + "(?:" + "|".join(f"(?:{p})" for p in config.stops) + ")", re.I) if config.stops else None
    cues = re.compile(BACKTRACK_CUES, re.I)
    fences = [trace.text[trace.t0:a].count(_FENCE) for a, _ in trace.spans]
    out, running = [], False
    for k in range(answer + 1, len(texts)):
        in_code = fences[k] % 2 == 1
        first = texts[k][slice(*segment(texts[k], "sentences")[0])] if texts[k].strip() else ""
        if not in_code and opener.search(first) and not cues.search(first):
            running = True
        elif running and not in_code and stop is not None and stop.match(texts[k]):
            running = False
        if running:
            out.append(k)
    return out, "" if out else "no post-answer exploration found"


def answer_point(trace: Trace) -> int | None:
    """Index of the first segment holding an answer marker or closing a fenced code block."""
    pattern = re.compile("|".join(ANSWER_MARKERS), re.I)
    for k, (a, b) in enumerate(trace.spans):
        if pattern.search(trace.text[a:b]) or trace.text[trace.t0:b].count(_FENCE) >= 2:
            return k
    return None


def apply_deletions(trace: Trace, delete: list[int]) -> tuple[str | None, str]:
    """The text without segments `delete`, or (None, why) when a check fails (see module doc)."""
    text, spans, gone = trace.text, trace.spans, set(delete)
    if any(not 0 <= k < len(spans) for k in gone):
        return None, f"segment index out of range 1-{len(spans)}"
    pieces, cut = [], 0
    for k, (a, b) in enumerate(spans):
        if k in gone:
            pieces.append(text[cut:a])
            cut = b
    new = "".join(pieces) + text[cut:]
    removed = sum(b - a for k, (a, b) in enumerate(spans) if k in gone)
    # Deletion check, independent of how `new` was built: kept pieces in order, subsequence, length.
    kept = [text[a:b] for k, (a, b) in enumerate(spans) if k not in gone]
    if len(new) != len(text) - removed or not _subsequence(new, text) or not _in_order(kept, new):
        return None, "result is not a deletion of whole segments"
    t1 = trace.t1 - removed
    if new[:trace.t0] != text[:trace.t0] or new[t1:] != text[trace.t1:]:
        return None, "text outside the thought changed"
    old_thought, new_thought = text[trace.t0:trace.t1], new[trace.t0:t1]
    if last_boxed(old_thought) != last_boxed(new_thought):
        return None, f"the thought's last \\boxed answer would change ({last_boxed(old_thought)!r})"
    if last_code_block(text) != last_code_block(new):  # a code row's answer: the response's last block
        return None, "the response's last code block would change"
    answer = answer_point(trace)
    if answer is not None and min(gone) <= answer:
        return None, f"would delete segment {min(gone) + 1}, at or before the answer (segment {answer + 1})"
    return new, ""


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (braces matched), else None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\boxed {"))
    if start < 0:
        return None
    i, depth = text.index("{", start), 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return text[i + 1:]


def last_code_block(text: str) -> str | None:
    blocks = re.findall(r"```.*?```", text, re.S)
    return blocks[-1] if blocks else None


def parse_delete(text: str | None, n: int) -> tuple[list[int] | None, str]:
    """0-based indices from the last `<delete>3, 7-9</delete>` (1-based; `none` or empty = [])."""
    found = re.findall(r"<\s*delete\s*>(.*?)<\s*/\s*delete\s*>", text or "", re.S | re.I)
    if not found:
        return None, "no <delete>...</delete> in the reply"
    body = found[-1].strip().strip("[]").strip()
    if body.lower() in ("", "none", "nothing"):
        return [], ""
    out: set[int] = set()
    for item in re.split(r"[,\s]+", body):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            return None, f"cannot read {item!r} in <delete>"
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 1 <= lo <= hi <= n:
            return None, f"<delete> names {item}, outside segments 1-{n}"
        out.update(range(lo - 1, hi))
    return sorted(out), ""


def numbered(trace: Trace) -> str:
    return "\n\n".join(f"[{k + 1}] {trace.text[a:b].strip()}" for k, (a, b) in enumerate(trace.spans))


def strip(pool: Pool, config: StripConfig, progress: Progress | None = None) -> OpResult:
    """Remove `config.behavior` passages from the thoughts of `pool`'s rows.

    Returns an `OpResult`: the pool in its own schema (only the assistant content of stripped rows
    changes, under new ids `<id>~strip`), a `replaced` manifest entry per stripped row, and a report
    with rows stripped/unchanged/refused and characters and tokens removed per domain.
    """
    from curate.progress import Silent

    progress = progress or Silent()
    table = pool.dataset.with_format("arrow")[:]
    store = _Store(pool, table)
    ids, domains = table.column("curate_id").to_pylist(), table.column("curate_domain").to_pylist()
    traces: list[Trace | None] = []
    status: dict[int, tuple[str, str]] = {}  # row -> (stripped|unchanged|refused, reason)
    for i in range(len(ids)):
        text, why = store.get(i)
        trace = find_trace(text, store.whole, config.unit) if text is not None else None
        traces.append(trace)
        if text is None:
            status[i] = ("refused", why)
        elif trace is None or not trace.spans:
            status[i] = ("unchanged", "no thought block")

    deletions: dict[int, list[int]] = {}
    extra: dict[str, Any] = {}
    if config.offline:
        with progress.task("stripping (offline)", total=len(ids), unit="rows") as advance:
            for i, trace in enumerate(traces):
                if i not in status:
                    deletions[i], why = rule_deletions(trace, config)
                    if not deletions[i]:
                        status[i] = ("unchanged", why)
                advance(1)
    else:
        todo = {i: t for i, t in enumerate(traces) if i not in status}
        found, failed, extra = rater_deletions(todo, config, progress)
        for i, why in failed.items():
            status[i] = ("refused", why)
        for i, d in found.items():
            deletions[i] = d
            if not d:
                status[i] = ("unchanged", "rater marked nothing")

    new_texts: dict[int, str] = {}
    for i, d in deletions.items():
        if i in status:
            continue
        new, why = apply_deletions(traces[i], d)
        if new is None:
            status[i] = ("refused", why)
        else:
            new_texts[i] = new
            status[i] = ("stripped", ", ".join(str(k + 1) for k in d))
    out_table = store.put(new_texts, ids)
    import datasets

    out = pool.with_dataset(datasets.Dataset(out_table.replace_schema_metadata(None), info=pool.dataset.info.copy()))
    removed = {i: len(store.get(i)[0]) - len(t) for i, t in new_texts.items()}
    tokens = _tokens_removed(config.tokenizer, {i: (store.get(i)[0], t) for i, t in new_texts.items()}, removed)
    manifest = [ManifestEntry(ids[i], "replaced", f"strip:{config.behavior} -{removed[i]} chars, segments {status[i][1]}",
                              replaced_by=f"{ids[i]}~strip") for i in sorted(new_texts)]
    return OpResult(out, manifest, _report(config, ids, domains, status, removed, tokens, extra))


def rater_deletions(traces: dict[int, Trace], config: StripConfig,
                    progress: Progress) -> tuple[dict[int, list[int]], dict[int, str], dict[str, Any]]:
    """Ask the rater which segments to delete, through the tagger's client and SQLite cache.

    Returns ({row: 0-based segments}, {row: why refused}, {card line: value}).
    """
    from curate.tagging.cache import ResponseCache, request_key
    from curate.tagging.client import Counters
    from curate.tagging.config import TagConfig
    from curate.tagging.prompts import load_prompts
    from curate.tagging.tagger import Job, public_url, run_jobs

    prompt = load_prompts([PROMPT_NAME], config.prompts_dir)[PROMPT_NAME]
    rater = TagConfig(tasks=("behaviors",), base_urls=config.base_urls, model=config.model,
                      api_key_env=config.api_key_env, concurrency=config.concurrency,
                      temperature=config.temperature, max_tokens=config.max_tokens, timeout=config.timeout,
                      max_retries=config.max_retries, cache=config.cache)
    found: dict[int, list[int]] = {}
    failed: dict[int, str] = {}
    jobs = []
    for i, trace in traces.items():
        text = numbered(trace)
        if len(text) > config.max_chars:
            failed[i] = f"numbered thought has {len(text)} chars, over max_chars={config.max_chars}"
            continue
        rendered = prompt.render(segments=text, n=str(len(trace.spans)))
        jobs.append(Job(i, "strip", prompt, rendered, request_key(config.model, prompt.hash, rendered, rater.params)))
    counters = {"strip": Counters()}
    results: dict = {}
    cache = ResponseCache(config.cache or ":memory:")
    try:
        run_jobs(iter(jobs), len(jobs), "stripping", rater, cache, counters, results, progress)
    finally:
        cache.close()
    for job in jobs:
        outcome = results[job.row, "strip"][0][0]
        if outcome is None or outcome.error:
            failed[job.row] = outcome.error if outcome else "no response (run interrupted)"
            continue
        delete, why = parse_delete(outcome.content, len(traces[job.row].spans))
        if delete is None:
            failed[job.row] = f"rater reply: {why}"
        else:
            found[job.row] = delete
    c = counters["strip"]
    extra = {"rater servers": ", ".join(public_url(u) for u in config.base_urls),
             "prompt": f"`{prompt.name}` v{prompt.version} sha256:{prompt.hash}",
             "sampling": f"`{rater.params}`",
             "requests": f"{c.requests} sent, {c.cache_hits} from cache, {c.retries} retries, {c.failures} failed; "
                         f"tokens in {c.tokens_in}, out {c.tokens_out}"}
    return found, failed, extra


class _Store:
    """Reads and writes each row's stored trace text in the pool's own columns."""

    def __init__(self, pool: Pool, table: Any) -> None:
        cols = pool.shape.columns
        self.table = table
        self.chat = cols.get("messages") or cols.get("conversations")
        self.whole = self.chat is None and "thought" in cols and "response" not in cols
        self.column = self.chat or (cols["thought"] if self.whole else cols.get("response") or cols.get("solution"))
        self.values = table.column(self.column).to_pylist() if self.column else []

    def _slot(self, i: int) -> tuple[Any, Any] | str:
        value = self.values[i] if self.values else None
        if self.chat is None:
            return (None, None) if isinstance(value, str) else "response is not stored as text"
        if not isinstance(value, list) or not value or not isinstance(value[-1], dict):
            return "conversation is not stored as a list of turns"
        turn = value[-1]
        role = str(turn.get("role") if turn.get("role") is not None else turn.get("from") or "").lower()
        key = "content" if "content" in turn else "value"
        if SHAREGPT_ROLES.get(role, role) != "assistant" or not isinstance(turn.get(key), str):
            return "the last turn is not an assistant text"
        return -1, key

    def get(self, i: int) -> tuple[str | None, str]:
        slot = self._slot(i)
        if isinstance(slot, str):
            return None, slot
        return (self.values[i] if slot[0] is None else self.values[i][-1][slot[1]]), ""

    def put(self, texts: dict[int, str], ids: list[str]) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not texts:
            return self.table
        values = list(self.values)
        for i, text in texts.items():
            index, key = self._slot(i)
            if index is None:
                values[i] = text
            else:
                values[i] = [*values[i][:-1], {**values[i][-1], key: text}]
        t = self.table
        names = t.column_names
        t = t.set_column(names.index(self.column), self.column, pa.array(values, type=t.schema.field(self.column).type))
        new_ids = [f"{x}~strip" if i in texts else x for i, x in enumerate(ids)]
        t = t.set_column(names.index("curate_id"), "curate_id", pa.array(new_ids, type=t.schema.field("curate_id").type))
        mask = pa.array([i in texts for i in range(len(ids))])
        for name in names:
            if name in _STALE or name.startswith(_STALE_PREFIXES) and name != "curate_behavior_source":
                col = t.column(name)
                t = t.set_column(names.index(name), name, pc.if_else(mask, pa.nulls(len(ids), col.type), col))
        return t


def _subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def _in_order(pieces: list[str], text: str) -> bool:
    at = 0
    for piece in pieces:
        at = text.find(piece, at)
        if at < 0:
            return False
        at += len(piece)
    return True


def _tokens_removed(tokenizer: str | None, pairs: dict[int, tuple[str, str]], removed: dict[int, int]) -> dict[int, int]:
    if tokenizer is None:
        return {i: round(c / 4) for i, c in removed.items()}
    from curate.models import load_tokenizer  # a path, Hub id or alias, with one-line errors

    tok = load_tokenizer(tokenizer)
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return {i: count(old) - count(new) for i, (old, new) in pairs.items()}


def _report(config, ids, domains, status, removed, tokens, extra) -> OpReport:
    kinds = ("stripped", "unchanged", "refused")
    counts = {"rows in": len(ids), **{k: sum(s == k for s, _ in status.values()) for k in kinds},
              "chars removed": sum(removed.values()), "tokens removed": sum(tokens.values())}
    how = "chars/4" if config.tokenizer is None else f"tokenizer {config.tokenizer}"
    refused = {ids[i]: why for i, (s, why) in sorted(status.items()) if s == "refused"}
    notes = [f"kept original: {cid}: {why}" for cid, why in list(refused.items())[:5]]
    if len(refused) > 5:
        notes.append(f"... {len(refused) - 5} more refused rows (see the card)")
    mode = "offline rules" if config.offline else f"rater `{config.model}`"
    lines = [f"- behaviour: `{config.behavior}`; mode: {mode}; segments: `{config.unit}`",
             f"- tokens removed counted by {how}",
             "- stripped rows get new ids `<id>~strip` (manifest: `replaced`); only the thought part changed",
             *(f"- {k}: {v}" for k, v in extra.items()),
             "", "| domain | rows | stripped | unchanged | refused | chars removed | tokens removed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for d in sorted({str(x) for x in domains}):
        rows = [i for i in range(len(ids)) if str(domains[i]) == d]
        c = [sum(status[i][0] == k for i in rows) for k in kinds]
        lines.append(f"| {d} | {len(rows)} | {c[0]} | {c[1]} | {c[2]} | "
                     f"{sum(removed.get(i, 0) for i in rows)} | {sum(tokens.get(i, 0) for i in rows)} |")
    unchanged: dict[str, int] = {}
    for s, why in status.values():
        if s == "unchanged":
            unchanged[why] = unchanged.get(why, 0) + 1
    lines += ["", "Unchanged: " + ("; ".join(f"{w}: {n}" for w, n in sorted(unchanged.items())) or "none")]
    if refused:
        lines += ["", "Kept original (refused):", *(f"- `{cid}`: {why}" for cid, why in list(refused.items())[:200])]
    return OpReport(counts, notes, {"Exploration stripping": "\n".join(lines)},
                    {"refused": refused, "unchanged": unchanged})
