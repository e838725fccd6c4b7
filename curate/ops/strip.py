"""`strip`: remove post-answer exploration from reasoning traces (the Infra ablation, App. D).

Only the thought part of a trace is edited (Sky-T1 `<|begin_of_thought|>...<|end_of_thought|>`,
R1 `<think>...</think>`, or an OpenThoughts `thought` column); the solution part is never touched.
The thought is cut into segments (`curate.data.traces`, `unit` = steps or sentences) and whole
segments are deleted; nothing is ever rewritten.

Which segments: the `curate_exploration_spans` column when the pool has one (`curate tag --tasks
exploration_spans`, by a rater or the offline rule; `curate strip --base-url` runs that task
first), else the offline rule of `curate.tagging.exploration` with this config's `markers` and
`stops`. The op itself reads columns and text only: it never calls a server.

Every result is checked before it is used, and a row that fails keeps its original text and is
listed as refused with the reason:

- spans: made for this unit and for this very thought (`thought_key`), else refused;
- deletion: the new text equals the original with exactly the chosen segments removed
  (rebuilt from the kept pieces and verified as a character subsequence of the original);
- final answer: everything outside the thought is identical, the thought's last `\\boxed{...}` and
  the response's last fenced code block are unchanged, the answer segment is kept and no segment
  before it is deleted (when an answer point is found).

Manifest: a stripped row is a new example, so it gets the id `<curate_id>~strip` and the entry
`replaced` (old id -> new id, reason `strip:exploration -N chars, segments ...`); scores keyed by the
old id therefore never join silently onto the shorter text, and response-derived annotation columns
(`curate_tokens`, `curate_nll`, `curate_influence_*`, `curate_behavior_*`, the spans) are set to
null on it. Unchanged and refused rows keep their ids and are not in the manifest (refusals are in
the report).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curate.data import ManifestEntry, Pool
from curate.data.traces import Trace, TraceStore, find_trace
from curate.results import OpContext, OpReport, OpResult
from curate.settings import Problem, check_settings, raise_problems, setting
from curate.tagging.exploration import (
    EXPLORATION_MARKERS,
    SPANS_COLUMN,
    STOP_MARKERS,
    UNITS,
    answer_point,
    decode_spans,
    rule_deletions,
    span_reply,
)
from curate.tagging.prompts import BEHAVIORS

if TYPE_CHECKING:
    from curate.progress import Progress

BUILT_BEHAVIORS = ("exploration",)
_FENCE = "```"
_STALE = ("curate_tokens", "curate_nll", SPANS_COLUMN)
_STALE_PREFIXES = ("curate_influence_", "curate_behavior_")


@dataclass(frozen=True)
class StripConfig:
    """How to strip: which behaviour, how thoughts are cut, and the offline rule's phrases."""

    behavior: str = setting("exploration", "Behaviour to remove (only exploration is built).")
    unit: str = setting("steps", "Segments: steps (paragraphs) or sentences.", choices=UNITS)
    markers: tuple[str, ...] = setting(EXPLORATION_MARKERS, "Exploration opener of the offline rule "
                                       "(case-insensitive regex); repeat to replace the default list.",
                                       flag="--marker", metavar="REGEX", shown="the built-in list")
    stops: tuple[str, ...] = setting(STOP_MARKERS, "Segment start that ends a deleted run (regex); repeat to "
                                     "replace the default list.", flag="--stop", metavar="REGEX",
                                     shown="the built-in list")
    tokenizer: str | None = setting(None, "Tokenizer (path or name) to count removed tokens [default: chars/4].",
                                    model=True)

    def __post_init__(self) -> None:
        for name in ("markers", "stops"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = check_settings(self)
        if self.behavior not in BUILT_BEHAVIORS:
            known = "is a behaviour but stripping it is not built" if self.behavior in BEHAVIORS else "is unknown"
            problems.append(Problem(f"{{behavior}} {self.behavior!r} {known}; choose from "
                                    f"{', '.join(BUILT_BEHAVIORS)}"))
        if not self.markers:
            problems.append(Problem("give at least one exploration {markers}"))
        for name in ("markers", "stops"):
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as err:
                    problems.append(Problem(f"{{{name}}} {pattern!r}: not a regex ({err})"))
        raise_problems(self, problems)


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


def strip(pool: Pool, config: StripConfig, progress: Progress | None = None) -> OpResult:
    """Remove `config.behavior` passages from the thoughts of `pool`'s rows.

    Returns an `OpResult`: the pool in its own schema (only the assistant content of stripped rows
    changes, under new ids `<id>~strip`), a `replaced` manifest entry per stripped row, and a report
    with rows stripped/unchanged/refused and characters and tokens removed per domain.
    """
    from curate.progress import Silent

    progress = progress or Silent()
    narrow = pool.columns(["curate_id", "curate_domain", *([SPANS_COLUMN] if SPANS_COLUMN in pool.column_names else [])])
    ids, domains = narrow.column("curate_id").to_pylist(), narrow.column("curate_domain").to_pylist()
    spans = narrow.column(SPANS_COLUMN).to_pylist() if SPANS_COLUMN in narrow.column_names else None
    count = _token_counter(config.tokenizer)
    status: dict[int, tuple[str, str]] = {}  # row -> (stripped|unchanged|refused, reason)
    removed: dict[int, int] = {}  # row -> characters removed
    tokens: dict[int, int] = {}  # row -> tokens removed
    from curate.data.rows import ParquetSpool

    out, changed = ParquetSpool(pool.rows.schema), False
    offset = 0
    with progress.task("stripping", total=len(ids), unit="rows") as advance:
        for batch in pool.batches():  # one batch of text in memory; the edited rows go to disk
            store = TraceStore(pool, batch)
            n = batch.num_rows
            new_texts: dict[int, str] = {}
            for i in range(n):
                status[offset + i] = _strip_row(store, i, config, spans[offset:offset + n] if spans else None,
                                                new_texts)
                advance(1)
            for i, text in new_texts.items():
                old = store.get(i)[0]
                removed[offset + i] = len(old) - len(text)
                tokens[offset + i] = count(old) - count(text) if count else round(removed[offset + i] / 4)
            out.add(store.put(new_texts, ids[offset:offset + n], lambda name: name in _STALE or (
                name.startswith(_STALE_PREFIXES) and name != "curate_behavior_source")))
            changed = changed or bool(new_texts)
            offset += n
    manifest = [ManifestEntry(ids[i], "replaced", f"strip:{config.behavior} -{removed[i]} chars, segments {status[i][1]}",
                              replaced_by=f"{ids[i]}~strip") for i in sorted(removed)]
    source = "offline rules" if spans is None else f"`{SPANS_COLUMN}` ({_sources(spans)})"
    stripped = out.close()  # the pool itself when no row changed
    report = _report(config, ids, domains, status, removed, tokens, source)
    return OpResult(pool.with_rows(stripped) if changed else pool, manifest, report)


def _strip_row(store: TraceStore, i: int, config: StripConfig, spans: list[str | None] | None,
               new_texts: dict[int, str]) -> tuple[str, str]:
    """Row i's (status, reason); a stripped row's new text goes to `new_texts`. `spans`: the
    pool's spans column (None: it has none, and the rule decides)."""
    text, why = store.get(i)
    if text is None:
        return "refused", why
    trace = find_trace(text, store.whole, config.unit)
    if trace is None or not trace.spans:
        return "unchanged", "no thought block"
    if spans is not None and spans[i] is None:
        return "refused", f"no {SPANS_COLUMN} for this row (its tagging failed: see curate_tag_errors)"
    if spans is not None:
        delete, why = decode_spans(spans[i], trace, config.unit)
        if delete is None:
            return "refused", why
        if not delete:
            return "unchanged", "no segment marked"
    else:
        delete, why = rule_deletions(trace, config.markers, config.stops)
        if not delete:
            return "unchanged", why
    new, why = apply_deletions(trace, delete)
    if new is None:
        reply = span_reply(spans[i]) if spans is not None else None
        return "refused", why + (f" (rater: {' '.join(reply.split())[:300]!r})" if reply else "")
    new_texts[i] = new
    return "stripped", ", ".join(str(k + 1) for k in delete)


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


def _token_counter(tokenizer: str | None):
    """Tokens in a text under `tokenizer` (special tokens excluded), or None without one (then
    removed tokens are estimated as characters / 4)."""
    if tokenizer is None:
        return None
    from curate.models import load_tokenizer  # a path, Hub id or alias, with one-line errors

    tok = load_tokenizer(tokenizer)
    return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])


def _sources(spans: list[str | None]) -> str:
    """How many rows' spans came from which source, e.g. "llm 40, rule 2, missing 1"."""
    import json
    from collections import Counter

    counts = Counter(json.loads(c).get("source", "?") if c else "missing" for c in spans)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _report(config, ids, domains, status, removed, tokens, source: str) -> OpReport:
    kinds = ("stripped", "unchanged", "refused")
    counts = {"rows in": len(ids), **{k: sum(s == k for s, _ in status.values()) for k in kinds},
              "chars removed": sum(removed.values()), "tokens removed": sum(tokens.values())}
    how = "chars/4" if config.tokenizer is None else f"tokenizer {config.tokenizer}"
    refused = {ids[i]: why for i, (s, why) in sorted(status.items()) if s == "refused"}
    notes = [f"kept original: {cid}: {why}" for cid, why in list(refused.items())[:5]]
    if len(refused) > 5:
        notes.append(f"... {len(refused) - 5} more refused rows (see the card)")
    lines = [f"- behaviour: `{config.behavior}`; segments: `{config.unit}`; chosen by: {source}",
             f"- tokens removed counted by {how}",
             "- stripped rows get new ids `<id>~strip` (manifest: `replaced`); only the thought part changed",
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


def run(pool: Pool, inputs: dict, config: StripConfig, context: OpContext) -> OpResult:
    """The registry's call shape (no inputs besides the pool)."""
    return strip(pool, config, progress=context.progress)
