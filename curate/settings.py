"""Settings: config dataclass fields that carry their own help, choices, range and unit.

Every operation's config (`TagConfig`, `ScoreConfig`, `FlipConfig`, `PruneConfig`, `StripConfig`,
`ReweightConfig`) declares its fields with `setting(...)`. That metadata is the only place a
setting's default, help, choices and range are written: `curate.cli.operation` makes the click
options from it, `curate.recipes.check` the recipe keys, and `curate run --explain OP` the docs.

Problems are collected, not raised one at a time: `check_settings` finds the choice and range
problems the metadata implies, a config's `__post_init__` adds its own cross-field ones, and
`raise_problems` raises them together as a `ConfigError`. A `Problem`'s text names fields as
`{field}`, so each front end shows them in the user's terms: `--keep-n` on the command line,
`keep_n` (at its line) in a recipe, `keep_n` from Python. Help texts name other fields the same way.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from typing import Any

from curate.errors import UsageError

_FIELD = re.compile(r"\{(\w+)\}")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def setting(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | Any = MISSING,
            choices: Iterable[Any] = (), low: float | None = None, high: float | None = None,
            low_open: bool = False, unit: str | None = None, flag: str | None = None,
            metavar: str | None = None, envvar: str | None = None, shown: str | None = None,
            cli: bool = True, recipe: bool = True, path: bool = False, input_names: bool = False,
            model: bool = False, beside_output: str | None = None) -> Any:
    """A dataclass field with its metadata.

    `default` / `factory`: as `dataclasses.field` (neither: a required setting).
    `choices`: allowed values (of each item, for a list). `low`, `high`: inclusive bounds
    (`low_open`: the lower one exclusive). `unit`: shown with the help (e.g. "GB", "s").
    `flag`: the command-line flag when it is not `--name-with-dashes`; `metavar`, `envvar` go to click;
    `shown`: how help shows a default too long to print. `cli=False`: no command-line option
    (Python and recipes only); `recipe=False`: no recipe key. `path`: a file path, relative to the
    recipe in a recipe. `input_names`: a recipe gives input names, resolved to their paths.
    `model`: a model or tokenizer name, checked before any data is loaded. `beside_output`: on the
    command line, a run with a rater (not offline) defaults this path to OUTPUT + this suffix.
    """
    meta = {"help": help, "choices": tuple(choices), "low": low, "high": high, "low_open": low_open,
            "unit": unit, "flag": flag, "metavar": metavar, "envvar": envvar, "shown": shown, "cli": cli,
            "recipe": recipe, "path": path, "input_names": input_names, "model": model,
            "beside_output": beside_output}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One field of a config as front ends see it.

    `kind`: "flag" (bool), "value" (one scalar), "list" (a tuple of strings: repeatable option or
    YAML list) or "mapping" (str -> int: repeatable KEY=VALUE or a YAML mapping). `types`: the
    Python types a value may have (a union's members); `optional`: None is allowed."""

    name: str
    kind: str
    types: tuple[type, ...]
    optional: bool
    required: bool
    default: Any
    meta: dict[str, Any]

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or "--" + self.name.replace("_", "-")

    def help(self, names: dict[str, str]) -> str:
        """The help text, fields named as in `names` (e.g. flags), with its unit."""
        text = render_names(self.meta.get("help", ""), names)
        return f"{text.rstrip('.')} (in {self.meta['unit']})." if self.meta.get("unit") else text

    @property
    def scalar(self) -> type:
        """The type a command-line value is parsed as: str when a string is allowed, else the first."""
        return str if str in self.types or not self.types else self.types[0]


def settings_of(config: type) -> list[Setting]:
    """The fields of config class `config`, in declaration order."""
    out = []
    for f in dataclasses.fields(config):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        members = [m.strip() for m in annotation.split("|")]
        optional = "None" in members
        members = [m for m in members if m != "None"]
        outer = members[0].split("[", 1)[0] if members else "str"
        kind = ("flag" if members == ["bool"] else "list" if outer in ("tuple", "list")
                else "mapping" if outer == "dict" else "value")
        types = tuple(_TYPES[m] for m in members if m in _TYPES)
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if required else f.default if f.default is not MISSING else f.default_factory()
        out.append(Setting(f.name, kind, types, optional, required, default, dict(f.metadata)))
    return out


def render_names(text: str, names: dict[str, str]) -> str:
    """`text` with every `{field}` replaced by `names[field]` (the field's name when absent)."""
    return _FIELD.sub(lambda m: names.get(m.group(1), m.group(1)), text)


@dataclass(frozen=True)
class Problem:
    """One problem with a config. `text` names fields as `{field}` (values are written literally)."""

    text: str

    def keys(self, known: Iterable[str]) -> list[str]:
        """The fields the text names, in order (only names in `known`)."""
        known = set(known)
        return [k for k in _FIELD.findall(self.text) if k in known]

    def render(self, names: dict[str, str]) -> str:
        """The text with each `{field}` replaced by the user's name for it (`names`, else itself)."""
        return render_names(self.text, names)


class ConfigError(UsageError):
    """A config's problems, all of them. `str()` names fields as Python does; front ends render
    `problems` with their own names (`render`)."""

    def __init__(self, config: type, problems: list[Problem]) -> None:
        self.config = config
        self.problems = problems
        super().__init__("; ".join(self.render({})))

    def render(self, names: dict[str, str]) -> list[str]:
        return [p.render(names) for p in self.problems]


def check_settings(config: Any) -> list[Problem]:
    """The choice and range problems of `config`'s values, from its fields' metadata."""
    problems = []
    for s in settings_of(type(config)):
        value = getattr(config, s.name)
        if value is None:
            continue
        items = list(value) if s.kind == "list" else list(value.values()) if s.kind == "mapping" else [value]
        choices = s.meta.get("choices") or ()
        bad = [v for v in items if choices and v not in choices]
        if bad or (s.kind == "list" and choices and not items):
            shown = ", ".join(map(repr, bad)) or "(none)"
            problems.append(Problem(f"{{{s.name}}} {shown}: choose from {', '.join(map(str, choices))}"))
        low, high = s.meta.get("low"), s.meta.get("high")
        for v in items:
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            under = low is not None and (v <= low if s.meta.get("low_open") else v < low)
            if under or (high is not None and v > high):
                problems.append(Problem(f"{{{s.name}}} {v}: must be {_range_text(s.meta)}"))
                break
    return problems


def _range_text(meta: dict) -> str:
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        return f"in {'(' if meta.get('low_open') else '['}{_num(low)}, {_num(high)}]"
    if low is not None:
        return f"{'>' if meta.get('low_open') else '>='} {_num(low)}"
    return f"<= {_num(high)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def raise_problems(config: Any, problems: list[Problem]) -> None:
    """Raise `ConfigError` when there are any problems."""
    if problems:
        raise ConfigError(type(config), problems)


def describe(config: type) -> list[tuple[str, str, str]]:
    """(recipe key, command-line flag, help with choices and default) per setting of `config`;
    "-" where a setting has no key or no flag. The rows of docs/operations.md."""
    rows = []
    settings = settings_of(config)
    flags = {s.name: f"`{s.flag}`" for s in settings}
    for s in settings:
        if not (s.meta.get("recipe", True) or s.meta.get("cli", True)):
            continue
        parts = [s.help(flags).rstrip(".")]
        if s.meta.get("choices"):
            parts.append(f"one of {', '.join(map(str, s.meta['choices']))}")
        if s.required:
            parts.append("required")
        elif s.meta.get("shown") or s.default not in (None, (), {}, False, ""):
            parts.append(f"default: {s.meta.get('shown') or _shown(s.default)}")
        rows.append((f"`{s.name}`" if s.meta.get("recipe", True) else "-",
                     f"`{s.flag}`" if s.meta.get("cli", True) else "-", "; ".join(p for p in parts if p)))
    return rows


def _shown(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
