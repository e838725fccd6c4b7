"""`curate prune`'s command: the operation, plus the `--strategy embedding` shortcut that scores
embeddings first (`curate score --method embedding`), so one command does what two would."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from curate.settings import setting


@dataclass(frozen=True)
class PruneCommand:
    """The embedding shortcut's settings; unset ones take `curate score`'s defaults."""

    model: str | None = setting(None, "With --strategy embedding: score embeddings under this model first "
                                "(path, Hub id or alias, e.g. smollm2-135m).", model=True)
    queries: tuple[str, ...] = setting((), "With --strategy embedding and --model: a query set file; one "
                                       "curate_embedding_<file stem> column each.", flag="--query", metavar="PATH")
    max_length: int | None = setting(None, "With the shortcut: tokens per example embedded [default: as curate "
                                     "score].")
    batch_tokens: int | None = setting(None, "With the shortcut: padded tokens per batch [default: as curate "
                                       "score].")
    device: str | None = setting(None, "With the shortcut: auto, cpu, cuda:1, ... [default: as curate score].")


def prune(call) -> None:
    """Keep the best rows of POOL; write them in POOL's schema with a manifest of every dropped row.

    \b
    --strategy embedding ranks by curate_embedding_<q> columns; with --model M
    and --query PATH it scores them first (as `curate score --method embedding`
    would) and writes them with the output.
    """
    from curate.cli.operation import default_flow, render, split_list
    from curate.errors import UsageError

    shortcut: PruneCommand = call.command
    strategy = call.values.get("strategy") or "score"
    queries = split_list(shortcut.queries)
    if not (shortcut.model or queries):
        return default_flow(call)
    if strategy != "embedding":
        raise UsageError(f"--model/--query score embeddings for --strategy embedding, not {strategy}")
    if not (shortcut.model and queries):
        raise UsageError("--strategy embedding scores embeddings first only with both --model and --query")
    import click

    from curate.data import load_pool
    from curate.influence.config import ScoreConfig
    from curate.progress import RichProgress
    from curate.registry import OPERATIONS
    from curate.results import OpContext

    config = call.config()
    given = {k: getattr(shortcut, k) for k in ("max_length", "batch_tokens", "device") if getattr(shortcut, k)}
    score_config = ScoreConfig(model=shortcut.model, method="embedding", **given)
    names = _names(queries)
    sets = {name: load_pool(path) for name, path in zip(names, queries, strict=True)}
    pool, removed = call.load()
    progress = RichProgress()
    scored = OPERATIONS["score"](pool, {"queries": sets}, score_config, OpContext(progress))
    result = call.op(scored.annotated(), {}, config, OpContext(progress))
    result.report.card.update(scored.report.card)
    written = call.write(result, removed)
    render(result.report)
    click.echo(str(written.path))


def _names(paths: tuple[str, ...]) -> list[str]:
    """Column names for query files: their stems as identifiers, numbered when two collide."""
    names: list[str] = []
    for path in paths:
        base = re.sub(r"\W", "_", Path(path).name.split(".")[0]) or "query"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names
