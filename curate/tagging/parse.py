"""Reading answers out of rater responses: tolerant of spacing and extra text, LAST tag wins.

Each parser returns `(value, reason)`: a value and None, or None and why it could not be read.
"Could not parse" is never turned into 0.
"""

from __future__ import annotations

import re

from curate.tagging.structured import json_answer

_COUNT = re.compile(r"<\s*count\s*>\s*\[?\s*(-?\d+)\s*\]?\s*<\s*/\s*count\s*>", re.I)
_RATING = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")
_DOMAIN = re.compile(r"<\s*domain\s*>\s*([A-Za-z]+)\s*<\s*/\s*domain\s*>", re.I)
DOMAIN_LABELS = ("math", "code", "other")


def parse_count(text: str | None) -> tuple[int | None, str | None]:
    """The last `<count>N</count>` as a non-negative int."""
    if not text:
        return None, "empty response"
    answer = json_answer(text, "count")
    if isinstance(answer, int) and not isinstance(answer, bool):
        return (answer, None) if answer >= 0 else (None, f"negative count {answer}")
    found = _COUNT.findall(text)
    if not found:
        return None, "no <count>N</count> in the response"
    value = int(found[-1])
    if value < 0:
        return None, f"negative count {value}"
    return value, None


def parse_rating(text: str | None, low: int = 1, high: int = 10) -> tuple[int | None, str | None]:
    """The last `[[n]]` rounded to an int in [low, high]."""
    if not text:
        return None, "empty response"
    answer = json_answer(text, "rating")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        value = round(answer)
        return (value, None) if low <= value <= high else (None, f"rating {answer} outside {low}-{high}")
    found = _RATING.findall(text)
    if not found:
        return None, "no [[n]] rating in the response"
    value = round(float(found[-1]))
    if not low <= value <= high:
        return None, f"rating {found[-1]} outside {low}-{high}"
    return value, None


def parse_domain(text: str | None) -> tuple[str | None, str | None]:
    """The last `<domain>label</domain>` as math, code or other."""
    if not text:
        return None, "empty response"
    answer = json_answer(text, "domain")
    if isinstance(answer, str):
        return (answer.lower(), None) if answer.lower() in DOMAIN_LABELS else (None, f"unknown domain label {answer!r}")
    found = _DOMAIN.findall(text)
    if not found:
        return None, "no <domain>label</domain> in the response"
    label = found[-1].lower()
    if label not in DOMAIN_LABELS:
        return None, f"unknown domain label {found[-1]!r}"
    return label, None
