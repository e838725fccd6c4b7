"""`curate tag`: domain, difficulty and behaviour tags from a rater LLM, or offline rules."""

from __future__ import annotations

from dataclasses import dataclass

import click

from curate.settings import setting


@dataclass(frozen=True)
class TagCommand:
    """Settings `curate tag` has besides `TagConfig`'s (batch files, dry runs, failure tolerance)."""

    dry_run: bool = setting(False, "Print the request count and token estimate, send nothing.")
    export_batch: str | None = setting(None, "Write the requests not yet cached as OpenAI Batch JSONL and stop "
                                       "(sends nothing).", metavar="REQUESTS.jsonl")
    import_batch: tuple[str, ...] = setting((), "Store a Batch results file's answers in the cache, then tag "
                                            "(repeatable).", metavar="RESULTS.jsonl")
    allow_failures: float = setting(0.0, "Fraction of rows that may lack a value because requests failed before "
                                    "the run exits non-zero (exit code 3; the output is written either way and a "
                                    "rerun retries them).", low=0, high=1, metavar="F")


def tag(call) -> None:
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
    from curate.errors import UsageError
    from curate.progress import RichProgress
    from curate.results import OpContext
    from curate.tagging import estimate, export_batch, import_batch

    run: TagCommand = call.command
    offline = call.values.get("offline", False)
    if not call.out and not run.export_batch:
        raise UsageError("give -o/--output (or --export-batch to only write Batch requests)")
    if (run.export_batch or run.import_batch) and (offline or run.dry_run):
        raise UsageError("--export-batch/--import-batch need a rater --model, not --offline or --dry-run")
    cache_only = bool(run.export_batch) or (bool(run.import_batch) and not call.values.get("base_urls"))
    config = call.config(cache_only=cache_only, **({"cache": None} if offline else {}))
    loaded, removed = call.load()
    batch_card = []
    for path in run.import_batch:
        done = import_batch(loaded, config, path)
        click.echo(f"{path}: {done.lines} results, {done.stored} stored, {done.already} already cached, "
                   f"{len(done.failed)} failed", err=True)
        for line in done.failed[:20]:
            click.echo(f"  failed {line}", err=True)
        batch_card.append(f"- `{path}`: {done.lines} results, {done.stored} stored, {done.already} already "
                          f"cached, {len(done.failed)} failed (left for a later run)")
    if run.export_batch:
        done = export_batch(loaded, config, run.export_batch)
        click.echo(f"{done.requests} requests written ({done.cached} already cached)"
                   + (f"; {done.deferred} rows wait for their domain answer: import these results, then export "
                      "again" if done.deferred else ""), err=True)
        click.echo(done.path)
        return
    if run.dry_run:
        if config.offline:
            click.echo(f"offline: {len(loaded)} rows, no requests", err=True)
            return
        est = estimate(loaded, config)
        cost = (est.tokens * config.price_in + est.requests * config.max_tokens * config.price_out) / 1e6
        click.echo(f"{est.requests} requests ({est.cached} already cached), ~{est.tokens} input tokens "
                   f"(counted by {est.how}); at most ~${cost:.4f} with every reply at --max-tokens", err=True)
        return
    result = call.op(loaded, {}, config, OpContext(progress=RichProgress()))
    if batch_card:
        result.report.card["Batch import"] = "\n".join(batch_card)
    written = call.write(result, removed)
    render_summary(result.report.data["tag"])
    calibration = result.report.data.get("calibration")
    if calibration is not None:
        click.echo("\n".join(["calibration:", *calibration.lines()]), err=True)
        if not config.then_all:
            click.echo(f"stopped after calibration: the output holds the {calibration.rows} sampled rows; "
                       "add --then-all to tag every row", err=True)
    click.echo(str(written.path))
    _fail_on_failed_requests(result.annotations, len(result.pool), run.allow_failures)


def _fail_on_failed_requests(annotations, total: int, allowed: float) -> None:
    """One stderr line per cause, then `RequestFailures` when more than `allowed` of the `total`
    rows tagged lack a value because their requests failed."""
    from curate.errors import RequestFailures
    from curate.tagging.tagger import failed_requests

    rows, causes = failed_requests(annotations)
    if not rows:
        return
    for cause, count in causes.items():
        click.echo(f"failed requests: {count} x {cause}", err=True)
    share = rows / total
    if share > allowed:
        raise RequestFailures(f"{rows} of {total} rows lack a value because requests failed "
                              f"({', '.join(causes)}); the output is written and a rerun retries them; "
                              f"--allow-failures {share:.2g} accepts this run")


def render_summary(report) -> None:
    """Accounting table on stderr (full width when stderr is a file, so names are never cut)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    if report.mode == "llm":
        table = Table(title=f"tagging with {report.model}")
        for col in ("task", "requests", "retries", "failed", "unparsed", "cache hits", "tokens in", "tokens out"):
            table.add_column(col, justify="left" if col == "task" else "right")
        for name, c in report.tasks.items():
            table.add_row(name, str(c.requests), str(c.retries), str(report.failed.get(name, 0)),
                          str(report.unparsed.get(name, 0)), str(c.cache_hits), str(c.tokens_in), str(c.tokens_out))
        console.print(table)
        causes = {}
        for c in report.tasks.values():
            for cause, n in c.errors.items():
                causes[cause] = causes.get(cause, 0) + n
        if causes:
            console.print("failed attempts by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(causes.items())))
        if report.unconstrained:
            console.print(f"structured answers: the server refused {report.structured}; from then on requests went "
                          f"without it and replies were parsed as text ({report.unconstrained})")
        if report.fitted or report.shrunk:
            console.print(f"{report.fitted} request(s) clipped further to fit the context; {report.shrunk} resent "
                          "shrunk after a context-length error")
        across = f" ({report.wall_total_s:.1f} s over {report.runs} runs of this cache)" if report.runs > 1 else ""
        console.print(f"wall {report.wall_s:.1f} s{across}, estimated cost ${report.cost:.4f}")
    if report.shard:
        console.print(f"shard {report.shard}: rows {report.shard_rows[0]}-"
                      f"{report.shard_rows[1] - 1} of {report.shard_rows[2]}")
    if report.not_cached:
        console.print(f"{report.not_cached} request(s) not answered yet (no server, cache only): left null")
    console.print(f"difficulty sources: {report.sources}")
