"""`curate run`: run a declarative YAML recipe, or check it in full with --dry-run."""

from __future__ import annotations

import click

from curate.cli.operation import write_params


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check everything (keys, ops, parameters, values, inputs) and run nothing.")
@click.option("--no-files", is_flag=True, help="With --dry-run: skip the check that input files exist "
              "(recipes whose paths are placeholders).")
@click.option("-o", "--output", help="Write here instead of the recipe's output (relative to the current directory).")
def run(recipe, dry_run, no_files, output, emit, fmt, push_to_hub) -> None:
    """Run RECIPE: inputs, then steps (tag, score, flip, prune, strip, write), then the output.

    Every error in the recipe is reported, one `FILE:LINE: message` per line, before any work
    starts. Each step writes its pool under OUTPUT.steps/NN-op/; a rerun skips finished steps whose
    inputs and settings are unchanged. The output's card holds the recipe and each step's summary.
    """
    from curate.errors import UsageError
    from curate.recipes import check_recipe, run_recipe

    if no_files and not dry_run:
        raise UsageError("--no-files only applies to --dry-run (a run needs its input files)")
    errors = check_recipe(recipe, check_files=not no_files, output=output)
    if errors:
        for line in errors:
            click.echo(line, err=True)
        raise UsageError(f"{recipe}: {len(errors)} error(s) in the recipe; nothing was run")
    if dry_run:
        steps = run_recipe(recipe, dry_run=True, output=output, check_files=not no_files).steps
        click.echo(f"{recipe}: ok, {len(steps)} step(s): {' -> '.join(s.op for s in steps)}"
                   + (" (input files not checked)" if no_files else ""), err=True)
        return

    from curate.cli import quiet_third_party_progress
    from curate.progress import RichProgress

    quiet_third_party_progress()
    result = run_recipe(recipe, progress=RichProgress(), output=output, emit=emit if emit != "input" else None,
                        fmt=fmt, push_to_hub=push_to_hub)
    render_run(result, f"curate run {recipe}")
    click.echo(str(result.output))


run.params.extend(write_params())


def render_run(result, title: str) -> None:
    """The steps of a recipe run as a table, then their notes (stderr)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("step", "op", "rows out", "counts", "stage"):
        table.add_column(column)
    for s in result.steps:
        counts = ", ".join(f"{k}: {v}" for k, v in s.counts.items())
        table.add_row(str(s.index), s.op + (" (resumed)" if s.skipped else ""), str(s.rows), counts, str(s.folder))
    console = Console(stderr=True)
    console.print(table)
    for s in result.steps:
        for note in s.notes:
            console.print(f"step {s.index} {s.op}: {note}")
