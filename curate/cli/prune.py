"""`curate prune`: keep the top fraction of a pool by influence, rank or a baseline."""

from __future__ import annotations

import sys

import click

from curate.cli.options import write_options


def split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeatable options that also accept comma-separated lists."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


@click.command()
@click.argument("pool")
@click.option("-o", "--output", "out", required=True, help="Output: a folder (save_to_disk), .parquet or .jsonl.")
@click.option("--keep", type=float, help="Fraction of rows to keep, in (0, 1]; exactly round(keep x N) are kept. "
              "No default: give exactly one of --keep and --keep-n.")
@click.option("--keep-n", type=int, help="Number of rows to keep (instead of --keep; no default).")
@click.option("--by", "by", multiple=True, metavar="COL[,COL...]",
              help="Score column(s) [default: every curate_influence_<q> column without _split].")
@click.option("--strategy", type=click.Choice(["score", "rank", "correct-incorrect", "random", "mid-perplexity", "length", "embedding"]),
              default="score", show_default=True,
              help="score: one column or z-scores summed; rank: mean rank percentile; correct-incorrect: "
                   "keep high --correct, drop high --incorrect (split-damped); baselines random, "
                   "mid-perplexity (middle of curate_nll), length (curate_tokens or response chars), embedding "
                   "(cosine of mean-pooled hidden states to the --query sets under --model).")
@click.option("--correct", help="s_C column for correct-incorrect (e.g. curate_influence_correct).")
@click.option("--incorrect", help="s_I column for correct-incorrect.")
@click.option("--per-domain", is_flag=True, help="Keep the fraction within each curate_domain (exact total, largest remainder).")
@click.option("--lowest", is_flag=True, help="Keep the lowest scores instead (e.g. the shortest with --strategy length).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --strategy random.")
@click.option("--decontaminate", multiple=True, metavar="BENCH", help="Benchmark file(s): drop rows whose problem overlaps.")
@click.option("--ngram", type=int, default=13, show_default=True, help="Shared word n-gram that counts as overlap.")
@click.option("--model", help="Model path, Hub id or alias (smollm2-135m) for --strategy embedding.")
@click.option("--query", "queries", multiple=True, metavar="PATH", help="Query set file(s) for --strategy embedding.")
@click.option("--max-length", type=int, default=2048, show_default=True, help="Tokens per example embedded (cut at the end).")
@click.option("--batch-tokens", type=int, default=4096, show_default=True, help="Padded tokens per embedding batch.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cpu, cuda:1, ... (embedding).")
@click.option("--split", help="Split of the pool (folder or Hub dataset).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN", help="Column roles of the pool (see inspect).")
@write_options
def prune(pool, out, by, decontaminate, queries, split, maps, emit, fmt, push_to_hub, **settings) -> None:
    """Keep the best rows of POOL; write them in POOL's schema with a manifest of every dropped row."""
    from curate.data import load_pool, parse_mapping, write_pool
    from curate.ops import PruneConfig
    from curate.ops import prune as run

    config = PruneConfig(by=split_list(by), decontaminate=split_list(decontaminate),
                          queries=split_list(queries), **settings)
    if config.model:  # --strategy embedding: a mistyped model fails before the pool is loaded
        from curate.models import check_model

        check_model(config.model)
    loaded = load_pool(pool, split=split, mapping=parse_mapping(maps))
    result = run(loaded, config)
    path = write_pool(result.pool, out, manifest=result.manifest, command=["curate", *sys.argv[1:]],
                      extra_card=result.report.card, emit=emit, fmt=fmt, push_to_hub=push_to_hub)
    render(result.report)
    click.echo(str(path))


def render(report) -> None:
    """Counts and notes to stderr."""
    click.echo(", ".join(f"{k}: {v}" for k, v in report.counts.items()), err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
