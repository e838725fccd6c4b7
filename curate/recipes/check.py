"""Parse and check a recipe: every error, with its line, before any work starts.

A recipe is YAML with three top-level keys over a closed set of operations:

    inputs:  {name: path}          # `pool` is the starting pool; others are donors, query sets, benchmarks
    steps:   [{op: NAME, ...}]     # ops: see OPS; each reads the current pool and produces the next
    output:  path | {path, format, emit}
    validate: {...}                # optional: fine-tune and evaluate output vs. baseline (curate.recipes.validation)

Paths are relative to the recipe file. The ops are the registry's (`curate.registry`) plus
`write` (write the current pool somewhere and go on). A step's keys are its op's settings
(`curate.settings`: the config's fields, by the same names), checked by name, by type and by the
config's own `__post_init__`, plus the op's inputs as input names (`donor`, `queries`; tag's
`also`); settings marked `input_names` (`decontaminate`) list input names instead of paths.
Nothing names Python code.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.recipes import yaml_nodes as nodes

TOP_KEYS = ("inputs", "steps", "output")
OPTIONAL_KEYS = ("validate",)  # see curate.recipes.validation
NAME = re.compile(r"[A-Za-z0-9_]+")


WRITE_KEYS = {"path": "where to write the current pool", "format": "disk, parquet or jsonl [default: from the suffix]",
              "emit": "input or messages"}


def op_names() -> list[str]:
    """Every op a recipe step may name: the registry's, then `write`."""
    from curate.registry import OPERATIONS

    return [*OPERATIONS, "write"]


@dataclass
class Step:
    index: int  # 1-based
    op: str
    line: int
    params: dict[str, Any]  # as written, input names resolved to paths
    config: Any = None  # the constructed config (None for write)
    refs: dict[str, Any] = field(default_factory=dict)  # donor / queries / also: input names


@dataclass
class Recipe:
    path: Path
    text: str
    inputs: dict[str, Path]
    steps: list[Step]
    output: Path
    format: str | None = None
    emit: str = "input"
    validate: Any = None  # curate.recipes.validation.ValidateSpec
    push_to_hub: str | None = None  # set by `curate run --push-to-hub`, never by the YAML


def parse_recipe(path: str | Path, *, check_files: bool = True, output: str | Path | None = None
                 ) -> tuple[Recipe | None, list[str]]:
    """(the recipe, []) or (None, every error as `FILE:LINE: message`, in line order).

    `check_files`: also require every input to exist. `output`: overrides the recipe's output path
    (relative to the current directory, not the recipe)."""
    import yaml

    path = Path(path)
    errors = nodes.Errors(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        return None, [f"{path}: cannot read the recipe: {err.strerror or err}"]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        return None, [f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {getattr(err, 'problem', err)}"]
    if not isinstance(root, yaml.MappingNode):
        return None, [f"{path}:1: a recipe is a mapping with keys {', '.join(TOP_KEYS)}"]

    base = path.parent
    top = nodes.mapping(root, errors, "recipe")
    for key, (knode, _) in top.items():
        if key not in TOP_KEYS + OPTIONAL_KEYS:
            errors.add(knode, f"unknown top-level key {key!r}; expected {', '.join(TOP_KEYS + OPTIONAL_KEYS)}")
    for key in TOP_KEYS:
        if key not in top:
            errors.add(root, f"missing top-level key {key!r}")

    inputs: dict[str, Path] = {}
    if "inputs" in top:
        for name, (knode, vnode) in nodes.mapping(top["inputs"][1], errors, "inputs").items():
            value = nodes.value(vnode)
            if not NAME.fullmatch(name):
                errors.add(knode, f"input name {name!r}: letters, digits and _ only")
            if not isinstance(value, str) or not value:
                errors.add(vnode, f"input {name!r}: expected a path, got {value!r}")
                continue
            inputs[name] = base / value
            if check_files and not inputs[name].exists():
                errors.add(vnode, f"input {name!r}: {inputs[name]} does not exist")
        if "pool" not in inputs and "inputs" in top:
            errors.add(top["inputs"][0], "inputs: name the starting pool `pool`")

    steps = _steps(top["steps"][1], inputs, base, errors) if "steps" in top else []
    recipe_out, fmt, emit = None, None, "input"
    if "output" in top:
        recipe_out, fmt, emit = _output(top["output"][1], base, errors)
    if output is not None:
        recipe_out = Path(output)
    if recipe_out is not None:
        _check_output(recipe_out, fmt, emit, top["output"][1] if "output" in top else root, errors)
    validate = None
    if "validate" in top:
        from curate.recipes.validation import parse_validate

        validate = parse_validate(top["validate"][1], path, inputs, recipe_out, errors)
    if errors:
        return None, [message for _, message in sorted(errors, key=lambda e: e[0])]
    return Recipe(path, text, inputs, steps, recipe_out, fmt, emit, validate), []


def _steps(node, inputs: dict[str, Path], base: Path, errors: nodes.Errors) -> list[Step]:
    import yaml

    if not isinstance(node, yaml.SequenceNode) or not node.value:
        errors.add(node, "steps: expected a list of `- op: NAME` items")
        return []
    names = op_names()
    steps = []
    for index, item in enumerate(node.value, start=1):
        params = nodes.mapping(item, errors, f"step {index}")
        if "op" not in params:
            errors.add(item, f"step {index}: missing `op:` (one of {', '.join(names)})")
            continue
        op_node = params.pop("op")[1]
        op = nodes.value(op_node)
        if op not in names:
            errors.add(op_node, f"step {index}: unknown op {op!r}; expected one of {', '.join(names)}")
            continue
        step = Step(index, op, op_node.start_mark.line + 1, {})
        ok = _write_step(step, params, errors) if op == "write" else _step(step, params, inputs, base, errors)
        if ok:
            steps.append(step)
    return steps


def _write_step(step: Step, params: dict, errors: nodes.Errors) -> bool:
    ok = True
    for name, (knode, vnode) in params.items():
        value = nodes.value(vnode)
        if name not in WRITE_KEYS:
            errors.add(knode, f"write (step {step.index}): unknown parameter {name!r}; write takes "
                              f"{', '.join(WRITE_KEYS)}")
            ok = False
        elif not isinstance(value, str):
            errors.add(vnode, f"write (step {step.index}): {name}: expected str, got {value!r}")
            ok = False
        else:
            step.params[name] = value
    if "path" not in params:
        errors.add(step.line, f"write (step {step.index}): missing parameter 'path'")
        ok = False
    return ok


def _input_names(value, many: bool) -> list[str] | None:
    """The input names a key gives (one name, or a list with `many`), or None when malformed."""
    names = [value] if isinstance(value, str) and not many else value
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _step(step: Step, params: dict, inputs: dict[str, Path], base: Path, errors: nodes.Errors) -> bool:
    from curate.registry import OPERATIONS
    from curate.settings import ConfigError, settings_of

    op = OPERATIONS[step.op]
    settings = {s.name: s for s in settings_of(op.config_class) if s.meta.get("recipe", True)}
    refs = {i.name: i.many for i in op.inputs} | ({"also": True} if op.also else {})
    known = [*settings, *refs]
    kwargs: dict[str, Any] = {}
    ok = True
    where = f"{step.op} (step {step.index})"

    def names_of(key: str, vnode, many: bool) -> list[str] | None:
        names = _input_names(nodes.value(vnode), many)
        if names is None:
            errors.add(vnode, f"{where}: {key} expects {'a list of input names' if many else 'an input name'}")
            return None
        for n in names:
            if n not in inputs:
                errors.add(vnode, f"{where}: {key}: {n!r} is not an input (inputs: {', '.join(inputs) or 'none'})")
        return names if all(n in inputs for n in names) else None

    for name, (knode, vnode) in params.items():
        value = nodes.value(vnode)
        if name in refs:
            names = names_of(name, vnode, refs[name])
            if names is None:
                ok = False
            else:
                step.refs[name] = names if refs[name] else names[0]
            continue
        if name not in settings:
            close = difflib.get_close_matches(name, known, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            errors.add(knode, f"{where}: unknown parameter {name!r}{hint}; {step.op} takes {', '.join(known)}")
            ok = False
            continue
        setting = settings[name]
        if setting.meta.get("input_names"):
            names = names_of(name, vnode, many=not isinstance(value, str))  # one name or a list
            if names is None:
                ok = False
                continue
            step.refs[name] = names
            value = [str(inputs[n]) for n in names]
        problem = nodes.type_problem(setting, value)
        if problem:
            errors.add(vnode, f"{where}: {name}: {problem}")
            ok = False
            continue
        if setting.meta.get("path") and isinstance(value, str):
            value = str(base / value)  # files a step reads live beside the recipe, as its inputs do
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    for i in op.inputs:
        if i.required and i.name not in params:
            errors.add(step.line, f"{where}: missing parameter {i.name!r}")
            ok = False
    for name, setting in settings.items():
        if setting.required and name not in params:
            errors.add(step.line, f"{where}: missing parameter {name!r}")
            ok = False
    if not ok:
        return False
    step.params.update(kwargs)
    try:
        step.config = op.config_class(**kwargs)
    except ConfigError as err:
        # Each problem goes to the line of the first key it names that the step has, else the op's line.
        for problem, text in zip(err.problems, err.render({}), strict=True):
            keys = [k for k in problem.keys(settings) if k in params]
            errors.add(params[keys[0]][0] if keys else step.line, f"{where}: {text}")
        return False
    return True


def _output(node, base: Path, errors: nodes.Errors) -> tuple[Path | None, str | None, str]:
    value = nodes.value(node)
    if isinstance(value, str):
        return base / value, None, "input"
    if not isinstance(value, dict):
        errors.add(node, "output: expected a path or {path, format, emit}")
        return None, None, "input"
    fields = nodes.mapping(node, errors, "output")
    for key, (knode, _) in fields.items():
        if key not in ("path", "format", "emit"):
            errors.add(knode, f"output: unknown key {key!r}; expected path, format, emit")
    if not isinstance(value.get("path"), str):
        errors.add(node, "output: needs a `path`")
        return None, None, "input"
    return base / value["path"], value.get("format"), value.get("emit", "input")


def _check_output(out: Path, fmt, emit, node, errors: nodes.Errors) -> None:
    from curate.data.write import EMITS, output_format
    from curate.errors import UsageError

    try:
        output_format(out, fmt)
    except UsageError as err:
        errors.add(node, f"output: {err}")
    if emit not in EMITS:
        errors.add(node, f"output: emit={emit!r}: expected one of {', '.join(EMITS)}")
