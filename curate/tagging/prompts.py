"""Prompt templates as versioned data files (`prompts/*.md`) with `$var` substitution.

A file is a small header between `---` lines (`name`, `version`, `task`, `answer`, `note`), then the
template. The template uses `string.Template` syntax (`$trace`, `$$` for a literal dollar); a
template naming a variable its task does not provide is refused when loaded, and rendering without
a value for every variable it names is refused too. `Prompt.hash` covers the whole file (header
and template), so any edit changes every cache key that uses the prompt.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from curate.errors import UsageError

BEHAVIORS = ("exploration", "verification", "backtracking", "subgoal_setting", "backward_chaining")
# prompt name -> variables its caller supplies (the tagger; `strip_exploration`: curate.ops.strip)
PROMPT_VARS: dict[str, frozenset[str]] = {
    "difficulty_math": frozenset({"problem", "solution"}),
    "difficulty_code": frozenset({"problem", "solution"}),
    "domain": frozenset({"problem", "response"}),
    **{f"behavior_{b}": frozenset({"trace"}) for b in BEHAVIORS},
    "strip_exploration": frozenset({"segments", "n"}),
}


class PromptError(UsageError):
    """A prompt file is missing, malformed, or names variables the tagger does not provide."""


@dataclass(frozen=True)
class Prompt:
    """One template: `name` (file stem), `version` (from the header), `hash` (12 hex of sha256 of
    the file's bytes), `template` (the text after the header) and its `variables`."""

    name: str
    version: str
    hash: str
    template: str
    variables: frozenset[str]
    path: str

    def render(self, **values: str) -> str:
        """The template with every `$var` replaced; refuses missing or unexpected values."""
        missing = self.variables - {k for k, v in values.items() if v is not None}
        if missing:
            raise PromptError(f"prompt {self.name}: no value for ${', $'.join(sorted(missing))}")
        extra = set(values) - self.variables
        if extra:
            raise PromptError(f"prompt {self.name}: it does not use ${', $'.join(sorted(extra))}")
        return string.Template(self.template).substitute(values)


def default_prompt_dir() -> Path:
    """The project's `prompts/` folder: beside the `curate` package in a source checkout (or an
    editable install), else where a built wheel installs it, `<prefix>/share/curate/prompts`."""
    import sysconfig

    source = Path(__file__).resolve().parents[2] / "prompts"
    if source.is_dir():
        return source
    installed = Path(sysconfig.get_path("data")) / "share" / "curate" / "prompts"
    if installed.is_dir():
        return installed
    raise PromptError(f"the tagger's prompts are missing: neither {source} nor {installed} exists; "
                      "reinstall curate or pass --prompts DIR")


def template_variables(template: str, where: str) -> frozenset[str]:
    """The `$names` a template uses; a bare `$` that is not `$$` or `$name` is refused."""
    names = set()
    for match in string.Template.pattern.finditer(template):
        if match.group("invalid") is not None:
            line = template[: match.start()].count("\n") + 1
            raise PromptError(f"{where}: line {line} of the template: a lone $ (write $$ for a dollar sign)")
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return frozenset(names)


def parse_prompt(text: str, name: str, path: str = "") -> Prompt:
    """A `Prompt` from a file's text (header + template)."""
    where = path or name
    header: dict[str, str] = {}
    body = text
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end < 0:
            raise PromptError(f"{where}: header opened with --- but never closed")
        for line in text[4:end].splitlines():
            key, sep, value = line.partition(":")
            if sep:
                header[key.strip()] = value.strip()
        body = text[end + 5:]
    allowed = PROMPT_VARS.get(name)
    if allowed is None:
        raise PromptError(f"{where}: unknown prompt name {name!r} (known: {', '.join(PROMPT_VARS)})")
    variables = template_variables(body, where)
    unknown = variables - allowed
    if unknown:
        raise PromptError(
            f"{where}: unknown variable(s) ${', $'.join(sorted(unknown))}; "
            f"this prompt may use ${', $'.join(sorted(allowed))}"
        )
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Prompt(name, header.get("version", "0"), digest, body, variables, path)


def load_prompts(names: list[str], user_dir: str | Path | None = None) -> dict[str, Prompt]:
    """The named prompts: `user_dir/<name>.md` (or `.txt`) where present, else the project's own."""
    dirs = [Path(user_dir)] if user_dir else []
    if user_dir and not Path(user_dir).is_dir():
        raise PromptError(f"--prompts {user_dir}: not a folder")
    dirs.append(default_prompt_dir())
    out = {}
    for name in names:
        for folder in dirs:
            path = next((p for p in (folder / f"{name}.md", folder / f"{name}.txt") if p.is_file()), None)
            if path is not None:
                out[name] = parse_prompt(path.read_text(encoding="utf-8"), name, str(path))
                break
        else:
            raise PromptError(f"no prompt file {name}.md in {', '.join(str(d) for d in dirs)}")
    return out


