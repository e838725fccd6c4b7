"""The manifest: one JSON line per row an operation removed, added or replaced, with its reason.

Rows kept as they were are not listed. `replaced` names the old row (`curate_id`) and the row that
took its place (`replaced_by`, present in the output). An empty manifest is still written, so a
reader can tell "nothing changed" from "not recorded".

Entries are `ManifestEntry` objects where there are few, or a `Manifest` (the same four fields
as Arrow columns) where an operation changes up to millions of rows: checked, counted and
written a batch at a time, never as one Python object per row.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curate.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

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


FIELDS = ("curate_id", "action", "reason", "replaced_by")
_LINES_PER_BATCH = 1 << 16


@dataclass(frozen=True, eq=False)
class Manifest:
    """Manifest entries as Arrow columns (`FIELDS`, strings; `replaced_by` null unless replaced),
    in order, checked as `ManifestEntry` checks one entry. Iterating gives `ManifestEntry`s; equal
    when the columns are."""

    table: pa.Table

    def __post_init__(self) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self.table.select(list(FIELDS)).cast(_schema())
        object.__setattr__(self, "table", table)
        action, reason, by = table.column("action"), table.column("reason"), table.column("replaced_by")
        replaced = pc.equal(action, "replaced")
        bad = pc.or_kleene(pc.invert(pc.is_in(action, value_set=pa.array(ACTIONS))),
                           pc.or_kleene(pc.invert(pc.fill_null(pc.greater(pc.utf8_length(reason), 0), False)),
                                        pc.not_equal(replaced, pc.is_valid(by))))
        bad = pc.fill_null(bad, True)
        if pc.any(bad).as_py():
            first = pc.filter(table, bad).slice(0, 1).to_pylist()[0]
            ManifestEntry(**first)  # raises the entry's own error
            raise DataError(f"manifest entry {first['curate_id']}: not a valid entry: {first}")

    @classmethod
    def of(cls, *parts: ManifestLike) -> Manifest:
        """The entries of `parts` (each a `Manifest` or `ManifestEntry`s), in order."""
        import pyarrow as pa

        if len(parts) == 1 and isinstance(parts[0], Manifest):  # already checked: not again
            return parts[0]
        tables = []
        for part in parts:
            if isinstance(part, Manifest):
                tables.append(part.table)
                continue
            entries = list(part)
            for entry in entries:
                if not isinstance(entry, ManifestEntry):
                    raise DataError(f"manifest: expected ManifestEntry, got {type(entry).__name__}")
            tables.append(pa.table({f: [getattr(e, f) for e in entries] for f in FIELDS}, schema=_schema()))
        return cls(pa.concat_tables(tables) if tables else _schema().empty_table())

    @classmethod
    def rows(cls, ids: pa.Array | pa.ChunkedArray, action: str, reasons: str | pa.Array | pa.ChunkedArray,
             replaced_by: pa.Array | pa.ChunkedArray | None = None) -> Manifest:
        """One entry per id: the same `action`, a reason each (or one for all), `replaced_by` for
        replacements."""
        import pyarrow as pa

        n = len(ids)
        return cls(pa.table({"curate_id": ids, "action": pa.repeat(action, n),
                             "reason": pa.repeat(reasons, n) if isinstance(reasons, str) else reasons,
                             "replaced_by": pa.nulls(n, pa.string()) if replaced_by is None else replaced_by}))

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """A manifest file `write_pool` wrote, read as columns (`read_manifest` gives entries)."""
        import pyarrow as pa
        import pyarrow.json as pj

        if not Path(path).stat().st_size:
            return cls(_schema().empty_table())
        try:
            table = pj.read_json(path, parse_options=pj.ParseOptions(explicit_schema=_schema(),
                                                                     unexpected_field_behavior="error"))
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a manifest: {str(err).strip().splitlines()[0]}") from None
        return cls(table)

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[ManifestEntry]:
        for batch in self.table.to_batches(max_chunksize=_LINES_PER_BATCH):
            for row in batch.to_pylist():
                yield ManifestEntry(**row)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Manifest) and self.table.equals(other.table)

    __hash__ = None  # type: ignore[assignment]

    def lines(self) -> Iterator[str]:
        """The manifest file's text, one JSON object per entry, a batch of entries at a time."""
        for batch in self.table.to_batches(max_chunksize=_LINES_PER_BATCH):
            yield "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in batch.to_pylist())


ManifestLike = Manifest | Iterable[ManifestEntry]


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(f, pa.string()) for f in FIELDS])


def check_manifest(entries: ManifestLike, output_ids: Sequence[str]) -> Manifest:
    """`entries` as a `Manifest`; added rows and replacements must be in the output, removed ones
    not. `output_ids`: the output's `curate_id`s (an Arrow array or column, or a sequence of
    strings), looked up in a table of the entries' ids (not the other way round: the output may be
    millions)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    manifest = Manifest.of(entries)
    if not len(manifest):
        return manifest
    table = manifest.table
    removed = pc.equal(table.column("action"), "removed")
    present = pc.if_else(pc.equal(table.column("action"), "replaced"), table.column("replaced_by"),
                         table.column("curate_id"))
    if not isinstance(output_ids, (pa.Array, pa.ChunkedArray)):
        output_ids = pa.array(list(output_ids), pa.string())
    output_ids = output_ids.cast(pa.string())
    inside_output = pc.filter(output_ids, pc.is_in(output_ids, value_set=pc.unique(present)))
    inside = pc.is_in(present, value_set=pc.unique(inside_output))
    wrong = pc.not_equal(removed, pc.invert(inside))
    if pc.any(wrong).as_py():
        entry = pc.filter(table, wrong).slice(0, 1).to_pylist()[0]
        if entry["action"] == "removed":
            raise DataError(f"manifest: {entry['curate_id']} is listed as removed but is in the output")
        name = entry["replaced_by"] if entry["action"] == "replaced" else entry["curate_id"]
        raise DataError(f"manifest: {name} is listed as {entry['action']} but is not in the output")
    return manifest


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


def count_actions(entries: ManifestLike) -> dict[str, int]:
    """{action: count} for every action, zeros included."""
    if isinstance(entries, Manifest):
        counts = {d["values"]: d["counts"] for d in entries.table.column("action").value_counts().to_pylist()}
    else:
        counts = Counter(e.action for e in entries)
    return {action: counts.get(action, 0) for action in ACTIONS}


_LABEL = re.compile(r"^([\w-]+:[\w:>-]+)\s")


def reason_label(reason: str) -> str:
    """The counted part of a reason: its leading `op:kind` label when it has one
    (`prune:score 0.12, rank 5 of 80` -> `prune:score`), else the whole reason."""
    match = _LABEL.match(reason)
    return match.group(1) if match else reason


def count_reasons(entries: ManifestLike) -> dict[tuple[str, str], int]:
    """{(action, reason label): count}, most frequent first; per-row details stay in the manifest."""
    if not isinstance(entries, Manifest):
        return dict(Counter((e.action, reason_label(e.reason)) for e in entries).most_common())
    import polars as pl

    frame = pl.from_arrow(entries.table.select(["action", "reason"]))
    grouped = frame.group_by("action", "reason", maintain_order=True).len()  # few distinct reasons
    counts: Counter = Counter()
    for action, reason, n in grouped.iter_rows():
        counts[action, reason_label(reason)] += n
    return dict(counts.most_common())
