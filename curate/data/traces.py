"""Where a row's reasoning trace is stored, and its thought cut into segments.

`TraceStore` reads and writes the trace text in the pool's own columns (so an edit keeps the
schema); `find_trace` locates the thought in that text: Sky-T1 `<|begin_of_thought|>...
<|end_of_thought|>`, R1 `<think>...</think>`, or the whole text of an OpenThoughts `thought` column,
cut into segments by `curate.data.segments.segment` (steps or sentences). Segment indices are
therefore defined on the stored text, by whoever reads them: the tagger's exploration spans and
`strip` agree by construction, and `thought_key` fingerprints the thought they index.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curate.data.canonical import SHAREGPT_ROLES
from curate.data.segments import segment

if TYPE_CHECKING:
    from curate.data import Pool


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


def thought_key(trace: Trace) -> str:
    """16 hex characters of sha256 over the thought and its segment spans: what a list of segment
    indices refers to."""
    body = trace.text[trace.t0:trace.t1] + repr([(a - trace.t0, b - trace.t0) for a, b in trace.spans])
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


class TraceStore:
    """Reads (`get`) and writes (`put`) each row's trace text where the pool stores it: the last
    assistant turn of a conversation column, a response/solution column, or a whole `thought`
    column (OpenThoughts metadata rows)."""

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

    def put(self, texts: dict[int, str], ids: list[str], stale: Callable[[str], bool]) -> Any:
        """The table with rows `texts` rewritten under ids `<id>~strip`, and the columns `stale`
        names set to null on them (values computed from the old text)."""
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
            if stale(name):
                col = t.column(name)
                t = t.set_column(names.index(name), name, pc.if_else(mask, pa.nulls(len(ids), col.type), col))
        return t
