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


def type_problem(setting, value: Any) -> str | None:
    """Why `value` cannot be the value of `setting` (a `curate.settings.Setting`), or None.
    Cheap checks of the outer type only; ranges and choices are the config's own checks."""
    if value is None:
        return None if setting.optional else f"expected a value, got {value!r}"
    if setting.kind == "flag":
        ok, shown = isinstance(value, bool), "true or false"
    elif setting.kind == "list":
        ok = isinstance(value, list) and all(isinstance(v, str | int | float) for v in value)
        shown = "a list"
    elif setting.kind == "mapping":
        ok, shown = isinstance(value, dict), "a mapping"
    else:
        allowed = tuple(float if t is float else t for t in setting.types) or (str,)
        ok = (not isinstance(value, bool) and (isinstance(value, allowed)
                                              or (float in allowed and isinstance(value, int))))
        shown = " or ".join(t.__name__ for t in allowed)
    return None if ok else f"expected {shown}, got {value!r}"
