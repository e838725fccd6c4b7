"""`curate tag`: domain, difficulty and behaviour tags from a rater LLM, or offline rules."""

from __future__ import annotations

import sys

import click

from curate.cli.options import decontaminated, output_options


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
@click.option("-o", "--output", "out", help="Output: a folder (save_to_disk), .parquet or .jsonl (required "
              "unless --export-batch).")
@click.option("--tasks", default="difficulty,behaviors,domain", show_default=True,
              help="Comma-separated: difficulty, behaviors, domain.")
@click.option("--offline", is_flag=True, help="No server: native labels, rule estimates and marker phrases.")
@click.option("--base-url", "base_urls", multiple=True, envvar="CURATE_TAG_BASE_URL",
              help="OpenAI-compatible server (…/v1). Repeat (or comma-separate) to share the load over several.")
@click.option("--model", default="", help="Rater model name on the server (e.g. Qwen/Qwen2.5-32B-Instruct).")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (never written anywhere).")
@click.option("--concurrency", type=int, default=32, show_default=True, help="Requests in flight, over all servers.")
@click.option("--server-concurrency", type=int, help="Requests in flight on any one server [default: no bound "
              "beyond --concurrency].")
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
@click.option("--shard", help="i/N: tag only shard i (0-based) of N contiguous row ranges; output holds those rows.")
@click.option("--export-batch", "export_path", type=click.Path(dir_okay=False), metavar="REQUESTS.jsonl",
              help="Write the requests not yet cached as OpenAI Batch JSONL and stop (sends nothing).")
@click.option("--import-batch", "import_paths", type=click.Path(dir_okay=False), multiple=True, metavar="RESULTS.jsonl",
              help="Store a Batch results file's answers in the cache, then tag (repeatable).")
@click.option("--allow-failures", type=click.FloatRange(0, 1), default=0.0, show_default=True, metavar="F",
              help="Fraction of rows that may lack a value because requests failed before the run exits "
                   "non-zero (exit code 3; the output is written either way and a rerun retries them).")
@click.option("--split", help="Split of the pool (folder or Hub dataset).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN", help="Column roles of the pool (see inspect).")
@output_options
def tag(pool, out, tasks, base_urls, native_map, cache, dry_run, split, maps, export_path, import_paths,
        emit, fmt, push_to_hub, decontaminate, allow_failures, **settings) -> None:
    """Tag every row of POOL with curate_difficulty (1-10), curate_behavior_<name> counts and, for
    rows whose domain is unknown, curate_domain.

    Every request and response is kept in a SQLite cache: a killed run restarted with the same
    command sends no completed request again.

    \b
    At scale:
      --shard i/N    N jobs (a SLURM array, spot machines) over one cache file
                     (shared disk; SQLite WAL), each writing its rows; then the
                     same command without --shard assembles the whole output
                     from the cache, sending nothing.
      --base-url A --base-url B    spread requests over several servers.

    \b
    As a batch (OpenAI Batch API or vLLM's run-batch; both read and write the
    same JSONL):
      curate tag POOL -o OUT --model M --export-batch requests.jsonl
      vllm run-batch -i requests.jsonl -o results.jsonl --model M
        (or upload requests.jsonl to the OpenAI Batch API with endpoint
         /v1/chat/completions and download its output file)
      curate tag POOL -o OUT --model M --import-batch results.jsonl
    The import refuses a results file made for another pool, prompt, model or
    setting; failed lines are reported and exported again next time. Rows of
    unknown domain get their difficulty request only once their domain answer
    is imported: run --import-batch with --export-batch for a second round.
    """
    from curate.data import load_pool, parse_mapping, write_pool
    from curate.errors import UsageError
    from curate.progress import RichProgress
    from curate.tagging import TagConfig, estimate, export_batch, import_batch, shard_pool, tag_pool

    if not out and not export_path:
        raise UsageError("give -o/--output (or --export-batch to only write Batch requests)")
    if (export_path or import_paths) and (settings["offline"] or dry_run):
        raise UsageError("--export-batch/--import-batch need a rater --model, not --offline or --dry-run")
    if not cache and not settings["offline"] and out:
        cache = f"{out.rstrip('/')}.tagcache.sqlite"
    cache_only = bool(export_path) or (bool(import_paths) and not base_urls)
    config = TagConfig(tasks=tasks, base_urls=base_urls, native_map=_native_map(native_map),
                       cache=None if settings["offline"] else cache, cache_only=cache_only, **settings)
    loaded, removed = decontaminated(load_pool(pool, split=split, mapping=parse_mapping(maps)), decontaminate)
    batch_card = []
    for path in import_paths:
        done = import_batch(loaded, config, path)
        click.echo(f"{path}: {done.lines} results, {done.stored} stored, {done.already} already cached, "
                   f"{len(done.failed)} failed", err=True)
        for line in done.failed[:20]:
            click.echo(f"  failed {line}", err=True)
        batch_card.append(f"- `{path}`: {done.lines} results, {done.stored} stored, {done.already} already "
                          f"cached, {len(done.failed)} failed (left for a later run)")
    if export_path:
        done = export_batch(loaded, config, export_path)
        click.echo(f"{done.requests} requests written ({done.cached} already cached)"
                   + (f"; {done.deferred} rows wait for their domain answer: import these results, then export "
                      "again" if done.deferred else ""), err=True)
        click.echo(done.path)
        return
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
    card = report.card()
    if batch_card:
        card["Batch import"] = "\n".join(batch_card)
    path = write_pool(shard_pool(loaded, config), out, annotations=annotations, command=["curate", *sys.argv[1:]],
                      extra_card=card, manifest=removed, emit=emit, fmt=fmt, push_to_hub=push_to_hub)
    render_summary(report)
    click.echo(str(path))
    _fail_on_failed_requests(annotations, allow_failures)


def _fail_on_failed_requests(annotations, allowed: float) -> None:
    """One stderr line per cause, then `RequestFailures` when more than `allowed` of the rows lack
    a value because their requests failed."""
    from curate.errors import RequestFailures
    from curate.tagging.tagger import failed_requests

    rows, causes = failed_requests(annotations)
    if not rows:
        return
    for cause, count in causes.items():
        click.echo(f"failed requests: {count} x {cause}", err=True)
    share = rows / len(annotations)
    if share > allowed:
        raise RequestFailures(f"{rows} of {len(annotations)} rows lack a value because requests failed "
                              f"({', '.join(causes)}); the output is written and a rerun retries them; "
                              f"--allow-failures {share:.2g} accepts this run")


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
    if report.shard:
        console.print(f"shard {report.shard}: rows {report.shard_rows[0]}-"
                      f"{report.shard_rows[1] - 1} of {report.shard_rows[2]}")
    if report.not_cached:
        console.print(f"{report.not_cached} request(s) not answered yet (no server, cache only): left null")
    console.print(f"difficulty sources: {report.sources}")
