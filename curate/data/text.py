"""Vectorised reads of a pool's texts: each row's problem and the length of its response.

Chat columns of `{role|from, content|value}` structs and plain string columns are read with polars
over the arrow table (no Python loop over rows); other layouts (JSON-encoded conversations, TRL
conversational prompts) fall back to the canonical examples, read once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from curate.data.domain import CODE_PREFIX, MATH_PREFIX

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from curate.data import Pool

_USER = ["user", "human"]


def problem_texts(pool: Pool) -> pl.Series:
    """The problem of every row (first user turn without Bespoke-Stratos' math/code prefixes;
    for prompt/response shapes the prompt column), stripped, in row order. Read a batch at a time."""
    import polars as pl

    parts = list(problem_batches(pool))
    return (pl.concat(parts) if parts else pl.Series([], dtype=pl.String)).rename("problem")


def problem_batches(pool: Pool) -> Iterator[pl.Series]:
    """`problem_texts`, a batch of rows at a time (for callers that keep less than the text)."""
    import polars as pl

    parts = turn_texts(pool, "first_user")
    if parts is None:
        parts = (pl.Series([next((m["content"] for m in e.messages if m["role"] == "user"), "")
                            for e in examples], dtype=pl.String) for _, examples in pool.example_batches())
    for texts in parts:
        yield (texts.fill_null("").str.strip_chars()
               .str.strip_prefix(MATH_PREFIX).str.strip_prefix(CODE_PREFIX).str.strip_chars())


def response_chars(pool: Pool) -> pl.Series:
    """Characters in each row's response (the last assistant turn), in row order; only the
    lengths are kept, a batch at a time."""
    import polars as pl

    parts = turn_texts(pool, "last")
    if parts is None:
        return pl.Series("chars", [len(e.response) for e in pool.examples()], dtype=pl.Int64)
    lengths = [p.fill_null("").str.len_chars().cast(pl.Int64) for p in parts]
    return (pl.concat(lengths) if lengths else pl.Series([], dtype=pl.Int64)).rename("chars")


def turn_texts(pool: Pool, which: str) -> Iterator[pl.Series] | None:
    """Each batch's first user turn (`which="first_user"`) or last turn ("last") as a string
    Series, read with polars; None for layouts it cannot read that way."""
    import pyarrow as pa

    cols = pool.shape.columns
    chat = cols.get("messages") or cols.get("conversations")
    column = chat or (cols.get("prompt") if which == "first_user" else cols.get("response"))
    if column is None:
        return None
    kind = pool.rows.schema.field(column).type
    if chat is None:
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return None
    elif not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return None
    fields = {f.name for f in kind.value_type} if chat else set()
    role = "role" if "role" in fields else "from" if "from" in fields else None
    text = "content" if "content" in fields else "value" if "value" in fields else None
    if chat and not (role and text):
        return None
    return (_turn_of(batch.column(column), chat is not None, which, role, text) for batch in pool.batches([column]))


def _turn_of(arrow: pa.ChunkedArray, chat: bool, which: str, role: str | None, text: str | None) -> pl.Series:
    import polars as pl
    import pyarrow as pa

    if not chat:
        return pl.from_arrow(arrow).cast(pl.String)
    frame = pl.from_arrow(pa.table({"c": arrow}))
    if which == "first_user":
        user = pl.element().struct.field(role).str.to_lowercase().is_in(_USER)
        expr = pl.col("c").list.eval(pl.element().filter(user).struct.field(text)).list.first()
    else:
        expr = pl.col("c").list.last().struct.field(text)
    return frame.select(expr.alias("t")).to_series().cast(pl.String)
