"""Writing pools: the input's own schema (or a TRL `messages` column) plus curate_* columns,
annotations joined by `curate_id`, a manifest and a dataset card, all written atomically.

Layout (`fmt`, inferred from the suffix of `out` when None: `.parquet`, `.jsonl`, else a folder):

    disk     out/                       `save_to_disk` folder, with out/manifest.jsonl, out/README.md
    parquet  out = name.parquet         plus name.manifest.jsonl and name.README.md beside it
    jsonl    out = name.jsonl           plus name.manifest.jsonl and name.README.md beside it

Each file is written under a temporary name in the same folder and renamed into place; a folder
is built whole under a temporary name, then swapped in. An existing output is replaced.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from curate.data.card import render_card
from curate.data.example import Example
from curate.data.manifest import Manifest, ManifestLike, check_manifest
from curate.data.pool import Pool
from curate.errors import DataError, UsageError
from curate.stages import atomic_write

if TYPE_CHECKING:
    import datasets
    import polars as pl
    import pyarrow as pa

    from curate.data.rows import FileRows

FORMATS = ("disk", "parquet", "jsonl")
EMITS = ("input", "messages")
ROW_GROUP_ROWS = 1024  # parquet row group: ~20 MB of long reasoning traces
SHARD_BYTES = 500 * 2**20  # save_to_disk shard size, as datasets' default max_shard_size


def write_pool(
    pool: Pool,
    out: str | Path,
    *,
    annotations: pl.DataFrame | FileRows | None = None,
    fmt: str | None = None,
    emit: str = "input",
    manifest: ManifestLike = (),
    command: str | Sequence[str] | None = None,
    extra_card: str | Mapping[str, str] | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Write `pool` to `out` and return the path of the data (folder or file).

    The rows are written as they are read, a batch at a time (parquet row groups, `save_to_disk`
    shards of at most `SHARD_BYTES`, JSON lines), so memory holds one batch and the narrow columns.
    `annotations`: a polars frame with `curate_id` and `curate_*` columns, joined by id (rows it
    lacks get null; for a column the pool already has, such as `curate_domain`, they keep their
    value), or such columns on disk (`FileRows`, e.g. a tagger's spill), read a batch at a time
    when their ids are the pool's in order. An id not in the pool is a `DataError`.
    `emit`: "input" keeps every input column and row in order; "messages" writes a TRL-ready
    `messages` column (system prompt folded in) instead of the input columns.
    `manifest`: the rows removed, added or replaced on the way to this pool, with reasons.
    `command`: the command line for the card; `extra_card`: markdown, or {title: markdown}.
    `push_to_hub`: a Hub repo id; after the local write, the dataset, its card and manifest are
    uploaded there (private), with the token from the environment (`HF_TOKEN`), never logged.
    """
    import polars as pl

    out = Path(out)
    fmt = output_format(out, fmt)
    if emit not in EMITS:
        raise UsageError(f"emit={emit!r}: expected one of {', '.join(EMITS)}")
    ids = pool.columns(["curate_id"]).column("curate_id")
    entries = check_manifest(manifest, ids)
    joined = aligned_annotations(ids, annotations) if annotations is not None else None
    batches = _out_batches(pool, emit, joined)
    first = next(batches, None)
    if first is None:  # no rows: the schema from an empty batch
        first = _out_table(pool.rows.schema.empty_table(), [], emit,
                           None if joined is None else annotation_table(joined.slice(0, 0))
                           if isinstance(joined, pl.DataFrame) else joined.schema.empty_table())
    features = _features(first.schema, pool.features)
    schema = features.arrow_schema

    def rows() -> Iterator[pa.Table]:
        for batch in itertools.chain([first], batches):
            yield batch.cast(schema)

    data_path, manifest_path, card_path = output_paths(out, fmt)
    card = render_card(pool, entries=entries, fmt=fmt, emit=emit, manifest_name=manifest_path.name,
                       command=command, extra=extra_card)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "disk":
        if data_path.exists() and not data_path.is_dir():
            raise UsageError(f"{data_path} exists and is not a folder")

        def build(tmp: Path) -> None:
            _write_disk(rows(), features, tmp)
            _write_lines(entries, tmp / manifest_path.name)
            (tmp / card_path.name).write_text(card, encoding="utf-8")

        _atomic_folder(data_path, build)
    else:
        # Sidecars first: the data file appearing last marks the output complete.
        atomic_write(manifest_path, lambda tmp: _write_lines(entries, tmp))
        atomic_write(card_path, lambda tmp: tmp.write_text(card, encoding="utf-8"))
        if fmt == "parquet":
            # The schema's metadata carries the datasets features, as Dataset.to_parquet does.
            atomic_write(data_path, lambda tmp: _write_parquet(rows(), schema, tmp))
        else:
            atomic_write(data_path, lambda tmp: _write_jsonl(rows(), tmp))
    _push(data_path, fmt, features, push_to_hub, (card_path, manifest_path))
    return data_path


def _out_batches(pool: Pool, emit: str, joined: pl.DataFrame | FileRows | None) -> Iterator[pa.Table]:
    """The output's batches: the pool's (or its `messages`), annotations (`aligned_annotations`) joined."""
    import polars as pl

    from curate.data.rows import Rechunk

    offset = 0
    batches = ((b, []) for b in pool.batches()) if emit == "input" else pool.example_batches()
    on_disk = None if joined is None or isinstance(joined, pl.DataFrame) else Rechunk(joined.batches())
    for batch, examples in batches:
        n = batch.num_rows
        part = (None if joined is None else on_disk.take(n) if on_disk is not None
                else annotation_table(joined.slice(offset, n)))
        yield _out_table(batch, examples, emit, part)
        offset += n


def _out_table(batch: pa.Table, examples: list[Example], emit: str, joined: pa.Table | None) -> pa.Table:
    if emit == "messages":
        batch = messages_table(batch, examples)
    return batch if joined is None else set_columns(batch, joined)


def messages_table(batch: pa.Table, examples: list[Example]) -> pa.Table:
    """A batch of the pool as a `messages` column (system prompt folded in, from its `examples`)
    plus its curate_* columns."""
    import pyarrow as pa

    messages = [list(example.messages) for example in examples]
    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    curate = [name for name in batch.column_names if name.startswith("curate_")]
    return pa.table(
        {"messages": pa.array(messages, type=message_type), **{n: batch.column(n) for n in curate}}
    )


def _write_parquet(batches: Iterator[pa.Table], schema: pa.Schema, path: Path) -> None:
    """Row groups of `ROW_GROUP_ROWS` rows, whatever the sizes of the batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, schema) as writer:
        pending, rows = [], 0
        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                pending, rows = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending))


def _write_disk(batches: Iterator[pa.Table], features: datasets.Features, folder: Path) -> None:
    """A `save_to_disk` folder written shard by shard (`SHARD_BYTES` each at most, give or take a
    batch), with the `state.json` and `dataset_info.json` that `datasets.load_from_disk` reads."""
    from dataclasses import asdict

    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.fingerprint import generate_random_fingerprint

    folder.mkdir(parents=True)
    shards: list[Path] = []
    writer, size = None, 0
    for batch in batches:
        if writer is None:
            shards.append(folder / f".shard-{len(shards):05d}.arrow")
            writer, size = ArrowWriter(features=features, path=str(shards[-1])), 0
        writer.write_table(batch)
        size += batch.nbytes
        if size >= SHARD_BYTES:
            writer.finalize()
            writer.close()
            writer = None
    if writer is None and not shards:  # no rows: one empty shard, as save_to_disk writes
        shards.append(folder / ".shard-00000.arrow")
        writer = ArrowWriter(features=features, path=str(shards[-1]))
    if writer is not None:
        writer.finalize()
        writer.close()
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for shard, name in zip(shards, names, strict=True):
        shard.rename(folder / name)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": generate_random_fingerprint(),
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    info = asdict(datasets.DatasetInfo(features=features))
    (folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2),
                                              encoding="utf-8")


def _push(data_path: Path, fmt: str, features: datasets.Features, repo_id: str | None,
          sidecars: Sequence[Path]) -> None:
    """Upload the written dataset and its sidecar files (card as README.md, manifest) to a Hub repo."""
    if not repo_id:
        return
    import datasets
    from huggingface_hub import HfApi

    try:
        if fmt == "disk":
            dataset = datasets.load_from_disk(str(data_path))
        else:
            reader = datasets.Dataset.from_parquet if fmt == "parquet" else datasets.Dataset.from_json
            dataset = reader(str(data_path), features=features)
        dataset.push_to_hub(repo_id, private=True)
        api = HfApi()
        for path in sidecars:
            target = "README.md" if path.name.endswith("README.md") else "manifest.jsonl"
            api.upload_file(path_or_fileobj=str(path), path_in_repo=target, repo_id=repo_id, repo_type="dataset")
    except Exception as e:  # network, auth, bad repo id: one line, the local output is kept
        raise DataError(f"--push-to-hub {repo_id}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                        "(the local output was written)") from e


def output_format(out: Path, fmt: str | None) -> str:
    """disk/parquet/jsonl from `fmt` or, when None, from the suffix of `out` (none: disk)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        return fmt
    suffix = out.suffix.lower()
    if suffix in (".parquet", ".jsonl"):
        return suffix[1:]
    if suffix:
        raise UsageError(
            f"{out}: cannot tell the output format from {suffix!r}; use .parquet, .jsonl or a "
            "folder name without a suffix (save_to_disk)"
        )
    return "disk"


def output_paths(out: Path, fmt: str) -> tuple[Path, Path, Path]:
    """(data, manifest, card) paths for an output at `out` in format `fmt`."""
    if fmt == "disk":
        return out, out / "manifest.jsonl", out / "README.md"
    stem = out.name[: -len(f".{fmt}")] if out.name.lower().endswith(f".{fmt}") else out.name
    return out, out.with_name(f"{stem}.manifest.jsonl"), out.with_name(f"{stem}.README.md")


def aligned_annotations(ids: pa.ChunkedArray, annotations: pl.DataFrame | FileRows) -> pl.DataFrame | FileRows:
    """The annotation columns (all but `curate_id`) in the order of `ids`, null where an id has
    none: a polars frame (`annotation_table` makes Arrow of a slice, a batch at a time), or, for
    annotations on disk whose ids are `ids` in order, the same `FileRows` without `curate_id`
    (read a batch at a time; other ones are read whole, narrow as they are, and joined).
    Raises `DataError` for a repeated or unknown id, or a column not named curate_*."""
    import polars as pl
    import pyarrow as pa

    from curate.data.rows import FileRows, read_columns

    if isinstance(annotations, FileRows):
        names = annotations.schema.names
    elif isinstance(annotations, pl.DataFrame):
        names = annotations.columns
    else:
        raise UsageError(f"annotations must be a polars DataFrame or FileRows, not {type(annotations).__name__}")
    if "curate_id" not in names:
        raise DataError("annotations have no curate_id column")
    bad = [c for c in names if not c.startswith("curate_")]
    if bad:
        raise DataError(f"annotation columns must be named curate_*: {', '.join(bad)}")
    if isinstance(annotations, FileRows):
        if _same_ids(ids, (b.column("curate_id") for b in annotations.batches(["curate_id"]))):
            schema = pa.schema([f for f in annotations.schema if f.name != "curate_id"])
            return dataclasses.replace(annotations, schema=schema)
        annotations = pl.from_arrow(read_columns(annotations, names))
    keys = annotations["curate_id"].cast(pl.String)
    if _same_ids(ids, (keys.slice(i, 1 << 16).to_arrow() for i in range(0, len(keys), 1 << 16))):
        return annotations.drop("curate_id")  # a tagger's rows, in pool order (ids are unique): no join
    pool_ids = pl.Series("curate_id", ids).cast(pl.String)
    if keys.is_duplicated().any():
        raise DataError(f"annotations repeat curate_id {keys.filter(keys.is_duplicated())[0]!r}")
    left = pool_ids.to_frame().with_row_index("__row")
    unknown = keys.filter(~keys.is_in(left["curate_id"].implode()))
    if len(unknown):
        raise DataError(
            f"annotations have {len(unknown)} curate_id(s) not in the pool, e.g. {unknown.sort()[0]!r}"
        )
    joined = left.join(annotations.with_columns(keys), on="curate_id", how="left").sort("__row")
    return joined.drop("__row", "curate_id")


def _same_ids(ids: pa.ChunkedArray, keys: Iterator[pa.Array | pa.ChunkedArray]) -> bool:
    """Whether the chunks `keys`, in turn, are `ids` in order (no whole copy of either)."""
    import pyarrow as pa

    offset = 0
    for chunk in keys:
        n = len(chunk)
        if offset + n > len(ids) or not ids.slice(offset, n).cast(pa.string()).equals(
                pa.chunked_array([chunk.cast(pa.string())])):
            return False
        offset += n
    return offset == len(ids)


def annotation_table(frame: pl.DataFrame) -> pa.Table:
    """Rows of an `aligned_annotations` frame as an Arrow table, strings (categoricals included) as
    `string` (as a pool's own columns are)."""
    import polars as pl
    import pyarrow as pa

    columns = {}
    for name in frame.columns:
        column = frame[name].to_arrow(compat_level=pl.CompatLevel.oldest())
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        columns[name] = column
    return pa.table(columns) if columns else pa.table({"_": pa.nulls(len(frame))}).drop_columns(["_"])


def set_columns(table: pa.Table, joined: pa.Table) -> pa.Table:
    """`table` with `joined`'s columns (same rows): a column `table` already has keeps its values and
    takes `joined`'s where it has none (e.g. curate_domain from a tagger); others are appended."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in joined.column_names:
        column = joined.column(name)
        if name in table.column_names:
            old = table.column(name)
            try:
                column = pc.coalesce(column.cast(old.type), old)
            except (pa.ArrowException, TypeError) as err:
                raise DataError(f"annotation column {name!r} does not fit the pool's: {err}") from None
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table


def _features(schema: pa.Schema, own: datasets.Features) -> datasets.Features:
    """Features for `schema`, keeping the pool's own (class labels, ...) where a column's arrow type
    is unchanged; other columns get features inferred from their arrow type."""
    import datasets

    merged = datasets.Features.from_arrow_schema(schema.remove_metadata())
    for name in schema.names:
        feature = own.get(name)
        if feature is not None and datasets.Features({name: feature}).type.field(name).type == schema.field(name).type:
            merged[name] = feature
    return merged


def _write_lines(manifest: Manifest, path: Path) -> None:
    """The manifest's JSON lines, written a batch of entries at a time."""
    with open(path, "w", encoding="utf-8") as f:
        for text in manifest.lines():
            f.write(text)


def _write_jsonl(batches: Iterator[pa.Table], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for batch in batches:
            for row in batch.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _atomic_folder(path: Path, build: Callable[[Path], object]) -> None:
    tmp = _temp_name(path)
    old = _temp_name(path)
    try:
        build(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def side_path(pool_path: str | Path, name: str, suffix: str = ".parquet") -> Path:
    """Where side file `name` (tokens, sentences, a figure) of the pool at `pool_path` goes, and
    where `curate report` finds it: inside a folder, or `<stem>.<name><suffix>` beside a file."""
    path = Path(pool_path)
    if path.is_dir() or not path.suffix:
        return path / f"{name}{suffix}"
    return path.with_name(f"{path.name.split('.')[0]}.{name}{suffix}")
