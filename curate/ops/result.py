"""What every operation returns: the new pool, the manifest of changed rows and a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curate.data import ManifestEntry, Pool


@dataclass(frozen=True)
class OpReport:
    """What an operation did, for people: `counts` (numbers worth printing), `notes` (one-line
    warnings such as "the donor supplied 9 of 12 hard math rows: ..."), `card` ({title: markdown}
    sections for the dataset card) and `data` (structured extras, e.g. flip's histograms)."""

    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    card: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpResult:
    """`pool`: the rows kept or added, in the input's schema; `manifest`: one entry per row
    removed, added or replaced, each with its reason; `report`: see `OpReport`."""

    pool: Pool
    manifest: list[ManifestEntry]
    report: OpReport
