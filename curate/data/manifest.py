"""The manifest: one JSON line per row an operation removed, added or replaced, with its reason.

Rows kept as they were are not listed. `replaced` names the old row (`curate_id`) and the row that
took its place (`replaced_by`, present in the output). An empty manifest is still written, so a
reader can tell "nothing changed" from "not recorded".
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from curate.errors import DataError

ACTIONS = ("removed", "added", "replaced")


@dataclass(frozen=True, slots=True)  # slots: a flip at 1.2M rows makes 300k of them
class ManifestEntry:
    """One changed row. `action` is removed/added/replaced; `reason` is a short, countable label
    (e.g. `influence_bottom_30pct`, `flip_donor_math_level5`)."""

    curate_id: str
    action: str
    reason: str
    replaced_by: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise DataError(f"manifest entry {self.curate_id}: action {self.action!r} not in {ACTIONS}")
        if not self.reason:
            raise DataError(f"manifest entry {self.curate_id}: every change needs a reason")
        if (self.action == "replaced") != (self.replaced_by is not None):
            raise DataError(
                f"manifest entry {self.curate_id}: replaced_by is required for 'replaced' "
                "and only for it"
            )


def check_manifest(entries: Iterable[ManifestEntry], output_ids: Sequence[str]) -> list[ManifestEntry]:
    """Entries as a list; added rows and replacements must be in the output, removed ones not.
    `output_ids`: the output's `curate_id`s (an Arrow array or column, or a sequence of strings),
    looked up in a table of the entries' ids (not the other way round: the output may be millions)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    entries = list(entries)
    for entry in entries:
        if not isinstance(entry, ManifestEntry):
            raise DataError(f"manifest: expected ManifestEntry, got {type(entry).__name__}")
    if not entries:
        return entries
    present = [e.replaced_by if e.action == "replaced" else e.curate_id for e in entries]
    if not isinstance(output_ids, (pa.Array, pa.ChunkedArray)):
        output_ids = pa.array(list(output_ids), pa.string())
    mask = pc.is_in(output_ids, value_set=pa.array(present, output_ids.type))  # one lookup table, every chunk
    inside_output = set(pc.filter(output_ids, mask).to_pylist())
    found = [name in inside_output for name in present]
    for entry, name, inside in zip(entries, present, found, strict=True):
        if entry.action == "removed" and inside:
            raise DataError(f"manifest: {entry.curate_id} is listed as removed but is in the output")
        if entry.action != "removed" and not inside:
            raise DataError(f"manifest: {name} is listed as {entry.action} but is not in the output")
    return entries


def manifest_lines(entries: Iterable[ManifestEntry]) -> str:
    """The manifest file's text: one JSON object per entry, in the given order."""
    return "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in entries)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read a manifest written by `write_pool`."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entries.append(ManifestEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as err:
                raise DataError(f"{path}:{lineno}: not a manifest entry: {err}") from None
    return entries


def count_actions(entries: Iterable[ManifestEntry]) -> dict[str, int]:
    """{action: count} for every action, zeros included."""
    counts = Counter(e.action for e in entries)
    return {action: counts.get(action, 0) for action in ACTIONS}


_LABEL = re.compile(r"^([\w-]+:[\w:>-]+)\s")


def reason_label(reason: str) -> str:
    """The counted part of a reason: its leading `op:kind` label when it has one
    (`prune:score 0.12, rank 5 of 80` -> `prune:score`), else the whole reason."""
    match = _LABEL.match(reason)
    return match.group(1) if match else reason


def count_reasons(entries: Iterable[ManifestEntry]) -> dict[tuple[str, str], int]:
    """{(action, reason label): count}, most frequent first; per-row details stay in the manifest."""
    return dict(Counter((e.action, reason_label(e.reason)) for e in entries).most_common())
