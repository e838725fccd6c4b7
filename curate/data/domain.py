"""Offline domain labels: `curate_domain` in {math, code, other, unknown} and where each came from.

Precedence, first match wins (`curate_domain_source` in parentheses):
1. the user's labels: a `--map domain=COLUMN` column, or a `curate_domain` column already in the
   input (`column`);
2. what the pool natively says: a `domain` column (OpenThoughts) or a benchmark shape that implies
   one (MATH/GSM8K/MetaMath are math, MBPP/HumanEval/TACO are code) (`native`);
3. Bespoke-Stratos' fixed prompt prefixes on the first user turn (`prefix`);
4. content rules on the response: a code fence or `def`/`class` line is code, `\\boxed{}` or inline
   LaTeX is math (`rule`). When no rule fires the domain is `unknown` (source `rule`); the LLM
   tagger later fills only those rows.

Labels other than math/code (biology, puzzle, ...) become `other`; the raw label stays in the input's
own column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DOMAINS = ("math", "code", "other", "unknown")
DOMAIN_SOURCES = ("column", "native", "prefix", "rule", "llm")

# Bespoke-Stratos-17k's exact prefixes (the code one comes from its APPS/TACO rows).
MATH_PREFIX = "Return your final response within \\boxed{}."
CODE_PREFIX = "Generate an executable Python function generated from the given prompt."

_CODE = re.compile(
    r"```(?:python|py|python3|cpp|c\+\+|c|java|javascript|js|rust|go)\b|^\s*(?:def|class)\s+\w+\s*[(:]",
    re.M | re.I,
)
# Inline math must hold an operator or a LaTeX command, so "$5 and $6" (prices) is not math.
_MATH = re.compile(r"\\boxed\{|\\frac\{|\\\(|\\\[|\$[^$\n]*[\\^_=+<>{}][^$\n]*\$")
_CODE_LABELS = {"code", "coding", "programming", "python", "software"}


def normalize_domain(value: Any) -> str | None:
    """A raw domain label as math/code/other; None for empty, missing or 'unknown' labels."""
    if value is None:
        return None
    label = str(value).strip().lower()
    if not label or label == "unknown":
        return None
    if label.startswith("math"):
        return "math"
    if label in _CODE_LABELS or label.startswith("code"):
        return "code"
    return "other"


def prefix_domain(messages: list[dict[str, str]]) -> str | None:
    """math/code when the first user turn starts with a Bespoke-Stratos prefix, else None."""
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    text = first_user.lstrip()
    if text.startswith(MATH_PREFIX):
        return "math"
    if text.startswith(CODE_PREFIX):
        return "code"
    return None


def rule_domain(response: str) -> str | None:
    """code when the response holds code, math when it holds LaTeX math, else None."""
    if _CODE.search(response):
        return "code"
    if _MATH.search(response):
        return "math"
    return None


def assign_domain(
    row: Mapping[str, Any],
    messages: list[dict[str, str]],
    *,
    user_column: str | None,
    native_column: str | None,
    implied: str | None,
) -> tuple[str, str]:
    """(curate_domain, curate_domain_source) for one row, by the precedence in the module doc."""
    if user_column is not None:
        label = normalize_domain(row.get(user_column))
        if label:
            return label, "column"
    if native_column is not None:
        label = normalize_domain(row.get(native_column))
        if label:
            return label, "native"
    if implied:
        return implied, "native"
    label = prefix_domain(messages)
    if label:
        return label, "prefix"
    label = rule_domain(messages[-1]["content"])
    return (label, "rule") if label else ("unknown", "rule")
