"""The `curate` command line: a thin click layer over the library.

Commands are imported lazily (`LazyGroup`), so `curate --help` starts fast and never imports torch.
Every `CurateError` raised below is turned into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from curate.registry import OPERATIONS

# Commands besides the operations (`curate.registry`, whose commands `curate.cli.operation` builds):
# name -> ("module:attribute", one-line help). A module of None means: designed, not built yet.
COMMANDS: dict[str, tuple[str | None, str]] = {
    "inspect": ("curate.cli.inspect:inspect", "Show a pool's shape, size, domains, difficulties and lengths."),
    "query": ("curate.cli.query:query", "Build query sets of correctly (and incorrectly) answered benchmark problems."),
    "run": ("curate.cli.run:run", "Run a declarative YAML recipe of operations (--dry-run checks it)."),
    "validate": ("curate.cli.validate:validate", "Fine-tune a base model on each variant (TRL SFT) and evaluate it."),
    "audit": ("curate.cli.audit:audit", "Check the stability of influence scores and their counterfactual effect."),
    "report": ("curate.cli.report:report", "Render influence analyses as an HTML or Markdown report."),
    "merge": ("curate.cli.merge:merge", "Combine the parts of `curate score --shard i/N` jobs."),
    "demo": ("curate.cli.demo:demo", "Run the pipeline offline on the bundled sample pool."),
}


def _not_built(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=f"{help_text}\n\nNot built yet.", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        from curate.errors import NotBuiltError

        raise NotBuiltError(f"`curate {name}` is not built yet; see the project's open issues.")

    return command


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _ in _listing()]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in OPERATIONS:
            from curate.cli.operation import operation_command

            return operation_command(name)
        if name not in COMMANDS:
            return None
        target, help_text = COMMANDS[name]
        if target is None:
            return _not_built(name, help_text)
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table, so listing commands imports none of them.
        with formatter.section("Commands"):
            formatter.write_dl(_listing())


def _listing() -> list[tuple[str, str]]:
    """(name, one-line help) of every command: inspect, the operations, then the rest."""
    rows = [(n, h + ("" if t else " [not built yet]")) for n, (t, h) in COMMANDS.items()]
    return rows[:1] + [(op.name, op.summary) for op in OPERATIONS.values()] + rows[1:]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="curate")
def cli() -> None:
    """curate: measure which reasoning fine-tuning examples help, then rebalance the pool.

    Data goes to stdout; progress and tables go to stderr.
    """


def quiet_third_party_progress() -> None:
    """Silence transformers' and datasets' own progress bars: curate's rich bars report the work."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def _release_freed_memory() -> None:
    """polars' jemalloc hands freed memory back to the system at once (a user's own
    `_RJEM_MALLOC_CONF` wins), set before polars loads. With its default 10 s decay, what one step
    of a command freed is still held when the next allocates through pyarrow, so the peak RSS adds
    the two allocators' high-water marks: `curate prune` on 1.2M rows of 20 KB peaked at 0.76 GB
    instead of 0.50, at the same speed (`benchmarks/bench_scale.py`). pyarrow keeps its mimalloc:
    its jemalloc pool returned memory too but ran that prune 2.5x slower."""
    import os

    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn library errors into one-line messages."""
    from curate.errors import CurateError

    _release_freed_memory()

    try:
        cli.main(args=argv, standalone_mode=False)
    except CurateError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
