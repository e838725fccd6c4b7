"""What every operation returns (`OpResult`), what it is given besides its inputs (`OpContext`),
and the one way a result is written (`write_result`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.data import ManifestEntry, Pool
from curate.data.manifest import Manifest, ManifestLike

if TYPE_CHECKING:
    import polars as pl

    from curate.data.rows import FileRows
    from curate.progress import Progress


@dataclass(frozen=True)
class OpReport:
    """What an operation did, for people: `counts` (numbers worth printing), `notes` (one-line
    warnings such as "the donor supplied 9 of 12 hard math rows: ..."), `card` ({title: markdown}
    sections for the dataset card) and `data` (structured extras, e.g. flip's histograms)."""

    counts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    card: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpResult:
    """`pool`: the rows kept or added, in the input's schema; `manifest`: one entry per row
    removed, added or replaced, each with its reason; `report`: see `OpReport`.

    Annotating operations (tag, score) leave the rows as they are and return `annotations`
    instead: a polars frame of `curate_id` and `curate_*` columns, joined by id when written, or
    such columns on disk in the pool's row order (`FileRows`: a tagger's, spilled as it tags).
    `side`: {name: frame} written beside the output as `name.parquet` (None: remove a stale one);
    `figures`: {name: (card section, draw(path))}, drawn to `name.png` beside the output and
    shown in that card section."""

    pool: Pool
    manifest: list[ManifestEntry] | Manifest
    report: OpReport
    annotations: pl.DataFrame | FileRows | None = None
    side: dict[str, pl.DataFrame | None] = field(default_factory=dict)
    figures: dict[str, tuple[str, Callable[[str], None]]] = field(default_factory=dict)

    def annotated(self, columns: Sequence[str] | None = None) -> Pool:
        """The pool with `annotations` (only `columns` of them, when given) joined as columns, for
        an op that reads them next; the annotations are held in memory, the rows stay where they are."""
        if self.annotations is None:
            return self.pool
        import polars as pl

        from curate.data.rows import ColumnRows, read_columns
        from curate.data.write import aligned_annotations, annotation_table, set_columns

        joined = aligned_annotations(self.pool.columns(["curate_id"]).column("curate_id"), self.annotations)
        if isinstance(joined, pl.DataFrame):
            joined = annotation_table(joined.select(columns) if columns else joined)
        else:
            joined = read_columns(joined, columns or joined.schema.names)
        existing = [c for c in joined.column_names if c in self.pool.column_names]
        table = set_columns(self.pool.columns(existing), joined) if existing else joined
        return self.pool.with_rows(ColumnRows(self.pool.rows, table))


@dataclass(frozen=True)
class OpContext:
    """What an operation gets besides its pool, inputs and config: `progress` (bars), `work_dir`
    (a folder for resumable state; None: the op keeps none) and `overwrite` (recompute state made
    from other inputs instead of refusing)."""

    progress: Progress | None = None
    work_dir: Path | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class Written:
    """Where a result went: the data (folder or file) and the files beside it."""

    path: Path
    side_files: list[Path]


def write_result(result: OpResult, out: str | Path, *, manifest: ManifestLike = (),
                 command: str | Sequence[str] | None = None, emit: str = "input", fmt: str | None = None,
                 push_to_hub: str | None = None) -> Written:
    """Write `result` to `out` (`curate.data.write_pool`), then its side files and figures.

    `manifest`: entries from before the operation (e.g. decontamination), listed ahead of its own."""
    from curate.data import side_path, write_pool

    card = dict(result.report.card)
    out = Path(out)
    for name, (section, _) in result.figures.items():
        target = side_path(out, name, ".png")
        card[section] = card.get(section, "") + f"\n\n![{name}]({target.name})"
    path = write_pool(result.pool, out, annotations=result.annotations, manifest=Manifest.of(manifest, result.manifest),
                      command=command, extra_card=card, emit=emit, fmt=fmt, push_to_hub=push_to_hub)
    side_files = []
    for name, frame in result.side.items():
        target = side_path(path, name)
        if frame is None:
            target.unlink(missing_ok=True)  # an earlier run's file beside a file output would be read as ours
        else:
            frame.write_parquet(target)
            side_files.append(target)
    for name, (_, draw) in result.figures.items():  # after write_pool: a folder output is replaced whole
        target = side_path(path, name, ".png")
        draw(str(target))
        side_files.append(target)
    return Written(path, side_files)
