"""The canonical view of a row: chat messages, the response's thought/solution split, a content hash.

Every shape is read into the same form: `{"role", "content"}` messages with any separate system
prompt folded in as the first message and the assistant response last. Errors here are
`DataError`s without a location; the caller adds the file and row index.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from curate.data.shapes import Shape
from curate.errors import DataError

# ShareGPT speaker names -> chat roles.
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
}
_SKY_THOUGHT = re.compile(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>", re.S)
_SKY_SOLUTION = re.compile(r"<\|begin_of_solution\|>(.*?)(?:<\|end_of_solution\|>|$)", re.S)


def row_messages(row: Mapping[str, Any], shape: Shape) -> list[dict[str, str]]:
    """The row as chat messages: system first (if any), assistant response last.

    Raises `DataError` when there is no assistant response or the conversation ends on another turn.
    """
    cols = shape.columns
    system = _text(row.get(cols["system"])) if "system" in cols else ""
    if "messages" in cols or "conversations" in cols:
        raw = row.get(cols.get("messages") or cols["conversations"])
        messages = _chat(raw)
    else:
        messages = _pair(row, shape)
    if system.strip() and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("the conversation has no assistant turn")
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"the conversation ends with a {messages[-1]['role']!r} turn, not the assistant's response"
        )
    return messages


def split_response(text: str) -> tuple[str | None, str | None]:
    """Split a reasoning trace into (thought, solution); (None, None) when it is not marked.

    Sky-T1 / Bespoke-Stratos: `<|begin_of_thought|>...<|end_of_thought|>` then
    `<|begin_of_solution|>...<|end_of_solution|>` (the solution is the rest when unmarked).
    DeepSeek-R1 / OpenThoughts: `<think>...</think>` then the solution (the opening tag is optional,
    as R1 chat templates often put it in the prompt). Both parts are stripped of outer whitespace.
    """
    thought = _SKY_THOUGHT.search(text)
    if thought:
        rest = text[thought.end():]
        solution = _SKY_SOLUTION.search(rest)
        return thought.group(1).strip(), (solution.group(1) if solution else rest).strip()
    if "</think>" in text:
        before, _, after = text.partition("</think>")
        before = before.strip()
        if before.startswith("<think>"):
            before = before[len("<think>"):]
        return before.strip(), after.strip()
    return None, None


def r1_response(thought: str, solution: str) -> str:
    """The DeepSeek-R1 / OpenThoughts assistant turn built from its two parts."""
    return f"<think>\n{thought}\n</think>\n\n{solution}"


def content_hash(messages: list[dict[str, str]]) -> str:
    """16 hex chars of sha256 over the canonical messages (order, roles and contents)."""
    blob = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _text(value: Any) -> str:
    """A message content as text: None -> '', a list of parts -> their joined text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text") or "" if isinstance(p, Mapping) else str(p) for p in value)
    return str(value)


def _chat(raw: Any) -> list[dict[str, str]]:
    if isinstance(raw, str):  # some exports store the conversation JSON-encoded
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise DataError("the conversation column holds a string that is not JSON") from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DataError(f"the conversation is a {type(raw).__name__}, expected a list of turns")
    messages = []
    for turn in raw:
        if not isinstance(turn, Mapping):
            raise DataError(f"a conversation turn is a {type(turn).__name__}, expected an object")
        speaker = turn.get("role") if turn.get("role") is not None else turn.get("from")
        if speaker is None:
            raise DataError("a conversation turn has neither 'role' nor 'from'")
        speaker = str(speaker).strip().lower()
        content = turn.get("content") if "content" in turn else turn.get("value")
        messages.append({"role": SHAREGPT_ROLES.get(speaker, speaker), "content": _text(content)})
    return messages


def _pair(row: Mapping[str, Any], shape: Shape) -> list[dict[str, str]]:
    cols = shape.columns
    prompt = row.get(cols["prompt"])
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
        messages = _chat(prompt)  # TRL conversational prompt-completion
    else:
        if prompt is None:
            raise DataError(f"the prompt column {cols['prompt']!r} is null")
        text = _text(prompt)
        extra = _text(row.get(cols["input"])) if "input" in cols else ""
        messages = [{"role": "user", "content": f"{text}\n\n{extra}" if extra.strip() else text}]
    if "response" in cols:
        response = _first_response(row.get(cols["response"]), cols["response"])
        if isinstance(response, list):
            return messages + _chat(response)
    elif "thought" in cols and "solution" in cols:
        thought, solution = row.get(cols["thought"]), row.get(cols["solution"])
        if solution is None:
            # OpenThoughts' metadata config leaves deepseek_solution null on some rows; its
            # reference solution is the natural stand-in.
            solution = row.get("ground_truth_solution")
        if solution is None:
            raise DataError(f"the solution column {cols['solution']!r} is null")
        response = r1_response(_text(thought), _text(solution)) if thought else _text(solution)
    else:
        response = row.get(cols["solution"])
        if response is None:
            raise DataError(f"the solution column {cols['solution']!r} is null")
    return messages + [{"role": "assistant", "content": _text(response)}]


def _first_response(value: Any, column: str) -> Any:
    """A response value: text, a list of turns, or (TACO/APPS) a list of solutions -> the first."""
    if isinstance(value, str) and value.startswith("[") and column == "solutions":
        try:
            value = json.loads(value)  # APPS/TACO store their solutions JSON-encoded
        except json.JSONDecodeError:
            return value
    if value is None:
        raise DataError(f"the response column {column!r} is null")
    if isinstance(value, list):
        if not value:
            raise DataError(f"the response column {column!r} is an empty list: no assistant turn")
        if isinstance(value[0], Mapping):
            return value
        return _text(value[0])
    return value
