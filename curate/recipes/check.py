"""Parse and check a recipe: every error, with its line, before any work starts.

A recipe is YAML with three top-level keys over a closed set of operations:

    inputs:  {name: path}          # `pool` is the starting pool; others are donors, query sets, benchmarks
    steps:   [{op: NAME, ...}]     # ops: see OPS; each reads the current pool and produces the next
    output:  path | {path, format, emit}
    validate: {...}                # optional: fine-tune and evaluate output vs. baseline (curate.recipes.validation)

Paths are relative to the recipe file. A step's parameters are the fields of its op's config
dataclass (`TagConfig`, `ScoreConfig`, `FlipConfig`, `PruneConfig`, `StripConfig`), checked by
name, by type and by the config's own `__post_init__`, plus a few that name inputs (`donor`,
`queries`, `also`; `decontaminate` lists input names instead of paths). Nothing names Python code.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.recipes import yaml_nodes as nodes

TOP_KEYS = ("inputs", "steps", "output")
OPTIONAL_KEYS = ("validate",)  # see curate.recipes.validation
NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class OpSpec:
    """An operation: its config class (None for `write`) and the parameters that are not config
    fields: {name: (kind, required, help)}; kind is "input", "inputs" or a python type."""

    config: type | None
    extra: dict[str, tuple[Any, bool, str]] = field(default_factory=dict)
    input_lists: tuple[str, ...] = ()  # config fields given as input names, resolved to paths


def op_table() -> dict[str, OpSpec]:
    """The closed set of operations (`strip` when `curate.ops` has it)."""
    import curate.ops as ops
    from curate.influence.config import ScoreConfig
    from curate.tagging.config import TagConfig

    table = {
        "tag": OpSpec(TagConfig, {"also": ("inputs", False, "other inputs tagged with the same settings "
                                                          "(a flip donor, so both sides share one rater)")}),
        "score": OpSpec(ScoreConfig, {"queries": ("inputs", True, "query sets (input names) to score against")}),
        "flip": OpSpec(ops.FlipConfig, {"donor": ("input", True, "the donor pool (an input name)")},
                       ("decontaminate",)),
        "prune": OpSpec(ops.PruneConfig, input_lists=("decontaminate",)),
        "write": OpSpec(None, {"path": (str, True, "where to write the current pool"),
                               "format": (str, False, "disk, parquet or jsonl [default: from the suffix]"),
                               "emit": (str, False, "input or messages")}),
    }
    if hasattr(ops, "strip") and hasattr(ops, "StripConfig"):
        table["strip"] = OpSpec(ops.StripConfig)
    table["reweight"] = OpSpec(ops.ReweightConfig)
    return table


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
    table = op_table()
    steps = []
    for index, item in enumerate(node.value, start=1):
        params = nodes.mapping(item, errors, f"step {index}")
        if "op" not in params:
            errors.add(item, f"step {index}: missing `op:` (one of {', '.join(table)})")
            continue
        op_node = params.pop("op")[1]
        op = nodes.value(op_node)
        if op not in table:
            errors.add(op_node, f"step {index}: unknown op {op!r}; expected one of {', '.join(table)}")
            continue
        step = Step(index, op, op_node.start_mark.line + 1, {})
        if _step(step, table[op], params, inputs, base, errors):
            steps.append(step)
    return steps


def _step(step: Step, spec: OpSpec, params: dict, inputs: dict[str, Path], base: Path, errors: nodes.Errors) -> bool:
    fields = {f.name: f for f in dataclasses.fields(spec.config)} if spec.config else {}
    known = [*fields, *spec.extra]
    kwargs: dict[str, Any] = {}
    ok = True
    where = f"{step.op} (step {step.index})"
    for name, (knode, vnode) in params.items():
        value = nodes.value(vnode)
        if name in spec.extra:
            kind, _, _ = spec.extra[name]
            if kind in ("input", "inputs"):
                names = [value] if kind == "input" else value
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    errors.add(vnode, f"{where}: {name} expects {'an input name' if kind == 'input' else 'a list of input names'}")
                    ok = False
                    continue
                for n in names:
                    if n not in inputs:
                        errors.add(vnode, f"{where}: {name}: {n!r} is not an input (inputs: {', '.join(inputs) or 'none'})")
                        ok = False
                step.refs[name] = value
            elif not isinstance(value, kind):
                errors.add(vnode, f"{where}: {name}: expected {kind.__name__}, got {value!r}")
                ok = False
            else:
                step.params[name] = value
            continue
        if name not in fields:
            close = difflib.get_close_matches(name, known, n=2)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            errors.add(knode, f"{where}: unknown parameter {name!r}{hint}; {step.op} takes {', '.join(known)}")
            ok = False
            continue
        if name in spec.input_lists:
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                errors.add(vnode, f"{where}: {name} expects a list of input names")
                ok = False
                continue
            missing = [n for n in names if n not in inputs]
            for n in missing:
                errors.add(vnode, f"{where}: {name}: {n!r} is not an input (inputs: {', '.join(inputs) or 'none'})")
            ok = ok and not missing
            value = [str(inputs[n]) for n in names if n in inputs]
            step.refs[name] = names
        problem = nodes.type_problem(fields[name].type, value)
        if problem:
            errors.add(vnode, f"{where}: {name}: {problem}")
            ok = False
            continue
        if name in ("cache", "prompts_dir") and isinstance(value, str):
            value = str(base / value)  # tag's files live beside the recipe too
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    for name, (_, required, _) in spec.extra.items():
        if required and name not in params:
            errors.add(step.line, f"{where}: missing parameter {name!r}")
            ok = False
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in params:
            errors.add(step.line, f"{where}: missing parameter {name!r}")
            ok = False
    if not ok:
        return False
    step.params.update(kwargs)
    if spec.config is not None:
        from curate.errors import CurateError

        try:
            step.config = spec.config(**kwargs)
        except (CurateError, TypeError, ValueError) as err:
            # The config joins its problems with "; "; each goes to the line of the parameter it
            # names first ("keep=1.5: ..."), else to the op's line.
            for problem in nodes.problems(str(err)):
                named = re.match(r"(\w+)\b", problem)
                at = params[named.group(1)][0] if named and named.group(1) in params else step.line
                errors.add(at, f"{where}: {problem}")
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
