"""Click options shared by every command that writes a pool."""

from __future__ import annotations

from collections.abc import Callable

import click


def output_options(command: Callable) -> Callable:
    """Add --emit, --format, --push-to-hub and --decontaminate; the command receives `emit`, `fmt`,
    `push_to_hub` and `decontaminate` (apply it with `decontaminated` right after loading)."""
    command = click.option("--decontaminate", multiple=True, metavar="BENCH",
                           help="Benchmark file(s): drop (and list in the manifest) every row whose problem "
                                "overlaps one (normalised exact match or a shared 13-word run).")(command)
    return write_options(command)


def write_options(command: Callable) -> Callable:
    """Add --emit, --format and --push-to-hub (the command receives `emit`, `fmt`, `push_to_hub`):
    for commands whose operation takes its own --decontaminate (flip, prune)."""
    command = click.option("--push-to-hub", metavar="REPO",
                           help="Also upload the output (private) with its card and manifest to this Hub "
                                "dataset repo; the token comes from HF_TOKEN.")(command)
    command = click.option("--format", "fmt", type=click.Choice(["disk", "parquet", "jsonl"]), default=None,
                           help="Output format [default: from the output's suffix; none = save_to_disk folder].")(command)
    command = click.option("--emit", type=click.Choice(["input", "messages"]), default="input", show_default=True,
                           help="input: the input's own schema plus curate_* columns; messages: a TRL-ready "
                                "`messages` column (system prompt folded in) plus curate_* columns.")(command)
    return command


def decontaminated(pool, benchmarks: tuple[str, ...]):
    """(pool without rows overlapping `benchmarks`, their manifest entries); a no-op without any."""
    if not benchmarks:
        return pool, []
    from curate.ops import decontaminate

    result = decontaminate(pool, benchmarks)
    click.echo(", ".join(f"{k}: {v}" for k, v in result.report.counts.items()), err=True)
    return result.pool, result.manifest
