"""Where a pool's rows live, read a batch at a time: text stays on disk, only the columns asked for
are read, and a command's memory is its narrow columns plus one batch (`BATCH_ROWS` rows).

A `Rows` is a small tree, every node with the same three members (`num_rows`, `schema`,
`batches(columns)`):

- `DatasetRows`: a `datasets.Dataset` (in memory, or memory-mapped Arrow: `save_to_disk` folders,
  the Hub cache);
- `FileRows`: parquet files read with column projection (a pool file, the parts a JSON or CSV
  file was converted to, or a `ParquetSpool` such as a tagger's annotations), each batch
  conformed to one schema;
- `ColumnRows`: a parent with narrow columns set or added from an in-memory table (curate_id,
  curate_domain, a tagger's annotations), aligned with the parent's rows;
- `TakeRows`: a parent's rows at non-decreasing positions (prune, decontaminate, reweight);
- `SpliceRows`: a parent's rows at increasing positions, some replaced by rows from a second
  `Rows` that yields them in output order (flip's donor rows).

Batches are `pyarrow.Table`s whose columns follow `schema`'s order, restricted to `columns`.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import datasets
    import numpy as np
    import pyarrow as pa

BATCH_ROWS = 1024  # rows per batch: ~20 MB of 20 KB reasoning traces


class Rows(Protocol):
    """Rows in a fixed order, read in batches."""

    @property
    def num_rows(self) -> int: ...

    @property
    def schema(self) -> pa.Schema: ...

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]: ...


def _names(rows: Rows, columns: Sequence[str] | None) -> list[str]:
    """`columns` in schema order (all when None); an unknown name is a KeyError."""
    names = rows.schema.names
    if columns is not None and not columns:
        raise ValueError("no columns asked for")
    if columns is None:
        return list(names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise KeyError(f"no column {missing[0]!r} (columns: {', '.join(names)})")
    wanted = set(columns)
    return [n for n in names if n in wanted]


@dataclass(frozen=True)
class DatasetRows:
    """A `datasets.Dataset`'s rows."""

    dataset: datasets.Dataset

    @property
    def num_rows(self) -> int:
        return len(self.dataset)

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.features.arrow_schema

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        names = _names(self, columns)
        view = self.dataset.select_columns(names).with_format("arrow")
        yield from view.iter(batch_size=BATCH_ROWS)


@dataclass(frozen=True)
class FileRows:
    """Parquet files, in order, read with column projection and conformed to `schema` (a part
    lacking a column gives nulls; other types are cast). `keep` holds what must outlive the files'
    readers (a temporary folder's finalizer)."""

    files: tuple[Path, ...]
    schema: pa.Schema
    num_rows: int
    keep: Any = field(default=None, compare=False, repr=False)

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        import pyarrow as pa

        names = _names(self, columns)
        target = pa.schema([self.schema.field(n) for n in names])
        for path in self.files:
            try:
                yield from self._part(path, names, target)
            except pa.ArrowException as err:  # a file changed or damaged since it was opened
                from curate.errors import DataError

                raise DataError(f"{path}: cannot read parquet: {str(err).strip().splitlines()[0]}") from None

    def _part(self, path: Path, names: list[str], target: pa.Schema) -> Iterator[pa.Table]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # pre_buffer (pyarrow's default) keeps every range it read until the file is closed: the
        # whole column, over a pass.
        part = pq.ParquetFile(path, pre_buffer=False)
        have = [n for n in names if n in part.schema_arrow.names]
        if not have:  # a part without any of the columns: its rows, all null
            rows = part.metadata.num_rows
            for start in range(0, rows, BATCH_ROWS):
                yield conform(pa.table({}), target, min(BATCH_ROWS, rows - start))
            return
        for batch in part.iter_batches(batch_size=BATCH_ROWS, columns=have, use_threads=False):
            yield conform(pa.Table.from_batches([batch]), target, batch.num_rows)


@dataclass(frozen=True)
class ColumnRows:
    """`parent` with the columns of `table` (aligned with its rows) replacing the parent's of the
    same name in place, the others appended in `table`'s order."""

    parent: Rows
    table: pa.Table

    @property
    def num_rows(self) -> int:
        return self.parent.num_rows

    @property
    def schema(self) -> pa.Schema:
        import pyarrow as pa

        own = {f.name: f for f in self.table.schema}
        fields = [own.get(f.name, f) for f in self.parent.schema]
        fields += [f for f in self.table.schema if f.name not in self.parent.schema.names]
        return pa.schema(fields, metadata=self.parent.schema.metadata)

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        names = _names(self, columns)
        mine = set(self.table.column_names)
        theirs = [n for n in names if n not in mine]
        if not theirs:  # only the table's own columns: no need to read the parent
            own = self.table.select(names)
            for start in range(0, own.num_rows, BATCH_ROWS):
                yield own.slice(start, BATCH_ROWS)
            return
        offset = 0
        for batch in self.parent.batches(theirs):
            n = batch.num_rows
            part = self.table.slice(offset, n)
            offset += n
            yield _pick(batch, part, names)


@dataclass(frozen=True)
class TakeRows:
    """`parent`'s rows at `positions` (non-decreasing int64; a repeated position repeats the row)."""

    parent: Rows
    positions: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.positions)

    @property
    def schema(self) -> pa.Schema:
        return self.parent.schema

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        import numpy as np

        names = _names(self, columns)
        offset = 0
        for batch in self.parent.batches(names):
            n = batch.num_rows
            lo, hi = np.searchsorted(self.positions, [offset, offset + n])
            offset += n
            if hi > lo:
                yield batch.take(self.positions[lo:hi] - (offset - n))


@dataclass(frozen=True)
class SpliceRows(TakeRows):
    """`parent`'s rows at `positions`, the output rows at `at` (increasing output positions)
    replaced by `replacements`' rows, which come in output order."""

    at: np.ndarray = None
    replacements: Rows = None

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        import numpy as np
        import pyarrow as pa

        names = _names(self, columns)
        incoming = Rechunk(self.replacements.batches(names))
        offset = 0
        for batch in super().batches(names):
            n = batch.num_rows
            lo, hi = np.searchsorted(self.at, [offset, offset + n])
            if hi > lo:
                new = conform(incoming.take(hi - lo), batch.schema, hi - lo)
                order = np.arange(n)
                order[self.at[lo:hi] - offset] = n + np.arange(hi - lo)
                batch = pa.concat_tables([batch, new]).take(order)
            offset += n
            yield batch


class Rechunk:
    """The rows of a stream of batches, handed out k at a time (`take(k)`)."""

    def __init__(self, batches: Iterator[pa.Table]) -> None:
        self.batches = batches
        self.pending: pa.Table | None = None

    def take(self, k: int) -> pa.Table:
        import pyarrow as pa

        parts, have = [], 0
        if self.pending is not None:
            parts.append(self.pending)
            have = self.pending.num_rows
        while have < k:
            batch = next(self.batches, None)
            if batch is None:
                raise ValueError(f"rows ran out: {k} asked for, {have} left")
            parts.append(batch)
            have += batch.num_rows
        table = pa.concat_tables(parts)
        self.pending = table.slice(k)
        return table.slice(0, k)


def _pick(left: pa.Table, right: pa.Table, names: list[str]) -> pa.Table:
    """The columns `names` from `left` or `right` (same rows), in that order."""
    import pyarrow as pa

    cols, fields = [], []
    for name in names:
        source = right if name in right.column_names else left
        cols.append(source.column(name))
        fields.append(source.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def conform(table: pa.Table, schema: pa.Schema, rows: int) -> pa.Table:
    """`table` with exactly `schema`'s columns: missing ones null, others cast (nested types that
    arrow cannot cast directly go through Python values, one batch at a time)."""
    import pyarrow as pa

    if table.schema.equals(schema, check_metadata=False) and table.column_names == schema.names:
        return table
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(rows, type=f.type))
            continue
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowException, TypeError):
                col = pa.array(col.to_pylist(), type=f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=pa.schema(list(schema)))


def read_columns(rows: Rows, columns: Sequence[str]) -> pa.Table:
    """The whole of (narrow) `columns`, as one table."""
    import pyarrow as pa

    names = _names(rows, columns)
    target = pa.schema([rows.schema.field(n) for n in names])
    parts = list(rows.batches(names))
    return pa.concat_tables(parts) if parts else target.empty_table()


TEMP_PREFIX = "curate-"


class TempFolder:
    """A temporary folder, `$TMPDIR/curate-<pid>-*`, removed when the last object holding this
    goes away (or at exit). A process killed before that (SIGKILL, out of memory) cannot remove
    its folders; the first TempFolder of a later process removes those whose process is gone."""

    _swept = False

    def __init__(self) -> None:
        import shutil
        import tempfile

        if not TempFolder._swept:
            TempFolder._swept = True
            sweep_orphans(Path(tempfile.gettempdir()))
        self.path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)


def sweep_orphans(root: Path) -> list[Path]:
    """Remove the `TempFolder`s under `root` whose process no longer runs; returns them."""
    import shutil

    removed = []
    for path in root.glob(f"{TEMP_PREFIX}*-*"):
        pid = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and path.is_dir() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ParquetSpool:
    """Batches written, in order, to a temporary parquet file as they come (`add`), then read back
    as `FileRows` with `schema` (`close`): an operation's edited rows or a tagger's annotations, off
    the heap."""

    def __init__(self, schema: pa.Schema) -> None:
        self.folder, self.schema, self.writer, self.rows = TempFolder(), schema, None, 0

    def add(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.folder.path / "rows.parquet", self.schema)
        self.writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> FileRows:
        if self.writer is None:
            self.add(self.schema.empty_table())
        self.writer.close()
        return FileRows((self.folder.path / "rows.parquet",), self.schema, self.rows, keep=self.folder)


POSITION = "__position"  # the output position column of a `Spill`'s parts


@dataclass(frozen=True)
class Spill:
    """Rows written in any order, each with its output position, read back in position order:
    `files[k]` holds the rows whose positions fall in `[k * span, (k + 1) * span)` (no file: none),
    sorted when read, so a read holds one bucket."""

    files: tuple[tuple[Path, ...], ...]
    schema: pa.Schema
    num_rows: int
    span: int
    keep: Any = field(default=None, compare=False, repr=False)

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = _names(self, columns)
        for paths in self.files:
            if not paths:
                continue
            part = pa.concat_tables(pq.read_table(path, columns=[*names, POSITION]) for path in paths)
            part = part.sort_by(POSITION).drop_columns([POSITION])
            for start in range(0, part.num_rows, BATCH_ROWS):
                yield part.slice(start, BATCH_ROWS)


class SpillWriter:
    """Writes a `Spill`: `add(table, positions)` any number of times, then `close()`.

    Added rows are held until they reach `BUFFER_BYTES`, then sorted by position and written, one
    row group per bucket. Each open bucket file takes at most `GROUPS_PER_FILE` row groups before
    the next file of that bucket starts: a parquet writer keeps every row group's metadata until it
    closes (~8 KB each for a pool's columns), so neither tiny writes nor long-open files accumulate
    memory with the pool's size."""

    BUFFER_BYTES = 32 << 20
    GROUPS_PER_FILE = 16

    def __init__(self, schema: pa.Schema, span: int = 8 * BATCH_ROWS) -> None:
        self.folder = TempFolder()
        self.schema, self.span = schema, span
        self.pending: list[pa.Table] = []
        self.held = 0
        self.files: dict[int, list[Path]] = {}
        self.writers: dict[int, tuple[Any, int]] = {}  # bucket -> (open writer, row groups in it)
        self.rows = 0

    def add(self, table: pa.Table, positions: np.ndarray) -> None:
        import pyarrow as pa

        table = conform(table, self.schema, table.num_rows).append_column(POSITION, pa.array(positions, pa.int64()))
        self.pending.append(table)
        self.held += table.nbytes
        self.rows += table.num_rows
        if self.held >= self.BUFFER_BYTES:
            self._flush()

    def _flush(self) -> None:
        import numpy as np
        import pyarrow as pa

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.held = [], 0
        positions = table.column(POSITION).to_numpy()
        order = np.argsort(positions, kind="stable")
        table, buckets = table.take(order), positions[order] // self.span
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        for lo, hi in zip(starts, [*starts[1:], len(buckets)], strict=True):
            self._write(int(buckets[lo]), table.slice(lo, hi - lo))

    def _write(self, bucket: int, part: pa.Table) -> None:
        import pyarrow.parquet as pq

        writer, groups = self.writers.get(bucket, (None, 0))
        if writer is None or groups >= self.GROUPS_PER_FILE:
            if writer is not None:
                writer.close()
            paths = self.files.setdefault(bucket, [])
            paths.append(self.folder.path / f"part-{bucket:06d}-{len(paths):04d}.parquet")
            writer, groups = pq.ParquetWriter(paths[-1], part.schema, write_statistics=False), 0
        writer.write_table(part, row_group_size=part.num_rows or 1)
        self.writers[bucket] = (writer, groups + 1)

    def close(self) -> Spill:
        self._flush()
        for writer, _ in self.writers.values():
            writer.close()
        count = 1 + max(self.files, default=-1)
        files = tuple(tuple(self.files.get(k, ())) for k in range(count))
        return Spill(files, self.schema, self.rows, self.span, keep=self.folder)
