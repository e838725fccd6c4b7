"""Post-answer exploration in a reasoning trace: the segments to delete, by offline rule or rater.

Both write the same thing, the `curate_exploration_spans` column (`curate tag --tasks
exploration_spans`, offline or with a rater), which `curate.ops.strip` applies; without that
column `strip` runs the rule itself. A cell is JSON: `{"unit": "steps", "delete": [4, 5], "thought":
thought_key, "source": "rule" | "llm", "reply": the rater's reply}`, with 1-based segment
indices of the stored thought (`curate.data.traces`).

The offline rule (transparent on purpose):

1. The *answer point* is the first segment that reaches an answer: it holds an `ANSWER_MARKERS`
   phrase (`\\boxed{`, "the answer is", "final answer", ...) or closes a fenced code block.
   No answer point: nothing is deleted.
2. After it, a segment *opens* exploration when its first sentence holds one of the markers
   ("alternatively", "another way", "a different approach", ...) and no `BACKTRACK_CUES` word
   (post-answer "wait, that is wrong, let me try a different approach" is repair, not exploration).
   Segments that start inside an open code block never open or stop anything.
3. The opener and every following segment are deleted until a segment that starts with a stop
   ("Final answer", "In conclusion", "Anyway", "Back to", "So the answer is", ...), which is kept;
   a later opener starts a new run. A run may reach the end of the thought.

The rater (`prompts/strip_exploration.md`) sees the numbered segments and replies
`<delete>3, 7-9</delete>` (1-based; the last tag wins).
"""

from __future__ import annotations

import json
import re

from curate.data.segments import segment
from curate.data.traces import Trace, thought_key

SPANS_COLUMN = "curate_exploration_spans"
PROMPT_NAME = "strip_exploration"
UNITS = ("steps", "sentences")

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


def rule_deletions(trace: Trace, markers: tuple[str, ...] = EXPLORATION_MARKERS,
                   stops: tuple[str, ...] = STOP_MARKERS) -> tuple[list[int], str]:
    """0-based segments to delete by the offline rule (see the module docstring), and why none
    when empty. `markers` open a run of exploration; `stops` (at a segment's start) end it."""
    texts = [trace.text[a:b] for a, b in trace.spans]
    answer = answer_point(trace)
    if answer is None:
        return [], "no answer reached in the thought"
    opener = re.compile("|".join(f"(?:{p})" for p in markers), re.I)
    stop = re.compile(_LEAD + "(?:" + "|".join(f"(?:{p})" for p in stops) + ")", re.I) if stops else None
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


def parse_delete(text: str | None, n: int) -> tuple[list[int] | None, str]:
    """0-based indices from the last `<delete>3, 7-9</delete>` (1-based; `none` or empty = []), or
    from a JSON reply `{"delete": "3, 7-9"}` (structured answers)."""
    from curate.tagging.structured import json_answer

    answer = json_answer(text or "", "delete")
    found = [answer] if isinstance(answer, str) else re.findall(r"<\s*delete\s*>(.*?)<\s*/\s*delete\s*>",
                                                                 text or "", re.S | re.I)
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


REPLY_CHARS = 2000  # of a rater's reply kept in the cell, so a refusal can be read next to it


def encode_spans(trace: Trace, unit: str, delete: list[int], source: str, reply: str | None = None) -> str:
    """The JSON cell for 0-based segments `delete` of `trace` (see the module docstring), with the
    rater's `reply` (its first REPLY_CHARS characters) when a rater chose them."""
    cell = {"unit": unit, "delete": [k + 1 for k in sorted(delete)], "thought": thought_key(trace), "source": source}
    if reply is not None:
        cell["reply"] = reply[:REPLY_CHARS]
    return json.dumps(cell)


def span_reply(cell: str | None) -> str | None:
    """The rater's reply kept in a spans cell, if any."""
    try:
        return json.loads(cell).get("reply") if cell else None
    except ValueError:
        return None


def decode_spans(cell: str, trace: Trace, unit: str) -> tuple[list[int] | None, str]:
    """(0-based segments to delete, "") from a cell, or (None, why) when it does not apply to
    `trace` cut by `unit` (made for another unit or another text, or not readable)."""
    try:
        spans = json.loads(cell)
        delete = [int(k) - 1 for k in spans["delete"]]
    except (ValueError, TypeError, KeyError) as err:
        return None, f"{SPANS_COLUMN} is not readable ({err})"
    if spans.get("unit") != unit:
        return None, f"{SPANS_COLUMN} counts {spans.get('unit')} segments, not {unit}"
    if spans.get("thought") != thought_key(trace):
        return None, f"{SPANS_COLUMN} was made for another text of this thought"
    return delete, ""
