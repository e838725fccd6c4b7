"""The dataset card (`README.md`) written next to every output.

It records how the output was made: the command line (with secret-looking values masked), the
input, its shape, row counts by action and reason, package versions and the date. It never reads
environment variables.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING

from curate.data.manifest import ManifestLike, count_actions, count_reasons

if TYPE_CHECKING:
    from curate.data.pool import Pool

PACKAGES = ("curate", "datasets", "transformers", "torch", "polars", "pyarrow")
_SECRET_OPTION = re.compile(r"^--?[\w-]*(key|token|secret|password|passwd|auth)[\w-]*$", re.I)
_SECRET_VALUE = re.compile(r"\b(sk-[\w-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,})")


def render_card(
    pool: Pool,
    *,
    entries: ManifestLike,
    fmt: str,
    emit: str,
    manifest_name: str = "manifest.jsonl",
    command: str | Sequence[str] | None,
    extra: str | Mapping[str, str] | None,
) -> str:
    """The card's markdown. `extra` is markdown appended as is, or {title: markdown} sections."""
    actions = count_actions(entries)
    rows_out = len(pool)
    rows_in = rows_out - actions["added"] + actions["removed"]
    lines = [
        "# curate output",
        "",
        f"Written by curate {_version('curate')} on {datetime.now(timezone.utc).isoformat(timespec='seconds')}.",
        "",
        "## Command",
        "",
        "```",
        redact_command(command) if command is not None else "(not recorded: library call)",
        "```",
        "",
        "## Input",
        "",
        f"- input: `{pool.origin}`" + (f" (split `{pool.split}`)" if pool.split else ""),
        f"- id qualifier: `{pool.source}`" if pool.source else "- ids: from the rows (own id column or content hash)",
        f"- shape: `{pool.shape.name}`",
        f"- output: {fmt}, {'the input schema plus curate_* columns' if emit == 'input' else 'a `messages` column plus curate_* columns'}",
        "",
        "| role | column |",
        "|---|---|",
        *(f"| {role} | `{column}` |" for role, column in pool.shape.columns.items()),
        "",
        "## Counts",
        "",
        "| rows in | rows out | removed | added | replaced |",
        "|---|---|---|---|---|",
        f"| {rows_in} | {rows_out} | {actions['removed']} | {actions['added']} | {actions['replaced']} |",
        "",
        f"Rows in = rows out + removed - added, from the manifest `{manifest_name}`.",
        "",
    ]
    reasons = count_reasons(entries)
    if reasons:
        lines += ["| action | reason | rows |", "|---|---|---|"]
        lines += [f"| {a} | {r} | {n} |" for (a, r), n in reasons.items()]
        lines.append("")
    lines += ["## Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {name} | {_version(name)} |" for name in PACKAGES]
    lines.append("")
    if isinstance(extra, Mapping):
        for title, body in extra.items():
            lines += [f"## {title}", "", body.strip(), ""]
    elif extra:
        lines += [extra.strip(), ""]
    return "\n".join(lines)


def redact_command(command: str | Sequence[str]) -> str:
    """The command line with values of key/token/secret/password options and API-key-like words
    replaced by `***`."""
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append("***")
            mask_next = False
            continue
        name, eq, _ = arg.partition("=")
        if _SECRET_OPTION.match(name):
            if eq:
                arg = f"{name}=***"
            else:
                mask_next = True
        out.append(_SECRET_VALUE.sub("***", arg))
    return shlex.join(out)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
