"""Reading pools: files (`.jsonl`, `.json`, `.parquet`, `.csv`, each optionally `.gz`), `save_to_disk`
folders, plain data folders and Hugging Face Hub ids.

Nothing is read whole: a parquet file is read in place (column by column, a batch at a time);
JSON and CSV are converted once, `BATCH_ROWS` rows at a time, to parquet parts in a temporary
folder that lives as long as the pool; `save_to_disk` folders and Hub datasets are memory-mapped
Arrow already. JSON is parsed with the json module, so a malformed line is reported as
`path:LINE: message` as soon as it is reached; parquet and CSV go through pyarrow, which keeps the
file's own column types. Column order is the order keys are first seen; a column's type is the
one that holds every row's value (ints and floats give floats; ints and strings are an error).
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.data.pool import Pool, build_pool
from curate.data.rows import BATCH_ROWS, DatasetRows, FileRows, Rows, TempFolder
from curate.data.shapes import resolve_shape
from curate.errors import DataError, UsageError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PEEK = 5  # rows shape detection looks at
_CSV_CONVERSION = re.compile(r"CSV column #(\d+): CSV conversion error to ([\w\[\]]+)")


def load_pool(
    path_or_hub_id: str | Path,
    split: str | None = None,
    mapping: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Pool:
    """Load a pool and add `curate_id`, `curate_domain`, `curate_domain_source`.

    `path_or_hub_id`: a data file, a `save_to_disk` folder, a folder of data files, or a Hub id.
    `split`: for folders and Hub datasets; default `train`, or the only split there is.
    `mapping`: role -> column (`--map`), overriding shape detection.
    `source`: an explicit qualifier of ids (`f"{source}:{key}"`); default none: ids come from the
    rows alone, whatever the file is called (`curate.data.pool`).
    Raises `DataError` (unreadable or empty input, missing column) or `UsageError` (bad option).
    """
    rows, origin, split = read_rows(path_or_hub_id, split)
    if rows.num_rows == 0:
        raise DataError(f"{origin}: empty pool (0 rows)")
    peek = next(rows.batches()).slice(0, _PEEK).to_pylist()
    shape = resolve_shape(list(rows.schema.names), peek, mapping, where=origin)
    return build_pool(rows, shape, source, origin, split)


def read_dataset(
    path_or_hub_id: str | Path, split: str | None = None
) -> tuple[datasets.Dataset, str, str | None]:
    """Read the rows as they are, whole: (dataset, origin, split used). For small sets (benchmarks);
    pools go through `read_rows`."""
    import datasets

    from curate.data.rows import read_columns

    rows, origin, split = read_rows(path_or_hub_id, split)
    if isinstance(rows, DatasetRows):
        return rows.dataset, origin, split
    table = read_columns(rows, rows.schema.names) if rows.schema.names else rows.schema.empty_table()
    return datasets.Dataset(table, fingerprint=_file_fingerprint(Path(origin))), origin, split


def read_rows(path_or_hub_id: str | Path, split: str | None = None) -> tuple[Rows, str, str | None]:
    """Where the rows are, as they are (nothing read whole): (rows, origin, split used)."""
    text = str(path_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        dataset, split = _read_folder(path, split)
        return DatasetRows(dataset), text, split
    if path.exists():
        if split is not None:
            raise UsageError(f"--split {split}: {text} is a single file; --split is for folders and Hub ids")
        return read_file(path), text, None
    if _data_suffix(path) or not _HUB_ID.match(text) or text.startswith("."):
        raise DataError(f"{text}: no such file or directory")
    dataset, split = _read_hub(text, split)
    return DatasetRows(dataset), text, split


def read_file(path: Path) -> Rows:
    """One data file's rows, columns and rows in file order, read in place or converted to parquet
    parts a batch at a time (see the module doc)."""
    fmt = _data_suffix(path)
    if fmt is None:
        raise DataError(
            f"{path}: unknown format {''.join(path.suffixes) or '(no suffix)'!r}; expected "
            ".jsonl, .json, .parquet or .csv (optionally .gz), a save_to_disk folder or a Hub id"
        )
    try:
        if fmt in ("jsonl", "json"):
            return _spill(_json_rows(path, lines=fmt == "jsonl"), path)
        if fmt == "csv":
            return _csv_rows(path)
        return _parquet_rows(path)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None


_WS = " \t\r\n"  # JSON's whitespace


def _json_rows(path: Path, lines: bool) -> Iterator[dict[str, Any]]:
    """The row objects of a JSON lines file, or of a JSON list (a `.json` file may hold JSON lines
    too), one at a time."""
    with _open_text(path) as f:
        if lines:
            yield from _json_lines(f, path)
            return
        head = f.read(1 << 16)
        start = head.lstrip(_WS)[:1]
        if start == "[":
            yield from _json_list(head, f, path)
            return
        if start == "{":
            _refuse_one_object(head, f, path)
            f.seek(0)
            yield from _json_lines(f, path)  # a .json file holding JSON lines
            return
        text = head + f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    raise DataError(f"{path}: expected a list of row objects, found {type(data).__name__}")


class _Buffer:
    """A text file read through a sliding window: `text[pos:]` is what is not consumed yet,
    `lines` the newlines before `text`."""

    def __init__(self, head: str, f: io.TextIOBase, path: Path) -> None:
        self.text, self.f, self.path, self.pos, self.lines, self.eof = head, f, path, 0, 0, False

    def more(self) -> bool:
        """Read more (at least as much as is pending, so a long value costs linear time)."""
        chunk = "" if self.eof else self.f.read(max(1 << 20, len(self.text) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.lines += self.text.count("\n", 0, self.pos)
        self.text, self.pos = self.text[self.pos:] + chunk, 0
        return True

    def skip_space(self) -> str:
        """The next non-whitespace character ("" at the end), not consumed."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos:self.pos + 1]

    def decode(self, decoder: json.JSONDecoder) -> Any:
        """The JSON value at `pos` (consumed); a `DataError` with the line for a malformed one."""
        while True:
            try:
                value, self.pos = decoder.raw_decode(self.text, self.pos)
                return value
            except json.JSONDecodeError as err:
                # Refill only where the value may just be cut off by the window's end.
                cut = err.msg.startswith("Unterminated string") or err.pos >= len(self.text) - 16
                if not (cut and self.more()):
                    raise self.error(err.msg, err.pos) from None

    def error(self, msg: str, at: int) -> DataError:
        return DataError(f"{self.path}:{self.lines + self.text.count(chr(10), 0, at) + 1}: invalid JSON: {msg}")


def _refuse_one_object(head: str, f: io.TextIOBase, path: Path) -> None:
    """A `.json` file that starts with an object: a `DataError` when that object is all there is
    (or is malformed); otherwise the file is JSON lines and this returns."""
    buf = _Buffer(head, f, path)
    buf.skip_space()
    first = buf.decode(json.JSONDecoder())
    if not buf.skip_space():
        keys = ", ".join(list(first)[:5])
        raise DataError(f"{path}: expected a list of row objects, found an object (keys: {keys}); "
                        "write the rows as a JSON list or as JSON lines")


def _json_list(head: str, f: io.TextIOBase, path: Path) -> Iterator[dict[str, Any]]:
    """Row objects of a JSON list, decoded one at a time from a sliding window of the file."""
    decoder = json.JSONDecoder()
    buf = _Buffer(head, f, path)
    buf.skip_space()
    buf.pos += 1  # the opening bracket
    item = 0
    while True:
        nxt = buf.skip_space()
        if nxt == "]" and item == 0:
            break
        if item:
            if nxt == "]":
                break
            if nxt != ",":
                raise buf.error("Expecting ',' delimiter", buf.pos)
            buf.pos += 1
            buf.skip_space()
        if buf.pos >= len(buf.text):
            raise buf.error("Expecting value", buf.pos)
        row = buf.decode(decoder)
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {item} is a {type(row).__name__}, not an object")
        yield row
        item += 1
        if buf.pos > 1 << 20:  # drop what was decoded
            buf.lines += buf.text.count("\n", 0, buf.pos)
            buf.text, buf.pos = buf.text[buf.pos:], 0
    buf.pos += 1  # the closing bracket
    if buf.skip_space():
        raise buf.error("Extra data", buf.pos)


def _json_lines(lines: Iterable[str], path: Path) -> Iterator[dict[str, Any]]:
    """Parse JSON lines; only newlines split rows (not U+2028 and friends, as str.splitlines does)."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, found {type(row).__name__}")
        yield row


def _spill(rows: Iterator[dict[str, Any]], path: Path) -> FileRows:
    """Row objects -> parquet parts of `BATCH_ROWS` rows in a temporary folder, with one schema that
    holds them all (keys in first-seen order; absent keys null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = TempFolder()
    files: list[Path] = []
    schema = pa.schema([])
    total = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal schema, total
        table = _from_rows(batch, path)
        try:
            schema = pa.unify_schemas([schema, table.schema], promote_options="permissive")
        except (pa.ArrowException, TypeError):
            name = next(f.name for f in table.schema if f.name in schema.names
                        and _unifiable(schema.field(f.name), f) is False)
            kinds = sorted({_kind(schema.field(name).type), _kind(table.schema.field(name).type)})
            raise DataError(f"{path}: column {name!r} mixes value types ({', '.join(kinds)})") from None
        files.append(folder.path / f"part-{len(files):06d}.parquet")
        pq.write_table(table, files[-1])
        total += table.num_rows
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            flush()
    if batch:
        flush()
    return FileRows(tuple(files), schema, total, keep=folder)


def _unifiable(a: pa.Field, b: pa.Field) -> bool:
    import pyarrow as pa

    try:
        pa.unify_schemas([pa.schema([a]), pa.schema([b.with_name(a.name)])], promote_options="permissive")
        return True
    except (pa.ArrowException, TypeError):
        return False


def _kind(t: pa.DataType) -> str:
    """A Python name for an arrow type, as the mixed-types message names values."""
    import pyarrow as pa

    for test, name in ((pa.types.is_boolean, "bool"), (pa.types.is_integer, "int"), (pa.types.is_floating, "float"),
                       (pa.types.is_string, "str"), (pa.types.is_large_string, "str"), (pa.types.is_list, "list"),
                       (pa.types.is_struct, "dict")):
        if test(t):
            return name
    return str(t)


def _file_fingerprint(path: Path) -> str:
    """A cheap datasets fingerprint from the file's identity. Without one, datasets hashes the whole
    in-memory table by pickling it, which fails past 2 GiB in one column ("offset overflow") and
    costs seconds on large pools."""
    from curate.stages import fingerprint

    stat = path.stat()
    return fingerprint(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _from_rows(rows: list[dict[str, Any]], path: Path) -> pa.Table:
    """Rows -> a table with the union of keys (in first-seen order); absent keys become null."""
    import pyarrow as pa

    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {n: [row.get(n) for row in rows] for n in names}
    try:
        return pa.table({n: pa.array(v) for n, v in columns.items()}) if columns else pa.table({})
    except (pa.ArrowException, TypeError, ValueError) as err:
        for name, values in columns.items():
            try:
                pa.array(values)
            except (pa.ArrowException, TypeError, ValueError):
                kinds = sorted({type(v).__name__ for v in values if v is not None})
                raise DataError(
                    f"{path}: column {name!r} mixes value types ({', '.join(kinds)})"
                ) from None
        raise DataError(f"{path}: cannot build a table: {err}") from None


def _parquet_rows(path: Path) -> FileRows:
    """A parquet file read in place (a gzipped one is first decompressed to a temporary file)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = None
    target = path
    if path.suffix.lower() == ".gz":
        folder = TempFolder()
        target = folder.path / path.stem
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    try:
        meta = pq.ParquetFile(target)
        schema = meta.schema_arrow
        if schema.metadata and b"huggingface" not in schema.metadata:
            schema = schema.remove_metadata()
        return FileRows((target,), schema, meta.metadata.num_rows, keep=folder)
    except pa.ArrowException as err:
        raise DataError(f"{path}: cannot read parquet: {_one_line(err)}") from None


def _csv_rows(path: Path) -> FileRows:
    """A CSV file converted to one parquet file, a block at a time (pyarrow decompresses .csv.gz by
    itself; quoted values may span lines). Types are inferred from the first block; a later value
    that does not fit widens its column (null -> int64 -> double -> string) and the conversion
    starts again, so the types are those of a whole-file read."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    folder = TempFolder()
    target = folder.path / "rows.parquet"
    widened: dict[str, pa.DataType] = {}
    while True:
        total = 0
        try:
            reader = pcsv.open_csv(path, parse_options=pcsv.ParseOptions(newlines_in_values=True),
                                   convert_options=pcsv.ConvertOptions(column_types=widened))
            with pq.ParquetWriter(target, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    total += batch.num_rows
            return FileRows((target,), reader.schema, total, keep=folder)
        except pa.ArrowInvalid as err:
            match = _CSV_CONVERSION.search(str(err))
            if match is None:
                raise DataError(f"{path}: cannot read csv: {_one_line(err)}") from None
            name = reader.schema.names[int(match.group(1))]
            if widened.get(name) == pa.string():
                raise DataError(f"{path}: cannot read csv: {_one_line(err)}") from None
            widened[name] = {"null": pa.int64(), "int64": pa.float64()}.get(match.group(2), pa.string())
        except pa.ArrowException as err:
            raise DataError(f"{path}: cannot read csv: {_one_line(err)}") from None


def _read_folder(path: Path, split: str | None) -> tuple[datasets.Dataset, str | None]:
    import datasets

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot load the save_to_disk folder: {_one_line(err)}") from None
        if isinstance(loaded, datasets.DatasetDict):
            name = pick_split(list(loaded), split, str(path))
            return loaded[name], name
        if split is not None and split != str(loaded.split or split):
            raise UsageError(f"--split {split}: {path} holds a single split ({loaded.split})")
        return loaded, split or (str(loaded.split) if loaded.split else None)
    # A folder of data files: the same loader as for the Hub (split names from file names).
    return _read_hub(str(path), split)


def _read_hub(name: str, split: str | None) -> tuple[datasets.Dataset, str | None]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as err:  # network, missing repo, unknown split: one line for the user
        raise DataError(f"{name}: not a local path, and datasets.load_dataset failed: {_one_line(err)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = pick_split(list(loaded), split, name)
        return loaded[split], split
    return loaded, split


def pick_split(splits: list[str], split: str | None, where: str) -> str:
    """The requested split, else `train`, else the only one; a `DataError` lists the choices."""
    if split is not None:
        if split not in splits:
            raise DataError(f"{where}: no split {split!r} (splits: {', '.join(splits)})")
        return split
    if "train" in splits:
        return "train"
    if len(splits) == 1:
        return splits[0]
    raise DataError(f"{where}: several splits ({', '.join(splits)}); pass --split")


def _data_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return FORMATS.get(suffixes[-1]) if suffixes else None



def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
