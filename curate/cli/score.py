"""`curate score`: EK-FAC influence of every pool example on each query set."""

from __future__ import annotations

from dataclasses import dataclass

import click

from curate.influence.output import SIGN_AND_SCALE
from curate.settings import setting


@dataclass(frozen=True)
class ScoreCommand:
    """Settings `curate score` has besides `ScoreConfig`'s (recipes keep their stages themselves)."""

    work_dir: str | None = setting(None, "Stage folder (factors, query directions, score chunks) "
                                   "[default: OUTPUT.work].")
    overwrite: bool = setting(False, "Recompute stages made from other inputs instead of refusing.")


def score(call) -> None:
    """Score every example of POOL by EK-FAC influence on each query set.

    Writes POOL in its own schema plus curate_influence_<NAME> (one per --query),
    curate_nll, curate_tokens and curate_truncated. A killed run resumes from --work-dir.
    With --method embedding: curate_embedding_<NAME> instead (the RDS+ similarity baseline).
    """
    from pathlib import Path

    from curate.cli import quiet_third_party_progress
    from curate.cli.operation import render
    from curate.progress import RichProgress
    from curate.results import OpContext

    config = call.config()  # every argument is checked before anything heavy is loaded
    quiet_third_party_progress()
    inputs = call.inputs()  # the query sets are small: before the pool
    loaded, removed = call.load()
    work = Path(call.command.work_dir or f"{call.out.rstrip('/')}.work")
    result = call.op(loaded, inputs, config, OpContext(RichProgress(), work, call.command.overwrite))
    scores = result.report.data.get("score")  # None for --method embedding
    if scores is not None and scores.pending:  # a --shard job did its part
        click.echo(scores.pending, err=True)
        return
    if not is_main_process():
        return  # under torchrun every rank holds the result; rank 0 writes it
    written = call.write(result, removed)
    for side in written.side_files:
        click.echo(str(side))
    if scores is None:
        render(result.report)
    else:
        narrow = loaded.columns(["curate_id", "curate_domain"])
        render_summary(scores, dict(zip(narrow.column("curate_id").to_pylist(), narrow.column("curate_domain").to_pylist(),
                                        strict=True)))
    click.echo(str(written.path))


# The card renders SIGN_AND_SCALE as markdown; help is plain text, so without the bold markers.
score.epilog = "Sign and scale: " + SIGN_AND_SCALE.replace("\n", " ").replace("**", "")


def is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def render_summary(result, domains: dict[str, str] | None = None, top: int = 3) -> None:
    """Per score column: distribution, mean by domain (`domains`: curate_id -> domain) and the
    most helpful examples (stderr)."""
    import polars as pl
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title="influence scores (positive = helps the query set)")
    for col in ("query function", "mean", "std", "min", "max", "> 0"):
        table.add_column(col, justify="left" if col == "query function" else "right")
    t = result.table
    for col in result.columns:
        s = t[col].drop_nulls()
        table.add_row(col.removeprefix("curate_influence_"), f"{s.mean():.3g}", f"{s.std():.3g}",
                      f"{s.min():.3g}", f"{s.max():.3g}", f"{(s > 0).mean():.0%}")
    console.print(table)
    main_columns = [c for c in result.columns if "_split" not in c]
    if domains:
        by_domain = (t.with_columns(pl.col("curate_id").replace_strict(domains, default="unknown").alias("domain"))
                     .group_by("domain").agg(pl.len().alias("n"), *[pl.col(c).mean() for c in main_columns])
                     .sort("domain"))
        dt = Table(title="mean influence by training domain")
        dt.add_column("domain")
        dt.add_column("n", justify="right")
        for c in main_columns:
            dt.add_column(f"on {c.removeprefix('curate_influence_')}", justify="right")
        for row in by_domain.iter_rows(named=True):
            dt.add_row(row["domain"], str(row["n"]), *[f"{row[c]:.3g}" if row[c] is not None else "-" for c in main_columns])
        console.print(dt)
    for col in main_columns:
        best = t.drop_nulls(col).sort(col, descending=True).head(top)["curate_id"].to_list()
        console.print(f"most helpful for {col.removeprefix('curate_influence_')}: {', '.join(best)}")
    truncated = int(t.select(pl.col("curate_truncated").sum()).item())
    if truncated:
        console.print(f"[yellow]{truncated} example(s) were cut at the length bound (curate_truncated)[/yellow]")
    for report in result.stability.values():
        console.print(("[yellow]" if report.unstable else "") + escape(report.render()) + ("[/yellow]" if report.unstable else ""))
    unscored = int(t.select(pl.col(result.columns[0]).is_null().sum()).item())
    if unscored:
        console.print(f"[yellow]{unscored} example(s) had no response token inside the bound: null scores[/yellow]")
