"""Shapes: which columns of a pool play which role (prompt, response, conversation, domain, ...).

A `Shape` names a known layout (`sharegpt`, `messages`, `pair`, `openthoughts`, `math`, `gsm8k`,
`metamath`, `mbpp`, `humaneval`, `taco`, or `mapped` when only the user's `--map` describes it) and
records the role -> column mapping used to read it. Detection looks at column names and, where names
are ambiguous, at the first few rows. A user mapping (`--map role=column`) overrides detection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from curate.errors import DataError, UsageError

# Roles a column can play. `input` is the optional second half of an Alpaca-style prompt.
ROLES = (
    "prompt", "response", "system", "messages", "conversations", "domain", "difficulty", "id",
    "thought", "solution", "input",
)
CHAT_ROLES = frozenset({"messages", "conversations"})
PAIR_ROLES = frozenset({"prompt", "response", "thought", "solution", "input"})

# Benchmark shapes imply the domain of every row (curate_domain_source == "native").
SHAPE_DOMAIN = {
    "math": "math", "gsm8k": "math", "metamath": "math",
    "mbpp": "code", "humaneval": "code", "taco": "code",
}
ID_COLUMNS = ("id", "task_id", "unique_id", "problem_id")
DIFFICULTY_COLUMNS = ("level", "difficulty")  # MATH `level`; APPS/TACO `difficulty`
# Prompt/response pairs under common names, tried in order.
PAIR_NAMES = (
    ("prompt", "response"), ("prompt", "completion"), ("instruction", "output"),
    ("query", "response"), ("question", "answer"), ("problem", "solution"),
    ("prompt", "output"),
)
_GSM8K_ANSWER = re.compile(r"\n####\s*\S")


@dataclass(frozen=True)
class Shape:
    """A pool's layout: `name` plus the role -> column mapping used to read its rows.

    `mapped` lists the roles that came from the user's `--map` rather than from detection (a mapped
    `domain` column counts as the user's own labels: `curate_domain_source == "column"`).
    """

    name: str
    columns: Mapping[str, str]
    mapped: frozenset[str] = field(default_factory=frozenset)

    @property
    def implied_domain(self) -> str | None:
        """The domain every row has because of what the pool is (MATH is math), else None."""
        return SHAPE_DOMAIN.get(self.name)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "columns": dict(self.columns), "mapped": sorted(self.mapped)}


def parse_mapping(items: Sequence[str]) -> dict[str, str]:
    """Parse `--map role=column` options into a dict; an unknown role is a `UsageError`."""
    mapping: dict[str, str] = {}
    for item in items:
        role, sep, column = item.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not role or not column:
            raise UsageError(f"--map {item!r}: expected ROLE=COLUMN, e.g. --map prompt=question")
        mapping[role] = column
    check_roles(mapping)
    return mapping


def check_roles(mapping: Mapping[str, str]) -> None:
    for role in mapping:
        if role not in ROLES:
            raise UsageError(f"--map {role}=...: unknown role {role!r} (roles: {', '.join(ROLES)})")


def resolve_shape(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    mapping: Mapping[str, str] | None = None,
    where: str = "pool",
) -> Shape:
    """The shape of a table with these `columns`, given its first few `rows` and a user mapping.

    Mapped roles replace detected ones; mapping a chat column (`messages`/`conversations`) drops the
    detected prompt/response roles and vice versa. Raises `UsageError` for an unknown role,
    `DataError` for a mapped column that does not exist or a shape that cannot be made out.
    """
    mapping = dict(mapping or {})
    check_roles(mapping)
    for role, column in mapping.items():
        if column not in columns:
            raise DataError(
                f"--map {role}={column}: {where} has no column {column!r} "
                f"(columns: {', '.join(columns)})"
            )
    detected = detect_shape(columns, rows)
    name = detected.name if detected else "mapped"
    merged = dict(detected.columns) if detected else {}
    if CHAT_ROLES & mapping.keys():
        merged = {r: c for r, c in merged.items() if r not in CHAT_ROLES | PAIR_ROLES}
        name = "mapped" if not detected or not (CHAT_ROLES & detected.columns.keys()) else name
    elif PAIR_ROLES & mapping.keys() and CHAT_ROLES & merged.keys():
        merged = {r: c for r, c in merged.items() if r not in CHAT_ROLES}
        name = "mapped"
    merged.update(mapping)
    has_chat = bool(CHAT_ROLES & merged.keys())
    has_pair = "prompt" in merged and bool({"response", "solution"} & merged.keys())
    if not (has_chat or has_pair):
        raise DataError(
            f"{where}: cannot tell which columns hold the conversation (columns: "
            f"{', '.join(columns)}); pass --map prompt=COLUMN --map response=COLUMN, "
            "or --map messages=COLUMN"
        )
    return Shape(name, merged, frozenset(mapping))


def detect_shape(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Shape | None:
    """Detect a known shape from column names (and the first rows where names are ambiguous)."""
    cols = set(columns)
    found = _detect_core(cols, rows)
    if found is None:
        return None
    name, roles = found
    # Roles any shape can carry, when the column is there and not already used.
    used = set(roles.values())
    extras = {"system": ("system",), "domain": ("domain",), "id": ID_COLUMNS,
              "difficulty": DIFFICULTY_COLUMNS}
    for role, candidates in extras.items():
        if role in roles:
            continue
        for column in candidates:
            if column in cols and column not in used:
                roles[role] = column
                break
    return Shape(name, roles)


def _detect_core(cols: set[str], rows: Sequence[Mapping[str, Any]]) -> tuple[str, dict] | None:
    if "conversations" in cols:
        return "sharegpt", {"conversations": "conversations"}
    if "messages" in cols:
        return "messages", {"messages": "messages"}
    if {"problem", "deepseek_reasoning", "deepseek_solution"} <= cols:
        return "openthoughts", {
            "prompt": "problem", "thought": "deepseek_reasoning", "solution": "deepseek_solution"}
    if {"prompt", "canonical_solution", "task_id"} <= cols:
        return "humaneval", {"prompt": "prompt", "response": "canonical_solution"}
    if {"text", "code", "test_list"} <= cols:
        return "mbpp", {"prompt": "text", "response": "code"}
    if {"question", "solutions"} <= cols:  # APPS / TACO on the Hub: solutions is a JSON list
        return "taco", {"prompt": "question", "response": "solutions"}
    if {"prompt", "output"} <= cols and "instruction" not in cols and (
        "task_id" in cols or "difficulty" in cols or _first_is_list(rows, "output")
    ):
        return "taco", {"prompt": "prompt", "response": "output"}
    if {"problem", "solution"} <= cols and cols & {"level", "subject", "type", "answer"}:
        return "math", {"prompt": "problem", "response": "solution"}
    for prompt, response in (("query", "response"), ("question", "answer")):
        if {prompt, response} <= cols and cols & {"type", "original_question"}:
            return "metamath", {"prompt": prompt, "response": response}
    if {"question", "answer"} <= cols and _looks_like_gsm8k(rows):
        return "gsm8k", {"prompt": "question", "response": "answer"}
    for prompt, response in PAIR_NAMES:
        if {prompt, response} <= cols:
            roles = {"prompt": prompt, "response": response}
            if prompt == "instruction" and "input" in cols:
                roles["input"] = "input"
            return "pair", roles
    return None


def _first_is_list(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and isinstance(values[0], list)


def _looks_like_gsm8k(rows: Sequence[Mapping[str, Any]]) -> bool:
    answers = [r.get("answer") for r in rows if isinstance(r.get("answer"), str)]
    return bool(answers) and all(_GSM8K_ANSWER.search(a) for a in answers)
