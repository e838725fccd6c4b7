"""`curate strip`'s command: the operation (offline rules, or the spans a pool already has), plus
the rater shortcut: with `--base-url`, tag `exploration_spans` first (`curate tag --tasks
exploration_spans`), then strip, in one command."""

from __future__ import annotations

from dataclasses import dataclass

from curate.settings import setting, settings_of

# StripCommand field -> the TagConfig field it sets (the rest keep their names).
_TAG_FIELDS = {"max_chars": "spans_max_chars"}


@dataclass(frozen=True)
class StripCommand:
    """The rater shortcut's settings; unset ones take `curate tag`'s defaults."""

    base_urls: tuple[str, ...] = setting((), "OpenAI-compatible rater server (.../v1) that marks the segments to "
                                         "delete (tags exploration_spans first). Repeatable.", flag="--base-url",
                                         metavar="URL")
    model: str | None = setting(None, "Rater model name on the server.")
    api_key_env: str | None = setting(None, "Environment variable holding the API key [default: as curate tag].")
    concurrency: int | None = setting(None, "Requests in flight [default: as curate tag].")
    temperature: float | None = setting(None, "Rater sampling temperature [default: as curate tag].")
    max_tokens: int | None = setting(None, "Bound on each rater reply [default: as curate tag].")
    timeout: float | None = setting(None, "Seconds per request [default: as curate tag].")
    max_retries: int | None = setting(None, "Retries per request [default: as curate tag].")
    max_chars: int | None = setting(None, "Longest numbered thought sent; longer rows are kept unchanged "
                                    "[default: curate tag's --spans-max-chars].")
    prompts_dir: str | None = setting(None, "Folder with a strip_exploration.md overriding the bundled prompt.",
                                      flag="--prompts")
    cache: str | None = setting(None, "SQLite request cache [default: OUTPUT.stripcache.sqlite].")


def strip(call) -> None:
    """Delete post-answer exploration segments from the thoughts of POOL's traces; write the pool in
    its own schema, stripped rows under new ids `<id>~strip`, with a manifest of every replaced row.
    Every result is checked to be a pure deletion that keeps the final answer, else the row is kept.

    \b
    Which segments: POOL's curate_exploration_spans column when it has one
    (`curate tag --tasks exploration_spans`), else the offline rule
    (--marker/--stop); with --base-url and --model a rater marks them first.
    """
    import click

    from curate.cli.operation import build, default_flow, render
    from curate.errors import UsageError

    rater: StripCommand = call.command
    flags = {s.name: s.flag for s in settings_of(StripCommand)}
    given = {k: getattr(rater, k) for k in flags if getattr(rater, k) not in (None, ())}
    if not rater.base_urls:
        if given:
            raise UsageError(f"{', '.join(flags[k] for k in given)}: rater settings apply with --base-url")
        return default_flow(call)
    if not rater.model:
        raise UsageError("give --model (the rater's name on the server) with --base-url")
    from curate.progress import RichProgress
    from curate.registry import OPERATIONS
    from curate.results import OpContext
    from curate.tagging.config import TagConfig
    from curate.tagging.exploration import SPANS_COLUMN

    config = call.config()
    values = {_TAG_FIELDS.get(k, k): v for k, v in given.items()}
    values.setdefault("cache", f"{call.out.rstrip('/')}.stripcache.sqlite")
    tag_config = build(TagConfig, {**values, "tasks": ("exploration_spans",), "segments": config.unit},
                       {_TAG_FIELDS.get(k, k): flag for k, flag in flags.items()})
    pool, removed = call.load()
    progress = RichProgress()
    tagged = OPERATIONS["tag"](pool, {}, tag_config, OpContext(progress))
    result = call.op(tagged.annotated([SPANS_COLUMN, "curate_tag_errors"]), {}, config, OpContext(progress))
    result.report.card.update(tagged.report.card)
    written = call.write(result, removed)
    render(result.report)
    click.echo(str(written.path))

