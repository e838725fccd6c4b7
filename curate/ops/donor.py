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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.data.canonical import r1_response
from curate.data.domain import CODE_PREFIX, MATH_PREFIX
from curate.errors import DataError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

    from curate.data import Pool

PREFIXES = {"math": MATH_PREFIX, "code": CODE_PREFIX}


def load_donor(path: str | Path, split: str | None = None, source: str | None = None) -> Pool:
    """Load a donor pool (ids from its rows, or qualified by an explicit `source`). OpenThoughts metadata rows with a null
    `deepseek_solution` render with their `ground_truth_solution` (the data layer's canonical view
    does that), so the donor's own columns are left as they are."""
    from curate.data import load_pool

    return load_pool(path, split=split, source=source)


def render_rows(pool: Pool, donor: Pool, rows: list[int], problems: list[str]) -> datasets.Dataset:
    """Donor `rows` (0-based, with their prefix-free `problems`) as a Dataset in `pool`'s schema
    and features, ready to concatenate with `pool.dataset`."""
    import datasets
    import pyarrow as pa

    schema = pool.dataset.with_format("arrow")[:].schema
    picked = donor.dataset.select(rows)
    donor_table = picked.with_format("arrow")[:]
    same_shape = set(pool.input_columns) <= set(donor_table.column_names)
    columns: dict[str, pa.Array] = {}
    texts = None if same_shape else _texts(pool, donor.with_dataset(picked), problems)
    for field in schema:
        if texts is not None and field.name in texts:
            columns[field.name] = pa.array(texts[field.name], type=field.type)
        elif field.name in donor_table.column_names:
            try:
                columns[field.name] = donor_table.column(field.name).cast(field.type)
            except (pa.ArrowException, TypeError) as err:
                raise DataError(f"donor column {field.name!r} does not fit the pool's: {err}") from None
        else:
            columns[field.name] = pa.nulls(len(rows), type=field.type)
    table = pa.table(columns, schema=schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=pool.dataset.features))


def _texts(pool: Pool, picked: Pool, problems: list[str]) -> dict[str, list[Any]]:
    """The pool's text columns for the picked donor rows."""
    cols = pool.shape.columns
    style = _trace_style(pool)
    domains, prefixes, systems = _pool_habits(pool)
    users, answers, system_col = [], [], []
    for example, problem in zip(picked.examples(), problems, strict=True):
        domain = example.domain or "unknown"
        prefix = prefixes.get(domain)
        users.append(f"{prefix} {problem}" if prefix else problem)
        thought, solution = example.thought, example.solution
        if solution is None:
            thought, solution = None, example.response
        answers.append(_trace(style, thought, solution))
        system_col.append(systems.get(domain, systems.get(None)))
    out: dict[str, list[Any]] = {}
    chat = cols.get("messages") or cols.get("conversations")
    if chat:
        kind = pool.dataset.features[chat]
        inner = kind.feature if hasattr(kind, "feature") else kind[0]
        keys = set(inner)
        role, text = ("role", "content") if "role" in keys else ("from", "value")
        user_name = "user" if role == "role" else _speaker(pool, chat, role)
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


def _trace_style(pool: Pool) -> str:
    from curate.ops.text import _turn

    answers = _turn(pool.with_dataset(pool.dataset.select(range(min(200, len(pool))))), "last")
    sample = " ".join(answers.drop_nulls().to_list()) if answers is not None else ""
    return "sky" if "<|begin_of_solution|>" in sample else "r1" if "</think>" in sample else "plain"


def _pool_habits(pool: Pool) -> tuple[list[str], dict[str, str], dict[str | None, str]]:
    """(domains, {domain: user prefix}, {domain or None: most common system prompt})."""
    from curate.ops.text import _turn

    head = pool.with_dataset(pool.dataset.select(range(min(2000, len(pool)))))
    domains = head.dataset["curate_domain"]
    domains = list(domains)
    firsts = _turn(head, "first_user")
    firsts = firsts.fill_null("").to_list() if firsts is not None else [""] * len(domains)
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
    return domains, prefixes, systems


def _speaker(pool: Pool, chat: str, role: str) -> str:
    first = pool.dataset[0][chat]
    names = [t.get(role) for t in first] if first else []
    return "human" if "human" in names else "user"
