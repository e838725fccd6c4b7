"""`curate score`: EK-FAC influence of every pool example on each query set."""

from __future__ import annotations

import sys

import click

from curate.cli.options import decontaminated, output_options
from curate.influence.output import QUERY_ANSWERS, SIGN_AND_SCALE


def _parse_queries(items: tuple[str, ...]) -> dict[str, str]:
    import re

    from curate.errors import UsageError

    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--query {item!r}: expected NAME=PATH")
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise UsageError(f"--query {item!r}: NAME may contain letters, digits and _ only")
        if name in out:
            raise UsageError(f"--query {name!r} given twice")
        out[name] = path
    if not out:
        raise UsageError("give at least one --query NAME=PATH")
    return out


# The card renders SIGN_AND_SCALE as markdown; help is plain text, so without the bold markers.
@click.command(epilog="Sign and scale: " + SIGN_AND_SCALE.replace("\n", " ").replace("**", ""))
@click.argument("pool")
@click.option("-o", "--output", "out", required=True, help="Output: a folder (save_to_disk), .parquet or .jsonl.")
@click.option("--model", required=True, help="HF causal LM: local folder, Hub id, or `smollm2-135m` (packaged). "
              "Normally the model already fine-tuned on the pool.")
@click.option("--query", "queries", multiple=True, required=True, metavar="NAME=PATH",
              help="A query set: any pool shape; the last (assistant) turn is the answer whose likelihood "
                   "counts. Repeatable: one score column per set.")
@click.option("--query-answers", type=click.Choice(QUERY_ANSWERS), default="reference", show_default=True,
              help="What the query answers are: reference solutions, or the model's own verified-correct "
                   "answers (Infra's reading; `curate query` builds them). Recorded in the card.")
@click.option("--split", help="Split of the pool (folder or Hub dataset).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN", help="Column roles of the pool (see inspect).")
@click.option("--fisher", type=click.Choice(["true", "empirical"]), default="true", show_default=True,
              help="Labels for the curvature: sampled from the model (true Fisher) or the data's own.")
@click.option("--damping", default="auto", show_default=True, help="auto = 0.1 x mean corrected eigenvalue per module, or a number.")
@click.option("--fit-on", type=int, default=5000, show_default=True, help="Pool examples (seeded subsample) used to fit the factors.")
@click.option("--fit-max-length", type=int, default=4096, show_default=True, help="Token bound when fitting (Infra: 4096).")
@click.option("--max-length", type=int, default=None, help="Token bound when scoring [default: the model's context].")
@click.option("--modules", default="mlp", show_default=True, help="Tracked Linears: mlp, all, or a regex on module names.")
@click.option("--normalize", type=click.Choice(["none", "query", "train", "both"]), default="none", show_default=True,
              help="Per-token log-likelihoods for the query objective, the train example, both or neither.")
@click.option("--query-splits", type=int, default=None,
              help="Also score K disjoint splits of each query set (K >= 2; 0 = none); their agreement is the "
                   "ranking-stability report [default: 2 when every query set has >= 4 examples, else 0].")
@click.option("--query-rank", type=int, default=None, metavar="R",
              help="Keep each preconditioned query direction as its best rank-R approximation (truncated SVD): "
                   "memory and scoring work per layer and function drop from out x in to R (out + in), at the cost "
                   "of exactness (see benchmarks/RESULTS.md) [default: exact].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-tokens", type=int, default=4096, show_default=True, help="Padded tokens per batch.")
@click.option("--chunk-size", type=int, default=128, show_default=True, help="Examples per resumable chunk.")
@click.option("--dtype", type=click.Choice(["float32", "float64", "bfloat16"]), default="float32", show_default=True)
@click.option("--group-memory-gb", type=float, default=8.0, show_default=True, help="Factor memory per module group.")
@click.option("--pair-cache-gb", type=float, default=2.0, show_default=True,
              help="Memory for replaying the covariance pass in the eigenvalue correction (skips a model pass when the fit data fits).")
@click.option("--pair-spill-gb", type=float, default=None,
              help="Disk under --work-dir for the pairs past --pair-cache-gb, read back instead of rerunning the "
                   "model (deleted after use) [default: 32 on CPU, 0 on GPUs, where recomputing is faster].")
@click.option("--work-dir", help="Stage folder (factors, query directions, score chunks) [default: OUTPUT.work].")
@click.option("--overwrite", is_flag=True, help="Recompute stages made from other inputs instead of refusing.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cpu, cuda:1, ...")
@click.option("--tokens", is_flag=True,
              help="Also write per-token influence of every response token (OUT/tokens.parquet, or "
                   "NAME.tokens.parquet next to a file output), keyed by curate_id; tokens sum to the example's score.")
@click.option("--tokens-top", type=click.IntRange(min=1), default=None, metavar="K",
              help="With --tokens: only the K highest-scoring examples of each query set (what `curate report` "
                   "shows), after the instance scores; far cheaper than every example on a large pool.")
@click.option("--sentences", type=click.Choice(["sentences", "steps", "blocks"]), default=None,
              help="Also write counterfactual segment influence I(z) - I(z without y) for each segment y "
                   "(sentences, blank-line steps, or thought/solution blocks) to OUT/sentences.parquet "
                   "(or NAME.sentences.parquet); costs one scored variant per segment.")
@click.option("--sentence-method", type=click.Choice(["ablation", "linear"]), default="ablation", show_default=True,
              help="ablation: I(z) - I(z without y), as Infra; linear: sum of the segment's exact token "
                   "scores (one pass per query set, ignores the segment's role as context).")
@click.option("--trust-remote-code", is_flag=True)
@click.option("--shard", default=None, metavar="i/N",
              help="Run as job i of N independent jobs (SLURM arrays, spot machines) sharing --work-dir: each "
                   "run does its part of the next step and stops; `curate merge WORK` combines the parts; "
                   "repeat until the jobs report scores, then run without --shard to write the output. "
                   "(Under torchrun / accelerate launch the ranks divide the work without this.)")
@output_options
def score(pool, out, model, queries, query_answers, split, maps, work_dir, overwrite, emit, fmt, push_to_hub,
          decontaminate, **settings) -> None:
    """Score every example of POOL by EK-FAC influence on each query set.

    Writes POOL in its own schema plus curate_influence_<NAME> (one per --query),
    curate_nll, curate_tokens and curate_truncated. A killed run resumes from --work-dir.
    """
    from pathlib import Path

    from curate.influence.config import ScoreConfig
    from curate.models import check_model

    # Every argument is checked before anything heavy is imported or loaded.
    query_paths = _parse_queries(queries)
    config = ScoreConfig(model=model, **settings)
    check_model(model)

    from curate.cli import quiet_third_party_progress
    from curate.data import load_pool, parse_mapping
    from curate.influence.engine import score_pool
    from curate.influence.output import QuerySource, write_scored
    from curate.progress import RichProgress

    quiet_third_party_progress()
    query_pools = {q: load_pool(p, source=q) for q, p in query_paths.items()}  # small: before the pool
    loaded, removed = decontaminated(load_pool(pool, split=split, mapping=parse_mapping(maps)), decontaminate)
    progress = RichProgress()
    result = score_pool(list(loaded.examples()), {q: list(p.examples()) for q, p in query_pools.items()},
                        config, Path(work_dir or f"{out.rstrip('/')}.work"), overwrite=overwrite, progress=progress)
    if result.pending:  # a --shard job did its part
        click.echo(result.pending, err=True)
        return
    if not is_main_process():
        return  # under torchrun every rank holds the result; rank 0 writes it
    sources = {q: QuerySource(p, len(query_pools[q])) for q, p in query_paths.items()}
    written = write_scored(loaded, result, out, queries=sources, query_answers=query_answers,
                           command=["curate", *sys.argv[1:]], manifest=removed, emit=emit, fmt=fmt,
                           push_to_hub=push_to_hub)
    for side in written.side_files:
        click.echo(str(side))
    render_summary(result, dict(zip(loaded.dataset["curate_id"], loaded.dataset["curate_domain"], strict=True)))
    click.echo(str(written.path))


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
