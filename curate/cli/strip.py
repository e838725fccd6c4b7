"""`curate strip`: remove post-answer exploration from reasoning traces (offline rules or a rater LLM)."""

from __future__ import annotations

import sys

import click

from curate.cli.options import decontaminated, output_options


@click.command()
@click.argument("pool")
@click.option("-o", "--output", "out", required=True, help="Output: a folder (save_to_disk), .parquet or .jsonl.")
@click.option("--behavior", default="exploration", show_default=True, help="Behaviour to remove (exploration).")
@click.option("--offline", is_flag=True, help="Rule-based segment remover (the default without --base-url).")
@click.option("--base-url", "base_urls", multiple=True,
              help="OpenAI-compatible rater server (…/v1) that marks the segments to delete. Repeatable.")
@click.option("--model", default="", help="Rater model name on the server.")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (never written anywhere).")
# The choices are curate.ops.strip.UNITS, spelled out so that --help imports no data stack.
@click.option("--unit", type=click.Choice(["steps", "sentences"]), default="steps", show_default=True,
              help="Segments: steps (paragraphs) or sentences.")
@click.option("--marker", "markers", multiple=True, metavar="REGEX",
              help="Exploration opener (case-insensitive regex); repeat to replace the default list.")
@click.option("--stop", "stops", multiple=True, metavar="REGEX",
              help="Segment start that ends a deleted run; repeat to replace the default list.")
@click.option("--concurrency", type=int, default=32, show_default=True, help="Requests in flight, over all servers.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Bound on each rater reply.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per request.")
@click.option("--max-retries", type=int, default=6, show_default=True)
@click.option("--max-chars", type=int, default=60000, show_default=True,
              help="Longest numbered thought sent; longer rows are kept unchanged (refused).")
@click.option("--prompts", "prompts_dir", help="Folder with a strip_exploration.md overriding the bundled prompt.")
@click.option("--cache", help="SQLite request cache [default: OUTPUT.stripcache.sqlite].")
@click.option("--tokenizer", help="Tokenizer (path or name) to count removed tokens [default: chars/4].")
@click.option("--split", help="Split of the pool (folder or Hub dataset).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN", help="Column roles of the pool (see inspect).")
@output_options
def strip(pool, out, markers, stops, base_urls, cache, split, maps, emit, fmt, push_to_hub, decontaminate,
          **settings) -> None:
    """Delete post-answer exploration segments from the thoughts of POOL's traces; write the pool in
    its own schema, stripped rows under new ids `<id>~strip`, with a manifest of every replaced row.
    Every result is checked to be a pure deletion that keeps the final answer, else the row is kept."""
    from curate.cli.prune import render
    from curate.data import load_pool, parse_mapping, write_pool
    from curate.ops import StripConfig
    from curate.ops import strip as run
    from curate.ops.strip import EXPLORATION_MARKERS, STOP_MARKERS
    from curate.progress import RichProgress

    config = StripConfig(markers=markers or EXPLORATION_MARKERS, stops=stops or STOP_MARKERS, base_urls=base_urls,
                         cache=None if not base_urls else (cache or f"{out.rstrip('/')}.stripcache.sqlite"),
                         **settings)
    if config.tokenizer:  # used only after every row is stripped: a typo must fail before that work
        from curate.models import check_model

        check_model(config.tokenizer)
    loaded, removed = decontaminated(load_pool(pool, split=split, mapping=parse_mapping(maps)), decontaminate)
    result = run(loaded, config, progress=RichProgress())
    path = write_pool(result.pool, out, manifest=removed + result.manifest, command=["curate", *sys.argv[1:]],
                      extra_card=result.report.card, emit=emit, fmt=fmt, push_to_hub=push_to_hub)
    render(result.report)
    click.echo(str(path))
