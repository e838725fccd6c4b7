"""Commands made from the registry (`curate.registry`): one per operation, with the same flow.

A command's options are its operation's settings (`curate.settings`: flag, type, default,
choices and help come from the config's field metadata, never written here), its inputs
(`--donor PATH`, `--query NAME=PATH`), the settings only the command line has (the entry's
`command` class, e.g. `--dry-run`), and the options every dataset-writing command shares:
`-o/--output`, `--split`, `--map`, `--emit`, `--format`, `--push-to-hub` and `--decontaminate`
(for operations whose config has none of its own).

The default flow: check every argument (configs, model names) before loading anything, load the
inputs and the pool, run the operation, write the result (`curate.ops.write_result`), print its
counts and notes to stderr and the output's path to stdout. An entry's `cli` function replaces the
flow for commands that do more (tag's batch files, score's shards).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from curate.registry import OPERATIONS, Operation
from curate.settings import ConfigError, Setting, settings_of

IO_OPTIONS = ("out", "split", "maps", "emit", "fmt", "push_to_hub", "decontaminate")
_NAME = re.compile(r"[A-Za-z0-9_]+")


def split_list(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeatable options that also accept comma-separated lists."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def setting_option(s: Setting, names: dict[str, str]) -> click.Option:
    """The click option of one setting (`names`: field -> flag, for the fields its help names)."""
    kw: dict[str, Any] = {"help": s.help(names), "metavar": s.meta.get("metavar"), "envvar": s.meta.get("envvar")}
    if s.kind == "flag":
        kw.update(is_flag=True, default=False)
    elif s.kind in ("list", "mapping"):
        kw["multiple"] = True
        if s.meta.get("choices"):
            kw["help"] += f" Choices: {', '.join(s.meta['choices'])}."
        if s.meta.get("shown") or s.default:
            kw["help"] += f" [default: {s.meta.get('shown') or ','.join(s.default)}]"
    else:
        kw.update(type=click.Choice(s.meta["choices"]) if s.meta.get("choices") else s.scalar,
                  required=s.required)
        if not s.required:
            kw.update(default=s.default, show_default=s.default is not None)
    return click.Option([s.flag, s.name], **kw)


def op_settings(op: Operation) -> list[Setting]:
    """The settings the command of `op` takes: its config's, then its command's own."""
    own = settings_of(op.command_class) if op.command_class else []
    return [s for s in settings_of(op.config_class) if s.meta.get("cli", True)] + own


def command_params(op: Operation) -> list[click.Parameter]:
    """Every parameter of `op`'s command, in help order."""
    params: list[click.Parameter] = [
        click.Argument(["pool"]),
        click.Option(["-o", "--output", "out"], required=op.output_required,
                     help="Output: a folder (save_to_disk), .parquet or .jsonl."),
    ]
    for inp in op.inputs:
        if inp.many:
            params.append(click.Option([inp.flag, inp.name], multiple=True, required=inp.required,
                                       metavar="NAME=PATH", help=inp.help + " Repeatable."))
        else:
            params.append(click.Option([inp.flag, inp.name], required=inp.required, metavar="PATH", help=inp.help))
    names = flags(op)
    params += [setting_option(s, names) for s in op_settings(op)]
    params += [
        click.Option(["--split"], help="Split of the pool (folder or Hub dataset)."),
        click.Option(["--map", "maps"], multiple=True, metavar="ROLE=COLUMN",
                     help="Column roles of the pool (see inspect)."),
        *write_params(),
    ]
    if not op.own_decontamination():
        params.append(click.Option(["--decontaminate"], multiple=True, metavar="BENCH",
                                   help="Benchmark file(s): drop (and list in the manifest) every row whose problem "
                                        "overlaps one (normalised exact match or a shared 13-word run)."))
    return params


def write_params() -> list[click.Option]:
    """--emit, --format and --push-to-hub: how a dataset is written (every command that writes one)."""
    return [
        click.Option(["--emit"], type=click.Choice(["input", "messages"]), default="input", show_default=True,
                     help="input: the input's own schema plus curate_* columns; messages: a TRL-ready `messages` "
                          "column (system prompt folded in) plus curate_* columns."),
        click.Option(["--format", "fmt"], type=click.Choice(["disk", "parquet", "jsonl"]), default=None,
                     help="Output format [default: from the output's suffix; none = save_to_disk folder]."),
        click.Option(["--push-to-hub"], metavar="REPO",
                     help="Also upload the output (private) with its card and manifest to this Hub dataset repo; "
                          "the token comes from HF_TOKEN."),
    ]


@dataclass
class Call:
    """One invocation of an operation's command: what the user typed, sorted by kind."""

    op: Operation
    pool: str
    out: str | None
    values: dict[str, Any]  # the op's settings as typed (config fields only)
    command: Any  # the command's own settings (`op.command_class`), or None
    inputs_typed: dict[str, Any]
    io: dict[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> Any:
        """The op's config from what was typed (plus `overrides`); problems name the flags.
        Model names are checked here, so a typo fails before any data is loaded."""
        values = {**self.values, **overrides}
        settings = settings_of(self.op.config_class)
        if self.out and not values.get("offline"):  # a rater's files default to beside the output
            values.update({s.name: f"{self.out.rstrip('/')}{s.meta['beside_output']}" for s in settings
                           if s.meta.get("beside_output") and values.get(s.name) is None})
        config = build(self.op.config_class, values, flags(self.op))
        for s in settings:
            if s.meta.get("model") and getattr(config, s.name):
                from curate.models import check_model

                check_model(getattr(config, s.name))
        return config

    def inputs(self) -> dict[str, Any]:
        """The op's inputs, loaded: one pool, or {name: pool} for a set given as NAME=PATH."""
        from curate.data import load_pool
        from curate.ops import load_donor

        loaded: dict[str, Any] = {}
        for inp in self.op.inputs:
            typed = self.inputs_typed.get(inp.name)
            if not typed:
                continue
            if inp.many:
                loaded[inp.name] = {name: load_pool(path, source=name) for name, path in typed.items()}
            else:
                loaded[inp.name] = load_donor(typed) if inp.donor else load_pool(typed)
        return loaded

    def load(self) -> tuple[Any, list]:
        """(the pool, manifest entries of the rows `--decontaminate` dropped)."""
        from curate.data import load_pool, parse_mapping

        pool = load_pool(self.pool, split=self.io["split"], mapping=parse_mapping(self.io["maps"]))
        benchmarks = split_list(self.io.get("decontaminate") or ())
        if not benchmarks:
            return pool, []
        from curate.ops import decontaminate

        result = decontaminate(pool, benchmarks)
        click.echo(", ".join(f"{k}: {v}" for k, v in result.report.counts.items()), err=True)
        return result.pool, result.manifest

    def write(self, result, manifest: list):
        """Write `result` (after `manifest`'s entries) where and how the user asked."""
        from curate.ops import write_result

        return write_result(result, self.out, manifest=manifest, command=["curate", *sys.argv[1:]],
                            emit=self.io["emit"], fmt=self.io["fmt"], push_to_hub=self.io["push_to_hub"])


def flags(op: Operation) -> dict[str, str]:
    """Field name -> the flag a user types, for rendering problems."""
    return {s.name: s.flag for s in op_settings(op)}


def build(config_class: type, values: dict[str, Any], names: dict[str, str]) -> Any:
    """`config_class(**values)` with repeatable values joined (comma lists split, KEY=VALUE items
    read); an empty repeatable option means the field's default. Problems name `names`' flags."""
    from curate.errors import UsageError

    kwargs = {}
    for s in settings_of(config_class):
        if s.name not in values:
            continue
        value = values[s.name]
        if s.kind == "list":
            value = split_list(value)
            if not value:
                continue
        elif s.kind == "mapping" and not isinstance(value, dict):
            value = dict(_key_value(item, names.get(s.name, s.name)) for item in value)
        kwargs[s.name] = value
    try:
        return config_class(**kwargs)
    except ConfigError as err:
        raise UsageError("; ".join(err.render(names))) from None


def _key_value(item: str, flag: str) -> tuple[str, Any]:
    from curate.errors import UsageError

    key, sep, value = item.rpartition("=")
    if not sep or not key:
        raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
    return key, int(value) if value.strip().lstrip("-").isdigit() else value


def named_paths(flag: str, items: tuple[str, ...]) -> dict[str, str]:
    """`NAME=PATH` items of repeatable option `flag` as {name: path}."""
    from curate.errors import UsageError

    out: dict[str, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise UsageError(f"{flag} {item!r}: expected NAME=PATH")
        if not _NAME.fullmatch(key):
            raise UsageError(f"{flag} {item!r}: NAME may contain letters, digits and _ only")
        if key in out:
            raise UsageError(f"{flag} {key!r} given twice")
        out[key] = path
    return out


def default_flow(call: Call) -> None:
    """Check, load, run, write, render (see the module docstring)."""
    from curate.progress import RichProgress
    from curate.results import OpContext

    config = call.config()
    inputs = call.inputs()
    pool, removed = call.load()
    result = call.op(pool, inputs, config, OpContext(progress=RichProgress()))
    written = call.write(result, removed)
    render(result.report)
    for side in written.side_files:
        click.echo(str(side))
    click.echo(str(written.path))


def render(report) -> None:
    """An operation's counts and notes (stderr)."""
    click.echo(", ".join(f"{k}: {v}" for k, v in report.counts.items()), err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)


def operation_command(name: str) -> click.Command:
    """The click command of registry entry `name`."""
    from curate.registry import _resolve

    op = OPERATIONS[name]
    flow = _resolve(op.cli) if op.cli else default_flow
    settings = {s.name for s in settings_of(op.config_class)}
    own = {s.name for s in settings_of(op.command_class)} if op.command_class else set()

    def callback(pool: str, **typed: Any) -> None:
        inputs = {i.name: named_paths(i.flag, typed.pop(i.name)) if i.many else typed.pop(i.name)
                  for i in op.inputs}
        command = None
        if op.command_class:
            command = build(op.command_class, {k: typed.pop(k) for k in own}, flags(op))
        io = {k: typed.pop(k) for k in IO_OPTIONS if k in typed and k not in settings}
        values = {k: v for k, v in typed.items() if k in settings}
        flow(Call(op, pool, io.pop("out"), values, command, inputs, io))

    import inspect

    doc = inspect.cleandoc(flow.__doc__) if op.cli else f"{op.summary}\n\n{op.description}"
    return click.Command(name, params=command_params(op), callback=callback, help=doc,
                         epilog=getattr(flow, "epilog", None), context_settings={"help_option_names": ["-h", "--help"]})
