"""Reading pools: files (`.jsonl`, `.json`, `.parquet`, `.csv`, each optionally `.gz`), `save_to_disk`
folders, plain data folders and Hugging Face Hub ids.

JSON is parsed line by line with the json module, so a malformed line is reported as
`path:LINE: message`; parquet and CSV go through pyarrow, which keeps the file's own column types.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.data.pool import Pool, build_pool
from curate.data.shapes import resolve_shape
from curate.errors import DataError, UsageError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PEEK = 5  # rows shape detection looks at


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
    dataset, origin, split = read_dataset(path_or_hub_id, split)
    if len(dataset) == 0:
        raise DataError(f"{origin}: empty pool (0 rows)")
    peek = dataset.select(range(min(_PEEK, len(dataset)))).to_list()
    shape = resolve_shape(dataset.column_names, peek, mapping, where=origin)
    return build_pool(dataset, shape, source, origin, split)


def read_dataset(
    path_or_hub_id: str | Path, split: str | None = None
) -> tuple[datasets.Dataset, str, str | None]:
    """Read the rows as they are: (dataset, origin, split used)."""
    text = str(path_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        dataset, split = _read_folder(path, split)
        return dataset, text, split
    if path.exists():
        if split is not None:
            raise UsageError(f"--split {split}: {text} is a single file; --split is for folders and Hub ids")
        return read_file(path), text, None
    if _data_suffix(path) or not _HUB_ID.match(text) or text.startswith("."):
        raise DataError(f"{text}: no such file or directory")
    dataset, split = _read_hub(text, split)
    return dataset, text, split


def read_file(path: Path) -> datasets.Dataset:
    """One data file as a `datasets.Dataset`, columns and rows in file order."""
    import datasets

    fmt = _data_suffix(path)
    if fmt is None:
        raise DataError(
            f"{path}: unknown format {''.join(path.suffixes) or '(no suffix)'!r}; expected "
            ".jsonl, .json, .parquet or .csv (optionally .gz), a save_to_disk folder or a Hub id"
        )
    try:
        if fmt in ("jsonl", "json"):
            return _from_rows(_read_json(path, lines=fmt == "jsonl"), path)
        return datasets.Dataset(_read_arrow(path, fmt), fingerprint=_file_fingerprint(path))
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None


def _read_json(path: Path, lines: bool) -> list[dict[str, Any]]:
    if lines:
        with _open_text(path) as f:
            return _read_json_lines(f, path)
    with _open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg != "Extra data":
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        return _read_json_lines(io.StringIO(text), path)  # a .json file holding JSON lines
    if isinstance(data, dict):
        keys = ", ".join(list(data)[:5])
        raise DataError(
            f"{path}: expected a list of row objects, found an object (keys: {keys}); "
            "write the rows as a JSON list or as JSON lines"
        )
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of row objects, found {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i} is a {type(row).__name__}, not an object")
    return data


def _read_json_lines(lines: Iterable[str], path: Path) -> list[dict[str, Any]]:
    """Parse JSON lines; only newlines split rows (not U+2028 and friends, as str.splitlines does)."""
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, found {type(row).__name__}")
        rows.append(row)
    return rows


def _file_fingerprint(path: Path) -> str:
    """A cheap datasets fingerprint from the file's identity. Without one, datasets hashes the whole
    in-memory table by pickling it, which fails past 2 GiB in one column ("offset overflow") and
    costs seconds on large pools."""
    from curate.stages import fingerprint

    stat = path.stat()
    return fingerprint(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _from_rows(rows: list[dict[str, Any]], path: Path) -> datasets.Dataset:
    """Rows -> Dataset with the union of keys (in first-seen order); absent keys become null."""
    import datasets
    import pyarrow as pa

    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {n: [row.get(n) for row in rows] for n in names}
    try:
        table = pa.table({n: pa.array(v) for n, v in columns.items()}) if columns else pa.table({})
        return datasets.Dataset(table, fingerprint=_file_fingerprint(path))
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


def _read_arrow(path: Path, fmt: str) -> pa.Table:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as f:
                    return pq.read_table(io.BytesIO(f.read()))
            return pq.read_table(path)
        # pyarrow decompresses .csv.gz by itself; quoted values may span lines.
        options = pcsv.ParseOptions(newlines_in_values=True)
        return pcsv.read_csv(path, parse_options=options)
    except pa.ArrowException as err:
        raise DataError(f"{path}: cannot read {fmt}: {_one_line(err)}") from None


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
