"""Donor rows: load a donor pool of another shape and render its rows into the pool's schema.

A donor in OpenThoughts-114k metadata shape (`problem`, `deepseek_reasoning`, `deepseek_solution`
or `ground_truth_solution`, `domain`, `level`) becomes, in a Bespoke-Stratos-shaped pool,
`system` (the pool's most common system prompt for that domain) plus `conversations`:
user = the pool's prefix for the domain (Bespoke-Stratos' math/code prefix, when most of the pool's
rows of that domain start with it) + the problem; assistant =
`<|begin_of_thought|>\\n\\n{thought}\\n\\n<|end_of_thought|>\\n\\n<|begin_of_solution|>\\n\\n{solution}\\n\\n<|end_of_solution|>`
(no thought block when the donor has no reasoning, as for TACO code rows). A pool whose traces use
`<think>` gets R1-style turns instead; a prompt/response pool gets the same texts in its two
columns. Other pool columns are copied from donor columns of the same name (e.g. `level`), else
null; a donor already in the pool's own shape is copied column by column.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.data.canonical import r1_response
from curate.data.domain import CODE_PREFIX, MATH_PREFIX
from curate.errors import DataError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

    from curate.data import Pool
    from curate.data.rows import Spill

PREFIXES = {"math": MATH_PREFIX, "code": CODE_PREFIX}


def load_donor(path: str | Path, split: str | None = None, source: str | None = None) -> Pool:
    """Load a donor pool (ids from its rows, or qualified by an explicit `source`). OpenThoughts metadata rows with a null
    `deepseek_solution` render with their `ground_truth_solution` (the data layer's canonical view
    does that), so the donor's own columns are left as they are."""
    from curate.data import load_pool

    return load_pool(path, split=split, source=source)


@dataclass(frozen=True)
class Habits:
    """How the pool writes its rows, read once from its first rows: trace style (sky/r1/plain),
    {domain: user prefix}, {domain or None: most common system prompt}."""

    style: str
    prefixes: dict[str, str]
    systems: dict[str | None, str]
    speaker: str  # the user's name in a ShareGPT-style chat column: human or user


def render_rows(pool: Pool, donor: Pool, rows: Sequence[int], positions: Sequence[int]) -> Spill:
    """Donor `rows` (0-based) rendered into `pool`'s schema, read back in the order of their output
    `positions` (`curate.data.rows.Spill`). The donor is read once, a batch at a time; only the
    rendered rows are written, to a temporary folder."""
    import numpy as np

    from curate.data.rows import SpillWriter

    order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
    wanted = np.asarray(rows, dtype=np.int64)[order]
    positions = np.asarray(positions, dtype=np.int64)[order]
    same_shape = set(pool.input_columns) <= set(donor.column_names)
    habits = None if same_shape else pool_habits(pool)
    spill = SpillWriter(pool.rows.schema)
    offset = 0
    for batch in donor.batches():
        n = batch.num_rows
        lo, hi = np.searchsorted(wanted, [offset, offset + n])
        if hi > lo:
            picked = batch.take(wanted[lo:hi] - offset)
            spill.add(_render(pool, donor, picked, habits), positions[lo:hi])
        offset += n
    return spill.close()


def _render(pool: Pool, donor: Pool, picked: pa.Table, habits: Habits | None) -> pa.Table:
    """Picked donor rows as a table in the pool's schema (`habits` None: the donor has the pool's shape)."""
    import pyarrow as pa

    from curate.data.text import problem_texts

    columns: dict[str, pa.Array] = {}
    texts = None
    if habits is not None:
        rows = donor.with_dataset(_dataset(picked))
        texts = _texts(pool, rows, problem_texts(rows).to_list(), habits)
    for field in pool.rows.schema:
        if texts is not None and field.name in texts:
            columns[field.name] = pa.array(texts[field.name], type=field.type)
        elif field.name in picked.column_names:
            try:
                columns[field.name] = picked.column(field.name).cast(field.type)
            except (pa.ArrowException, TypeError) as err:
                raise DataError(f"donor column {field.name!r} does not fit the pool's: {err}") from None
        else:
            columns[field.name] = pa.nulls(picked.num_rows, type=field.type)
    return pa.table(columns, schema=pa.schema(list(pool.rows.schema)))


def _dataset(table: pa.Table) -> datasets.Dataset:
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    return datasets.Dataset(table.replace_schema_metadata(None), fingerprint=generate_random_fingerprint())


def _texts(pool: Pool, picked: Pool, problems: Sequence[str], habits: Habits) -> dict[str, list[Any]]:
    """The pool's text columns for the picked donor rows."""
    cols = pool.shape.columns
    users, answers, system_col = [], [], []
    for example, problem in zip(picked.examples(), problems, strict=True):
        domain = example.domain or "unknown"
        prefix = habits.prefixes.get(domain)
        users.append(f"{prefix} {problem}" if prefix else problem)
        thought, solution = example.thought, example.solution
        if solution is None:
            thought, solution = None, example.response
        answers.append(_trace(habits.style, thought, solution))
        system_col.append(habits.systems.get(domain, habits.systems.get(None)))
    out: dict[str, list[Any]] = {}
    chat = cols.get("messages") or cols.get("conversations")
    if chat:
        kind = pool.features[chat]
        inner = kind.feature if hasattr(kind, "feature") else kind[0]
        keys = set(inner)
        role, text = ("role", "content") if "role" in keys else ("from", "value")
        user_name = "user" if role == "role" else habits.speaker
        assistant = "assistant" if role == "role" else ("gpt" if user_name == "human" else "assistant")
        out[chat] = [[{role: user_name, text: u}, {role: assistant, text: a}] for u, a in zip(users, answers, strict=True)]
    elif "prompt" in cols and "response" in cols:
        out[cols["prompt"]], out[cols["response"]] = users, answers
    else:
        raise DataError(f"cannot render donor rows into a pool of shape {pool.shape.name!r}; "
                        "give a donor in the pool's own shape")
    if "system" in cols:
        out[cols["system"]] = system_col
    return out


def _trace(style: str, thought: str | None, solution: str) -> str:
    if style == "sky":
        head = f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n" if thought else ""
        return f"{head}<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>"
    if style == "r1":
        return r1_response(thought, solution) if thought else solution
    return f"{thought}\n\n{solution}" if thought else solution


def pool_habits(pool: Pool) -> Habits:
    """The pool's trace style (from its first 200 rows), user prefixes and system prompts (first 2000)."""
    import polars as pl

    from curate.data.text import turn_texts

    head = head_of(pool, 2000)
    answers = turn_texts(head_of(head, 200), "last")
    sample = " ".join(pl.concat(list(answers)).drop_nulls().to_list()) if answers is not None else ""
    style = "sky" if "<|begin_of_solution|>" in sample else "r1" if "</think>" in sample else "plain"
    domains = list(head.dataset["curate_domain"])
    firsts = turn_texts(head, "first_user")
    firsts = pl.concat(list(firsts)).fill_null("").to_list() if firsts is not None else [""] * len(domains)
    prefixes = {}
    for domain, prefix in PREFIXES.items():
        mine = [f for f, d in zip(firsts, domains, strict=True) if d == domain]
        if mine and sum(f.startswith(prefix) for f in mine) * 2 >= len(mine):
            prefixes[domain] = prefix
    systems: dict[str | None, str] = {}
    column = pool.shape.columns.get("system")
    if column:
        values = list(head.dataset[column])
        for domain in [*set(domains), None]:
            mine = [v for v, d in zip(values, domains, strict=True) if domain is None or d == domain]
            if mine:
                systems[domain] = Counter(mine).most_common(1)[0][0]
    chat = pool.shape.columns.get("messages") or pool.shape.columns.get("conversations")
    first = head.dataset[0][chat] if chat and len(head) else None
    names = [t.get("from") for t in first] if isinstance(first, list) else []
    return Habits(style, prefixes, systems, "human" if "human" in names else "user")


def head_of(pool: Pool, n: int) -> Pool:
    """The first `n` rows of `pool`, in memory."""
    import datasets
    import pyarrow as pa

    batches = []
    have = 0
    for batch in pool.batches():
        batches.append(batch)
        have += batch.num_rows
        if have >= n:
            break
    table = pa.concat_tables(batches).slice(0, n)
    return pool.with_dataset(datasets.Dataset(table.replace_schema_metadata(None),
                                              info=datasets.DatasetInfo(features=pool.features)))
