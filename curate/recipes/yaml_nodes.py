"""Reading recipe YAML nodes: errors with line numbers, mappings, values and cheap type checks.

Shared by the recipe checker (`curate.recipes.check`) and its `validate:` section
(`curate.recipes.validation`), so neither imports the other.
"""

from __future__ import annotations

from typing import Any


class Errors(list):
    """(line, "FILE:LINE: message") pairs, collected so a check reports every problem at once."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def add(self, at, message: str) -> None:
        """`at`: a YAML node or a 1-based line number."""
        line = at if isinstance(at, int) else at.start_mark.line + 1
        self.append((line, f"{self.where}:{line}: {message}"))


def problems(message: str) -> list[str]:
    """A config's "; "-joined problems, not splitting inside parentheses."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(message):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and message.startswith("; ", i):
            out.append(message[start:i])
            start = i + 2
    return [*out, message[start:]]


def mapping(node, errors: Errors, what: str) -> dict[str, tuple[Any, Any]]:
    """{key: (key node, value node)}; duplicate and non-string keys are errors."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        errors.add(node, f"{what}: expected a mapping")
        return {}
    out = {}
    for knode, vnode in node.value:
        key = value(knode)
        if not isinstance(key, str):
            errors.add(knode, f"{what}: keys must be names, got {key!r}")
        elif key in out:
            errors.add(knode, f"{what}: {key!r} given twice")
        else:
            out[key] = (knode, vnode)
    return out


def value(node) -> Any:
    """The Python value of a YAML node (safe types only)."""
    import yaml

    return yaml.SafeLoader("").construct_document(node)


_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "None": type(None)}


def type_problem(annotation: Any, value: Any) -> str | None:
    """Why `value` cannot be the field typed `annotation` (a string under PEP 563), or None.
    Cheap checks only: the outer type of each union member."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    members = [m.strip() for m in text.split("|")]
    for member in members:
        outer = member.split("[", 1)[0]
        if outer in ("tuple", "list"):
            if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
                return None
            continue
        if outer == "dict":
            if isinstance(value, dict):
                return None
            continue
        python = _TYPES.get(outer)
        if python is None:
            return None  # a type this check does not know: leave it to __post_init__
        if isinstance(value, bool) and outer != "bool":
            continue
        if isinstance(value, python):
            return None
    shown = " or ".join("a list" if m.startswith(("tuple", "list")) else m for m in members)
    return f"expected {shown}, got {value!r}"
