"""`curate report`: render a scored pool's influence analyses as HTML or Markdown."""

from __future__ import annotations

import click


@click.command()
@click.argument("pool")
@click.option("-o", "--output", "out", required=True, help="Report file: .html (self-contained) or .md.")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default=None,
              help="Output format [default: md for a .md output, else html]. md writes PNG figures beside it.")
@click.option("--top", type=int, default=20, show_default=True, help="Top examples listed per query set.")
@click.option("--tokenizer", type=click.Path(exists=True), default=None,
              help="Tokenizer folder (tokenizer.json) that decodes tokens.parquet's ids; must match the scoring "
                   "model [default: the packaged SmolLM2 tokenizer].")
@click.option("--audit", default=None, metavar="PATH",
              help="`curate audit`'s output folder (or its results.json): adds the audit's verdict, arms, "
                   "comparisons and cost.")
def report(pool, out, fmt, top, tokenizer, audit) -> None:
    """Histograms, mean influence (95% CI) by domain, difficulty, question type, source and behaviour,
    ranking stability, and top examples of POOL.

    Token highlights and segment influence appear when tokens.parquet / sentences.parquet sit next
    to POOL (as `curate score --tokens/--sentences` writes them); ranking stability when POOL has
    curate_influence_<q>_split<k> columns (`curate score --query-splits`).
    """
    from curate.report import render_report

    fmt = fmt or ("md" if out.lower().endswith(".md") else "html")
    path = render_report(pool, out, fmt=fmt, top=top, tokenizer=tokenizer, audit=audit)
    click.echo(str(path))
