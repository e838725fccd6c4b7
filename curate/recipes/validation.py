"""A recipe's `validate:` section: after the steps, `curate validate` of the output against a baseline.

    validate:
      model: Qwen/Qwen2.5-1.5B-Instruct   # base model every variant is fine-tuned from (required)
      eval: [math500, gsm8k, humaneval]   # benchmarks (required): names, files (relative to the recipe), Hub ids
      baseline: pool                      # the input compared against the output (default: pool)
      run_dir: runs/flip                  # default: <output>.validate, beside the output
      limit: 100                          # any other ValidateConfig field (samples, max_new_tokens, ...)
      train: {max_steps: 200, batch_size: 8, lora_r: 16}   # TrainConfig fields

The variants are the baseline input (named after it) and the recipe's output (named after the
recipe file); both train with the same `train` settings. Checked in full with the rest of the
recipe, by the configs' own `__post_init__`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys of `validate:` that are not ValidateConfig fields under the same name.
OWN_KEYS = {"model": "base_model", "eval": "evals", "baseline": None, "run_dir": None, "train": "train"}
DERIVED = ("base_model", "variants", "evals", "train", "overwrite")


@dataclass
class ValidateSpec:
    """The checked section: the config (variants resolved to paths) and the run folder."""

    config: Any  # curate.validate.ValidateConfig
    run_dir: Path


def variant_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".") or "output"


def parse_validate(node, recipe_path: Path, inputs: dict[str, Path], output: Path | None, errors) -> ValidateSpec | None:
    """The `validate:` section as a `ValidateSpec`, or None with every problem added to `errors`."""
    from curate.errors import CurateError
    from curate.evaluation.benchmarks import PACKAGED, unknown_benchmark
    from curate.recipes import yaml_nodes as nodes
    from curate.settings import ConfigError, settings_of
    from curate.training.config import TrainConfig
    from curate.validate import ValidateConfig

    fields = {s.name: s for s in settings_of(ValidateConfig) if s.name not in DERIVED}
    known = sorted([*OWN_KEYS, *fields])
    entries = nodes.mapping(node, errors, "validate")
    kwargs: dict[str, Any] = {}
    ok = True
    for key, (knode, vnode) in entries.items():
        value = nodes.value(vnode)
        if key not in OWN_KEYS and key not in fields:
            errors.add(knode, f"validate: unknown key {key!r}; expected {', '.join(known)}")
            ok = False
        elif key in fields:
            problem = nodes.type_problem(fields[key], value)
            if problem:
                errors.add(vnode, f"validate: {key}: {problem}")
                ok = False
            kwargs[key] = value
    for key in ("model", "eval"):
        if key not in entries:
            errors.add(node, f"validate: missing key {key!r}")
            ok = False
    baseline = nodes.value(entries["baseline"][1]) if "baseline" in entries else "pool"
    if baseline not in inputs:
        errors.add(entries["baseline"][1] if "baseline" in entries else node,
                   f"validate: baseline {baseline!r} is not an input (inputs: {', '.join(inputs) or 'none'})")
        ok = False
    evals = nodes.value(entries["eval"][1]) if "eval" in entries else []
    evals = [evals] if isinstance(evals, str) else evals
    if not isinstance(evals, list) or not all(isinstance(e, str) for e in evals):
        errors.add(entries["eval"][1], "validate: eval: expected a list of benchmark names or paths")
        ok = False
    else:  # files are relative to the recipe, as its inputs are
        evals = [e if e in PACKAGED or not (recipe_path.parent / e).exists() else str(recipe_path.parent / e)
                 for e in evals]
        for problem in filter(None, map(unknown_benchmark, evals)):
            errors.add(entries["eval"][1], f"validate: eval: {problem}")
            ok = False
    train = nodes.value(entries["train"][1]) if "train" in entries else {}
    if not isinstance(train, dict):
        errors.add(entries["train"][1], "validate: train: expected a mapping of TrainConfig fields")
        ok = False
    if not ok or output is None:
        return None
    model = nodes.value(entries["model"][1])
    try:
        train_config = TrainConfig(**train)
        config = ValidateConfig(base_model=str(model), evals=tuple(evals), train=train_config,
                                variants={variant_name(baseline): str(inputs[baseline]),
                                          variant_name(recipe_path.stem): str(output)}, **kwargs)
    except ConfigError as err:
        for problem in err.render({}):
            errors.add(node, f"validate: {problem}")
        return None
    except CurateError as err:
        errors.add(node, f"validate: {err}")
        return None
    except TypeError as err:  # a train key that is not a TrainConfig field
        errors.add(entries["train"][1] if "train" in entries else node, f"validate: train: {err}")
        return None
    run_dir = nodes.value(entries["run_dir"][1]) if "run_dir" in entries else None
    return ValidateSpec(config, recipe_path.parent / run_dir if run_dir else output.with_name(output.name + ".validate"))
