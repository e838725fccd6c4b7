"""Vectorised reads of a pool's texts: each row's problem and the length of its response.

Chat columns of `{role|from, content|value}` structs and plain string columns are read with polars
over the arrow table (no Python loop over rows); other layouts (JSON-encoded conversations, TRL
conversational prompts) fall back to the canonical examples, read once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.data.domain import CODE_PREFIX, MATH_PREFIX

if TYPE_CHECKING:
    import polars as pl

    from curate.data import Pool

_USER = ["user", "human"]


def problem_texts(pool: Pool) -> pl.Series:
    """The problem of every row (first user turn without Bespoke-Stratos' math/code prefixes;
    for prompt/response shapes the prompt column), stripped, in row order."""
    texts = _turn(pool, "first_user")
    if texts is None:
        import polars as pl

        texts = pl.Series([next((m["content"] for m in e.messages if m["role"] == "user"), "")
                           for e in pool.examples()], dtype=pl.String)
    return (
        texts.fill_null("").str.strip_chars()
        .str.strip_prefix(MATH_PREFIX).str.strip_prefix(CODE_PREFIX).str.strip_chars()
        .rename("problem")
    )


def response_chars(pool: Pool) -> pl.Series:
    """Characters in each row's response (the last assistant turn), in row order."""
    import polars as pl

    texts = _turn(pool, "last")
    if texts is None:
        return pl.Series("chars", [len(e.response) for e in pool.examples()], dtype=pl.Int64)
    return texts.fill_null("").str.len_chars().cast(pl.Int64).rename("chars")


def _turn(pool: Pool, which: str) -> pl.Series | None:
    import polars as pl
    import pyarrow as pa

    cols = pool.shape.columns
    chat = cols.get("messages") or cols.get("conversations")
    if chat is None:
        column = cols.get("prompt") if which == "first_user" else cols.get("response")
        if column is None:
            return None
        arrow = pool.dataset.with_format("arrow")[:].column(column)
        if pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type):
            return pl.from_arrow(arrow).cast(pl.String)
        return None
    arrow = pool.dataset.with_format("arrow")[:].column(chat)
    kind = arrow.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return None
    fields = {f.name for f in kind.value_type}
    role = "role" if "role" in fields else "from" if "from" in fields else None
    text = "content" if "content" in fields else "value" if "value" in fields else None
    if not (role and text):
        return None
    frame = pl.from_arrow(pa.table({"c": arrow}))
    if which == "first_user":
        user = pl.element().struct.field(role).str.to_lowercase().is_in(_USER)
        expr = pl.col("c").list.eval(pl.element().filter(user).struct.field(text)).list.first()
    else:
        expr = pl.col("c").list.last().struct.field(text)
    return frame.select(expr.alias("t")).to_series().cast(pl.String)
