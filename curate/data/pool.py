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

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from curate.data.canonical import content_hash, row_messages, split_response
from curate.data.domain import DOMAIN_SOURCES, DOMAINS, assign_domain
from curate.data.example import Example
from curate.data.shapes import Shape
from curate.errors import DataError

if TYPE_CHECKING:
    import datasets

CURATE_COLUMNS = ("curate_id", "curate_domain", "curate_domain_source")
_BATCH = 1000


@dataclass(frozen=True)
class Pool:
    """A pool of training rows.

    `dataset` holds the input's own columns (`input_columns`, in input order) followed by
    `curate_id`, `curate_domain`, `curate_domain_source` (where the input already had them, as
    in a pool curate wrote, they keep their places). `origin` is what was loaded (path or Hub
    id) and `split` the split taken from it, both recorded in dataset cards. `source`: the
    explicit id qualifier, "" when ids come from the rows alone (the default).
    """

    dataset: datasets.Dataset
    shape: Shape
    source: str
    origin: str = ""
    split: str | None = None
    input_columns: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.dataset)

    def examples(self) -> Iterator[Example]:
        """The rows in order as canonical `Example`s (`id == curate_id`)."""
        for index, row in enumerate(_rows(self.dataset)):
            messages = _messages(row, self.shape, index, self.origin)
            thought, solution = split_response(messages[-1]["content"])
            yield Example(
                id=row["curate_id"], messages=tuple(messages), domain=row.get("curate_domain"),
                thought=thought, solution=solution,
            )

    @property
    def name(self) -> str:
        """A short name for messages: the qualifier, else the loaded file or folder's name."""
        return self.source or (self.origin.rstrip("/").rsplit("/", 1)[-1] if self.origin else "pool")

    def with_dataset(self, dataset: datasets.Dataset) -> Pool:
        """The same pool (shape, source, origin) over other rows, e.g. after a filter."""
        return replace(self, dataset=dataset)


def build_pool(
    dataset: datasets.Dataset, shape: Shape, source: str | None = None, origin: str = "", split: str | None = None
) -> Pool:
    """Add `curate_id`, `curate_domain`, `curate_domain_source` to `dataset` and wrap it.

    `source`: an explicit id qualifier (see the module doc); None = ids from the rows alone.
    Raises `DataError` naming the row index (0-based) for a row that has no assistant response.
    """
    if source is not None and not source:
        raise DataError("the source qualifier of ids must not be empty")
    columns = dataset.column_names
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
    for index, row in enumerate(_rows(dataset)):
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

    input_columns = tuple(c for c in columns if c not in CURATE_COLUMNS)
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
    return Pool(dataset.select_columns(order), shape, source or "", origin, split, input_columns)


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


def _rows(dataset: datasets.Dataset) -> Iterator[dict[str, Any]]:
    """Rows as python dicts, read in batches (much faster than `dataset[i]` one at a time)."""
    for batch in dataset.iter(batch_size=_BATCH):
        names = list(batch)
        for values in zip(*(batch[n] for n in names), strict=True):
            yield dict(zip(names, values, strict=True))
