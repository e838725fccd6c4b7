"""Structured answers: ask the server to constrain the rater's reply to the answer's shape.

`--structured` modes:
- `json`: OpenAI's `response_format` with a JSON schema per task (`{"count": N}`, `{"rating": N}`,
  `{"domain": "math"}`, `{"delete": "3, 7-9"}`), which OpenAI, vLLM, SGLang and llama.cpp's server
  accept; the parsers read the JSON answer (and still the text tags, if a server ignores it);
- `regex`: vLLM's `guided_regex` with the prompt's own tag format (`<count>N</count>`, ...);
- `auto` (default): `json`, and when a server refuses the parameter (HTTP 400 naming it) the run
  falls back to plain text for every later request, once, and the card says so;
- `off`: plain text, parsed from the tags the prompts ask for.
The constraint is part of each request's parameters, so it is part of its cache key.
"""

from __future__ import annotations

import re
from typing import Any

MODES = ("auto", "json", "regex", "off")

# task kind -> (JSON key, JSON schema of the value, regex of the whole reply)
_KINDS: dict[str, tuple[str, dict[str, Any], str]] = {
    "count": ("count", {"type": "integer", "minimum": 0}, r"<count>[0-9]{1,4}</count>"),
    "rating": ("rating", {"type": "integer", "minimum": 1, "maximum": 10}, r"\[\[([1-9]|10)\]\]"),
    "domain": ("domain", {"type": "string", "enum": ["math", "code", "other"]}, r"<domain>(math|code|other)</domain>"),
    "delete": ("delete", {"type": "string", "pattern": r"^(none|[0-9, -]*)$"}, r"<delete>(none|[0-9, -]{0,400})</delete>"),
}

# How a server says it does not take a constraint parameter (OpenAI, vLLM, llama.cpp, strict proxies).
REFUSED = re.compile(r"response_format|json_schema|guided|grammar|structured output|extra (inputs|fields)|"
                     r"unrecognized|not supported|unsupported", re.I)


def kind_of(task: str) -> str:
    """The answer kind of a tagging task: domain, rating (difficulty), delete (exploration spans) or
    count (a behaviour)."""
    return {"domain": "domain", "difficulty": "rating", "exploration_spans": "delete"}.get(task, "count")


def constraint(task: str, mode: str) -> dict[str, Any]:
    """Extra request parameters asking for `task`'s answer shape under `mode` ({} for off)."""
    key, schema, regex = _KINDS[kind_of(task)]
    if mode in ("auto", "json"):
        return {"response_format": {"type": "json_schema", "json_schema": {
            "name": key, "strict": True,
            "schema": {"type": "object", "properties": {key: schema}, "required": [key],
                       "additionalProperties": False}}}}
    if mode == "regex":
        return {"guided_regex": regex}
    return {}


def json_answer(text: str, key: str) -> Any:
    """The value of `key` in a JSON object reply (None when the reply is not one)."""
    import json

    try:
        value = json.loads(text.strip().removeprefix("```json").removesuffix("```"))
    except ValueError:
        return None
    return value.get(key) if isinstance(value, dict) else None
