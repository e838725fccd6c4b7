"""`curate tag`: domain, difficulty and behaviour tags from a rater LLM, or offline rules."""

from __future__ import annotations

import sys

import click


def _native_map(items: tuple[str, ...]) -> dict[str, int]:
    from curate.errors import UsageError

    out = {}
    for item in items:
        raw, sep, value = item.rpartition("=")
        if not sep or not raw or not value.strip().isdigit():
            raise UsageError(f"--native-map {item!r}: expected RAW=LEVEL with LEVEL an integer 1-10")
        out[raw] = int(value)
    return out


@click.command()
@click.argument("pool")
@click.option("-o", "--output", "out", required=True, help="Output: a folder (save_to_disk), .parquet or .jsonl.")
@click.option("--tasks", default="difficulty,behaviors,domain", show_default=True,
              help="Comma-separated: difficulty, behaviors, domain.")
@click.option("--offline", is_flag=True, help="No server: native labels, rule estimates and marker phrases.")
@click.option("--base-url", "base_urls", multiple=True, envvar="CURATE_TAG_BASE_URL",
              help="OpenAI-compatible server (…/v1). Repeat to share the load over several.")
@click.option("--model", default="", help="Rater model name on the server (e.g. Qwen/Qwen2.5-32B-Instruct).")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (never written anywhere).")
@click.option("--concurrency", type=int, default=32, show_default=True, help="Requests in flight, over all servers.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Bound on each rater reply.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per request.")
@click.option("--max-retries", type=int, default=6, show_default=True)
@click.option("--max-chars", type=int, default=12000, show_default=True, help="Longest text sent per field.")
@click.option("--long", type=click.Choice(["truncate", "split"]), default="truncate", show_default=True,
              help="Traces over --max-chars: keep head and tail, or rate windows and sum counts.")
@click.option("--prompts", "prompts_dir", help="Folder of templates overriding prompts/<name>.md.")
@click.option("--cache", help="SQLite request cache [default: OUTPUT.tagcache.sqlite].")
@click.option("--native", is_flag=True, help="With a server: keep native difficulty labels, rate only the rest.")
@click.option("--native-map", multiple=True, metavar="RAW=LEVEL", help="Override the native-label table (e.g. EASY=3).")
@click.option("--price-in", type=float, default=0.0, show_default=True, help="$ per 1M input tokens.")
@click.option("--price-out", type=float, default=0.0, show_default=True, help="$ per 1M output tokens.")
@click.option("--dry-run", is_flag=True, help="Print the request count and token estimate, send nothing.")
@click.option("--split", help="Split of the pool (folder or Hub dataset).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN", help="Column roles of the pool (see inspect).")
def tag(pool, out, tasks, base_urls, native_map, cache, dry_run, split, maps, **settings) -> None:
    """Tag every row of POOL with curate_difficulty (1-10), curate_behavior_<name> counts and, for
    rows whose domain is unknown, curate_domain.

    Every request and response is kept in a SQLite cache: a killed run restarted with the same
    command sends no completed request again.
    """
    from curate.data import load_pool, parse_mapping, write_pool
    from curate.progress import RichProgress
    from curate.tagging import TagConfig, estimate, tag_pool

    config = TagConfig(tasks=tasks, base_urls=base_urls, native_map=_native_map(native_map),
                       cache=None if settings["offline"] else (cache or f"{out.rstrip('/')}.tagcache.sqlite"),
                       **settings)
    loaded = load_pool(pool, split=split, mapping=parse_mapping(maps))
    if dry_run:
        if config.offline:
            click.echo(f"offline: {len(loaded)} rows, no requests", err=True)
            return
        est = estimate(loaded, config)
        cost = (est.tokens * config.price_in + est.requests * config.max_tokens * config.price_out) / 1e6
        click.echo(f"{est.requests} requests ({est.cached} already cached), ~{est.tokens} input tokens "
                   f"(chars/4); at most ~${cost:.4f} with every reply at --max-tokens", err=True)
        return
    annotations, report = tag_pool(loaded, config, progress=RichProgress())
    path = write_pool(loaded, out, annotations=annotations, command=["curate", *sys.argv[1:]],
                      extra_card=report.card())
    render_summary(report)
    click.echo(str(path))


def render_summary(report) -> None:
    """Accounting table on stderr."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    if report.mode == "llm":
        table = Table(title=f"tagging with {report.model}")
        for col in ("task", "requests", "retries", "failures", "cache hits", "tokens in", "tokens out", "unparsed"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for name, c in report.tasks.items():
            table.add_row(name, str(c.requests), str(c.retries), str(c.failures), str(c.cache_hits),
                          str(c.tokens_in), str(c.tokens_out), str(report.unparsed.get(name, 0)))
        console.print(table)
        console.print(f"wall {report.wall_s:.1f} s, estimated cost ${report.cost:.4f}")
    console.print(f"difficulty sources: {report.sources}")
