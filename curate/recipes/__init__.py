"""Declarative recipes: YAML over a closed set of operations (tag, score, flip, prune, strip when
built, write), checked in full before any work starts.

    from curate.recipes import check_recipe, run_recipe
    errors = check_recipe("recipes/sample.yaml")       # ["recipes/x.yaml:12: ...", ...]; [] when fine
    result = run_recipe("recipes/sample.yaml")          # RunResult(output, steps)

See `curate.recipes.check` for the format and `curate.recipes.run` for stages and resuming.
"""

from __future__ import annotations

from pathlib import Path

from curate.errors import UsageError
from curate.progress import Progress, Silent
from curate.recipes.check import Recipe, Step, op_names, parse_recipe
from curate.recipes.run import RunResult, StepSummary, net_manifest


class RecipeError(UsageError):
    """A recipe failed its checks; `errors` holds every `FILE:LINE: message`."""

    def __init__(self, path: str | Path, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{path}: {len(errors)} error(s); nothing was run\n" + "\n".join(errors))


def check_recipe(path: str | Path, *, check_files: bool = True, output: str | Path | None = None) -> list[str]:
    """Every error in the recipe at `path` as `FILE:LINE: message` lines, in line order ([] = fine).
    `check_files=False` skips the existence of input files (recipes with placeholder paths)."""
    return parse_recipe(path, check_files=check_files, output=output)[1]


def run_recipe(path: str | Path, dry_run: bool = False, progress: Progress | None = None, *,
               output: str | Path | None = None, check_files: bool = True, emit: str | None = None,
               fmt: str | None = None, push_to_hub: str | None = None) -> RunResult:
    """Check the recipe (raising `RecipeError` with every error) and, unless `dry_run`, run it.
    `output`, `emit` and `fmt` override the recipe's output path, emit and format; `push_to_hub`
    also uploads the output. Returns the output path and per-step summaries."""
    from curate.recipes.run import _Runner

    recipe, errors = parse_recipe(path, check_files=check_files or not dry_run, output=output)
    if errors:
        raise RecipeError(path, errors)
    if dry_run:
        return RunResult(None, [StepSummary(s.index, s.op, None, 0) for s in recipe.steps])
    recipe.emit = emit or recipe.emit
    recipe.format = fmt or recipe.format
    recipe.push_to_hub = push_to_hub
    return _Runner(recipe, progress or Silent()).run()


__all__ = ["Recipe", "RecipeError", "RunResult", "Step", "StepSummary", "check_recipe", "net_manifest", "op_names",
           "parse_recipe", "run_recipe"]
