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

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from curate.data.card import render_card
from curate.data.manifest import ManifestEntry, check_manifest, manifest_lines
from curate.data.pool import Pool
from curate.errors import DataError, UsageError
from curate.stages import atomic_write

if TYPE_CHECKING:
    import datasets
    import polars as pl
    import pyarrow as pa

FORMATS = ("disk", "parquet", "jsonl")
EMITS = ("input", "messages")


def write_pool(
    pool: Pool,
    out: str | Path,
    *,
    annotations: pl.DataFrame | None = None,
    fmt: str | None = None,
    emit: str = "input",
    manifest: Iterable[ManifestEntry] = (),
    command: str | Sequence[str] | None = None,
    extra_card: str | Mapping[str, str] | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Write `pool` to `out` and return the path of the data (folder or file).

    `annotations`: a polars frame with `curate_id` and `curate_*` columns, joined by id (rows it
    lacks get null; for a column the pool already has, such as `curate_domain`, they keep their
    value). An id not in the pool is a `DataError`.
    `emit`: "input" keeps every input column and row in order; "messages" writes a TRL-ready
    `messages` column (system prompt folded in) instead of the input columns.
    `manifest`: the rows removed, added or replaced on the way to this pool, with reasons.
    `command`: the command line for the card; `extra_card`: markdown, or {title: markdown}.
    `push_to_hub`: a Hub repo id; after the local write, the dataset, its card and manifest are
    uploaded there (private), with the token from the environment (`HF_TOKEN`), never logged.
    """
    import pyarrow.parquet as pq

    out = Path(out)
    fmt = output_format(out, fmt)
    if emit not in EMITS:
        raise UsageError(f"emit={emit!r}: expected one of {', '.join(EMITS)}")
    table = pool_table(pool, emit)
    entries = check_manifest(manifest, set(table.column("curate_id").to_pylist()))
    if annotations is not None:
        table = join_annotations(table, annotations)
    dataset = _with_features(table, pool.dataset.features)

    data_path, manifest_path, card_path = output_paths(out, fmt)
    card = render_card(
        pool.with_dataset(dataset) if emit == "input" else pool, entries=entries, fmt=fmt,
        emit=emit, manifest_name=manifest_path.name, command=command, extra=extra_card,
    )
    lines = manifest_lines(entries)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "disk":
        if data_path.exists() and not data_path.is_dir():
            raise UsageError(f"{data_path} exists and is not a folder")

        def build(tmp: Path) -> None:
            dataset.save_to_disk(str(tmp))
            (tmp / manifest_path.name).write_text(lines, encoding="utf-8")
            (tmp / card_path.name).write_text(card, encoding="utf-8")

        _atomic_folder(data_path, build)
        _push(dataset, push_to_hub, {card_path.name: card, manifest_path.name: lines})
        return data_path
    # Sidecars first: the data file appearing last marks the output complete.
    atomic_write(manifest_path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    atomic_write(card_path, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    if fmt == "parquet":
        # The table's schema metadata carries the datasets features, as Dataset.to_parquet does.
        atomic_write(data_path, lambda tmp: pq.write_table(dataset.data.table, tmp))
    else:
        atomic_write(data_path, lambda tmp: _write_jsonl(dataset.data.table, tmp))
    _push(dataset, push_to_hub, {card_path.name: card, manifest_path.name: lines})
    return data_path


def _push(dataset: datasets.Dataset, repo_id: str | None, sidecars: Mapping[str, str]) -> None:
    """Upload the dataset and its sidecar files (card as README.md, manifest) to a Hub repo."""
    if not repo_id:
        return
    from huggingface_hub import HfApi

    try:
        dataset.push_to_hub(repo_id, private=True)
        api = HfApi()
        for name, text in sidecars.items():
            target = "README.md" if name.endswith("README.md") else "manifest.jsonl"
            api.upload_file(path_or_fileobj=text.encode(), path_in_repo=target, repo_id=repo_id,
                            repo_type="dataset")
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


def pool_table(pool: Pool, emit: str) -> pa.Table:
    """The rows to write as an arrow table: all pool columns, or `messages` + curate_* columns."""
    import pyarrow as pa

    table = pool.dataset.with_format("arrow")[:]
    if emit == "input":
        return table
    messages = [list(example.messages) for example in pool.examples()]
    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    curate = [name for name in table.column_names if name.startswith("curate_")]
    return pa.table(
        {"messages": pa.array(messages, type=message_type), **{n: table.column(n) for n in curate}}
    )


def join_annotations(table: pa.Table, annotations: pl.DataFrame) -> pa.Table:
    """Join a `curate_id`-keyed polars frame onto `table` by id, in `table`'s row order."""
    import polars as pl
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(annotations, pl.DataFrame):
        raise UsageError(f"annotations must be a polars DataFrame, not {type(annotations).__name__}")
    if "curate_id" not in annotations.columns:
        raise DataError("annotations have no curate_id column")
    bad = [c for c in annotations.columns if not c.startswith("curate_")]
    if bad:
        raise DataError(f"annotation columns must be named curate_*: {', '.join(bad)}")
    ids = annotations["curate_id"].cast(pl.String)
    if ids.is_duplicated().any():
        raise DataError(f"annotations repeat curate_id {ids.filter(ids.is_duplicated())[0]!r}")
    pool_ids = table.column("curate_id").to_pylist()
    unknown = set(ids.to_list()) - set(pool_ids)
    if unknown:
        raise DataError(
            f"annotations have {len(unknown)} curate_id(s) not in the pool, e.g. {sorted(unknown)[0]!r}"
        )
    left = pl.DataFrame({"curate_id": pool_ids, "__row": range(len(pool_ids))},
                        schema={"curate_id": pl.String, "__row": pl.Int64})
    joined = left.join(annotations.with_columns(ids), on="curate_id", how="left").sort("__row")
    for name in annotations.columns:
        if name == "curate_id":
            continue
        column = joined[name].to_arrow(compat_level=pl.CompatLevel.oldest())
        if pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        if name in table.column_names:  # e.g. curate_domain from a tagger: fill, keep the rest
            old = table.column(name)
            try:
                column = pc.coalesce(column.cast(old.type), old)
            except (pa.ArrowException, TypeError) as err:
                raise DataError(f"annotation column {name!r} does not fit the pool's: {err}") from None
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table


def _with_features(table: pa.Table, features: datasets.Features) -> datasets.Dataset:
    """A Dataset over `table`, keeping the pool's own features (class labels, ...) where a column's
    arrow type is unchanged; other columns get features inferred from their arrow type."""
    import datasets

    table = table.replace_schema_metadata(None)  # stale feature metadata from the pool's table
    merged = datasets.Features.from_arrow_schema(table.schema)
    for name in table.column_names:
        own = features.get(name)
        if own is not None and datasets.Features({name: own}).type.field(name).type == table.schema.field(name).type:
            merged[name] = own
    # A random fingerprint: this dataset is written out at once, and datasets would otherwise hash
    # the whole table by pickling it (slow, and it fails past 2 GiB in one column).
    from datasets.fingerprint import generate_random_fingerprint

    return datasets.Dataset(table, info=datasets.DatasetInfo(features=merged), fingerprint=generate_random_fingerprint())


def _write_jsonl(table: pa.Table, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for batch in table.to_batches(max_chunksize=1000):
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
