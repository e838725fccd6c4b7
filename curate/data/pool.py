"""`Pool`: a loaded dataset in its own schema, plus the three columns curate adds to every row.

`curate_id` depends on the row, never on the name of the file it was read from, so the same row
gets the same id wherever it is loaded and the outputs of any two commands join on it:
- a row that already has a `curate_id` (a pool curate wrote) keeps it;
- a row with its own id (`id`, `task_id`, `unique_id`, `problem_id` or `--map id=COLUMN`) gets
  `f"{column}:{value}"`, e.g. `task_id:839`;
- any other row gets `f"sha:{h}"`, h = 16 hex chars of sha256 over its canonical messages (system
  prompt included), so identical rows get the same key in any file;
- exact duplicates within one pool (the same key twice) get `#2`, `#3`, ... in row order.
With an explicit `source` (the API's `source=`, e.g. a query set's name) the key is qualified by it
instead, `f"{source}:{key}"` with key the own id or the hash, to keep sets apart on purpose.
`curate_domain` and `curate_domain_source` follow `curate.data.domain`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from curate.data.canonical import content_hash, row_messages, split_response
from curate.data.domain import DOMAIN_SOURCES, DOMAINS, assign_domain
from curate.data.example import Example
from curate.data.rows import ColumnRows, DatasetRows, Rows, TakeRows, read_columns
from curate.data.shapes import Shape
from curate.errors import DataError

if TYPE_CHECKING:
    import datasets
    import numpy as np
    import pyarrow as pa

CURATE_COLUMNS = ("curate_id", "curate_domain", "curate_domain_source")


@dataclass(frozen=True)
class Pool:
    """A pool of training rows.

    `rows` (`curate.data.rows`) holds the input's own columns (`input_columns`, in input order)
    followed by `curate_id`, `curate_domain`, `curate_domain_source` (where the input already had
    them, as in a pool curate wrote, they keep their places). A pool read from a file keeps its
    text there: `batches`, `columns` and `examples` stream it; `dataset` reads it whole. `origin`
    is what was loaded (path or Hub id) and `split` the split taken from it, both recorded in
    dataset cards. `source`: the explicit id qualifier, "" when ids come from the rows alone.
    """

    rows: Rows
    shape: Shape
    source: str
    origin: str = ""
    split: str | None = None
    input_columns: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.rows.num_rows

    @property
    def column_names(self) -> list[str]:
        return list(self.rows.schema.names)

    @cached_property
    def dataset(self) -> datasets.Dataset:
        """Every row as one `datasets.Dataset`, read whole into memory unless the rows already are a
        dataset; streaming callers use `batches`, `columns` and `examples` instead."""
        if isinstance(self.rows, DatasetRows):
            return self.rows.dataset
        import datasets

        table = read_columns(self.rows, self.column_names)
        return datasets.Dataset(table.replace_schema_metadata(None), info=datasets.DatasetInfo(features=self.features))

    @property
    def features(self) -> datasets.Features:
        """The rows' datasets features (class labels and the like survive a round trip)."""
        if isinstance(self.rows, DatasetRows):
            return self.rows.dataset.features
        import datasets

        return datasets.Features.from_arrow_schema(self.rows.schema)

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """The rows in order, `BATCH_ROWS` at a time, restricted to `columns` (default all)."""
        return self.rows.batches(columns)

    def columns(self, names: Sequence[str]) -> pa.Table:
        """Whole (narrow) columns, in row order: ids, domains, scores; never the text."""
        return read_columns(self.rows, names)

    def examples(self) -> Iterator[Example]:
        """The rows in order as canonical `Example`s (`id == curate_id`), read a batch at a time."""
        for _, examples in self.example_batches():
            yield from examples

    def example_batches(self) -> Iterator[tuple[pa.Table, list[Example]]]:
        """Each batch of rows (all columns) with its rows as `Example`s."""
        start = 0
        for batch in self.batches():
            examples = []
            for index, row in enumerate(batch.to_pylist(), start=start):
                messages = _messages(row, self.shape, index, self.origin)
                thought, solution = split_response(messages[-1]["content"])
                examples.append(Example(id=row["curate_id"], messages=tuple(messages), domain=row.get("curate_domain"),
                                        thought=thought, solution=solution))
            start += batch.num_rows
            yield batch, examples

    @property
    def name(self) -> str:
        """A short name for messages: the qualifier, else the loaded file or folder's name."""
        return self.source or (self.origin.rstrip("/").rsplit("/", 1)[-1] if self.origin else "pool")

    def with_dataset(self, dataset: datasets.Dataset) -> Pool:
        """The same pool (shape, source, origin) over other rows, e.g. after a filter."""
        return self.with_rows(DatasetRows(dataset))

    def with_rows(self, rows: Rows) -> Pool:
        """The same pool (shape, source, origin) over other rows."""
        return replace(self, rows=rows)

    def take(self, positions: Sequence[int]) -> Pool:
        """The rows at `positions` (non-decreasing: a repeated position repeats the row), streamed
        from where they are."""
        import numpy as np

        index = np.asarray(positions, dtype=np.int64)
        if len(index) and (np.any(np.diff(index) < 0) or index[0] < 0 or index[-1] >= len(self)):
            raise ValueError("take: positions must be non-decreasing and within the pool")
        return self.with_rows(TakeRows(self.rows, index))


class ExampleSequence(Sequence[Example]):
    """A pool's examples as a read-only sequence that holds one batch of rows in memory: in-order
    access (iteration, increasing indices, consecutive slices) reads the pool once; an index
    before the last one read starts the read again from the top."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._restart()

    def _restart(self) -> None:
        self._it, self._next, self._current = self.pool.examples(), 0, None

    def __len__(self) -> int:
        return len(self.pool)

    def __iter__(self) -> Iterator[Example]:
        return self.pool.examples()

    def __getitem__(self, key):  # int -> Example, slice -> list[Example]
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self)))]
        index = key + len(self) if key < 0 else key
        if not 0 <= index < len(self):
            raise IndexError(f"example {key} of {len(self)}")
        if index < self._next - 1 or self._current is None:
            self._restart()
        while self._next <= index:
            self._current = next(self._it)
            self._next += 1
        return self._current


def build_pool(
    rows: Rows | datasets.Dataset, shape: Shape, source: str | None = None, origin: str = "",
    split: str | None = None,
) -> Pool:
    """Add `curate_id`, `curate_domain`, `curate_domain_source` to `rows` and wrap them.

    `rows`: a `Rows` (`curate.data.rows`) or a `datasets.Dataset`. `source`: an explicit id
    qualifier (see the module doc); None = ids from the rows alone. The rows are read a batch at a
    time; a pool curate wrote (every row with a unique id and a known domain) is not read beyond
    those three columns. Raises `DataError` naming the row index (0-based) for a row that has no
    assistant response.
    """
    if source is not None and not source:
        raise DataError("the source qualifier of ids must not be empty")
    if not isinstance(rows, (DatasetRows, ColumnRows)) and hasattr(rows, "features"):
        rows = DatasetRows(rows)
    columns = list(rows.schema.names)
    input_columns = tuple(c for c in columns if c not in CURATE_COLUMNS)
    if _written_by_curate(rows):  # the three columns are read in place
        return Pool(rows, shape, source or "", origin, split, input_columns)
    keys, domains, sources = _derive(rows, shape, source, origin)
    if isinstance(rows, DatasetRows):
        return _with_dataset_columns(rows.dataset, keys, domains, sources, shape, source, origin, split, input_columns)
    import pyarrow as pa

    added = pa.table({"curate_id": pa.array(unique_ids(keys), pa.string()),
                      "curate_domain": pa.array(domains, pa.string()),
                      "curate_domain_source": pa.array(sources, pa.string())})
    return Pool(ColumnRows(rows, added), shape, source or "", origin, split, input_columns)


def _written_by_curate(rows: Rows) -> bool:
    """Whether every row already has a unique id and a known domain (a pool curate wrote): then
    the three columns stay as they are. Reads those columns a batch at a time and keeps only a
    64-bit hash of each id, without Python objects per row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not set(CURATE_COLUMNS) <= set(rows.schema.names):
        return False
    if any(not pa.types.is_string(rows.schema.field(c).type) for c in CURATE_COLUMNS):
        return False
    known = pa.array([d for d in DOMAINS if d != "unknown"])
    origins = pa.array(list(DOMAIN_SOURCES))
    hashes = []
    for batch in rows.batches(CURATE_COLUMNS):
        ids, domains, sources = (batch.column(c) for c in CURATE_COLUMNS)
        if (ids.null_count or pc.any(pc.equal(ids, "")).as_py()
                or not pc.all(pc.fill_null(pc.is_in(domains, value_set=known), False)).as_py()
                or not pc.all(pc.fill_null(pc.is_in(sources, value_set=origins), False)).as_py()):
            return False
        hashes.append(string_hashes(ids))
    return _distinct_by_hash(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
                             lambda: (b.column("curate_id") for b in rows.batches(["curate_id"])))


def string_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string of `values` (polars' hash, seed 0), as a uint64 array."""
    import polars as pl

    return pl.Series(values).hash(seed=0).to_numpy()


def all_distinct(values: pa.ChunkedArray) -> bool:
    """Whether no string of `values` occurs twice. Sorts 64-bit hashes (8 bytes a row, where a
    hash table of the strings takes ~150) and compares the strings only where two hashes are equal."""
    return _distinct_by_hash(string_hashes(values), lambda: [values])


def _distinct_by_hash(hashes: np.ndarray, chunks: Callable[[], Iterable[pa.Array | pa.ChunkedArray]]) -> bool:
    """Whether the strings whose `hashes` (`string_hashes`, in order) these are are all distinct.
    `chunks` gives the strings again, in the same order, and is called only when two hashes are
    equal: then the strings of those hashes are compared."""
    import numpy as np
    import polars as pl

    ordered = np.sort(hashes)
    same = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(same):
        return True
    twins = pl.concat([pl.Series(c).filter(pl.Series(np.isin(string_hashes(c), same))) for c in chunks()])
    return twins.n_unique() == len(twins)


def _derive(rows: Rows, shape: Shape, source: str | None, origin: str) -> tuple[list[str], list[str], list[str]]:
    """Each row's id key, domain and domain source, from its messages (see the module doc)."""
    columns = list(rows.schema.names)
    own_ids = "curate_id" in columns
    own_domains = "curate_domain" in columns and "curate_domain_source" in columns
    id_column = shape.columns.get("id")
    user_domain = shape.columns.get("domain") if "domain" in shape.mapped else None
    if user_domain is None and "curate_domain" in columns and not own_domains:
        user_domain = "curate_domain"
    native_domain = shape.columns.get("domain") if "domain" not in shape.mapped else None

    keys: list[str] = []
    domains: list[str] = []
    sources: list[str] = []
    for index, row in enumerate(_rows(rows.batches())):
        messages = _messages(row, shape, index, origin)
        if own_ids and row.get("curate_id"):
            keys.append(str(row["curate_id"]))
        else:
            own = row.get(id_column) if id_column else None
            if own is not None and str(own) != "":
                keys.append(f"{source}:{own}" if source else f"{id_column}:{own}")
            else:
                keys.append(f"{source or 'sha'}:{content_hash(messages)}")
        if own_domains and _valid_domain(row):
            domain, origin_of = row["curate_domain"], row["curate_domain_source"]
        else:
            domain, origin_of = assign_domain(
                row, messages, user_column=user_domain, native_column=native_domain,
                implied=shape.implied_domain,
            )
        domains.append(domain)
        sources.append(origin_of)
    return keys, domains, sources


def _with_dataset_columns(dataset: datasets.Dataset, keys: list[str], domains: list[str], sources: list[str],
                          shape: Shape, source: str | None, origin: str, split: str | None,
                          input_columns: tuple[str, ...]) -> Pool:
    """The three columns added to a `datasets.Dataset` (in memory or memory-mapped)."""
    columns = dataset.column_names
    dataset = dataset.remove_columns([c for c in columns if c in CURATE_COLUMNS])
    # The new columns are a function of the rows (already fingerprinted), the shape and the source:
    # derive their fingerprints instead of letting datasets pickle 3 x N values to hash them.
    from curate.stages import fingerprint

    base = fingerprint(dataset._fingerprint, shape.name, dict(shape.columns), source, "ids-2")
    dataset = dataset.add_column("curate_id", unique_ids(keys), new_fingerprint=f"{base}-id")
    dataset = dataset.add_column("curate_domain", domains, new_fingerprint=f"{base}-domain")
    dataset = dataset.add_column("curate_domain_source", sources, new_fingerprint=f"{base}-source")
    # A pool curate wrote keeps its column order; otherwise the three go last.
    order = [*columns, *(c for c in CURATE_COLUMNS if c not in columns)]
    return Pool(DatasetRows(dataset.select_columns(order)), shape, source or "", origin, split, input_columns)


def unique_ids(keys: list[str]) -> list[str]:
    """Make ids unique in row order: the second `k` becomes `k#2`, the third `k#3`, ..."""
    seen: set[str] = set(keys)
    taken: set[str] = set()
    count: dict[str, int] = {}
    out = []
    for key in keys:
        if key not in taken:
            taken.add(key)
            out.append(key)
            continue
        n = count.get(key, 1)
        candidate = key
        while candidate in taken or (candidate != key and candidate in seen):
            n += 1
            candidate = f"{key}#{n}"
        count[key] = n
        taken.add(candidate)
        out.append(candidate)
    return out


def _valid_domain(row: dict[str, Any]) -> bool:
    return (
        row.get("curate_domain") in DOMAINS and row.get("curate_domain") != "unknown"
        and row.get("curate_domain_source") in DOMAIN_SOURCES
    )


def _messages(row: dict[str, Any], shape: Shape, index: int, origin: str) -> list[dict[str, str]]:
    try:
        return row_messages(row, shape)
    except DataError as err:
        raise DataError(f"{origin or 'pool'}: row {index}: {err}") from None


def _rows(batches: Iterable[pa.Table]) -> Iterator[dict[str, Any]]:
    """Rows as python dicts, converted a batch at a time (much faster than one row at a time)."""
    for batch in batches:
        yield from batch.to_pylist()
