"""The numbers `curate inspect` shows: shape, size, domains, native and tagged difficulty, response
lengths.

Lengths are of the assistant response (the last message), in characters and, given a tokenizer, in
tokens without special tokens. Quantiles are nearest-rank: p50 of [1, 2, 3, 4] is 2.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curate.data.pool import Pool
from curate.errors import DataError, MissingDependencyError

QUANTILES = (10, 50, 90)
TAGGED_DIFFICULTY, TAGGED_SOURCE = "curate_difficulty", "curate_difficulty_source"  # written by `curate tag`
# Known difficulty scales in their natural order (APPS, TACO); numbers ("Level 3", 3) sort by value.
DIFFICULTY_ORDER = (
    "introductory", "interview", "competition",
    "easy", "medium", "medium_hard", "hard", "very_hard", "unknown_difficulty",
)


@dataclass
class PoolStats:
    """What a pool holds. Every field is JSON-ready (`as_dict`)."""

    origin: str
    split: str | None
    source: str
    shape: dict[str, Any]
    rows: int
    domains: list[dict[str, Any]]  # [{"domain", "source", "rows"}], most rows first
    difficulty: dict[str, Any] | None  # {"column", "values": {raw value: rows}} or None
    response_chars: dict[str, int]  # {"p10", "p50", "p90", "max"}
    response_tokens: dict[str, int] | None = None
    tokenizer: str | None = None
    # `curate tag`'s 1-10 difficulty, when the pool has it: {"column", "values": {level: rows},
    # "sources": {curate_difficulty_source: rows}} (sources empty without that column), else None
    tagged_difficulty: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool_stats(pool: Pool, tokenizer: str | Path | None = None) -> PoolStats:
    """Compute `PoolStats`; `tokenizer` is a local folder for `AutoTokenizer.from_pretrained`."""
    import polars as pl

    from curate.data.text import response_chars

    def tally(names: list[str]) -> list[tuple[tuple, int]]:
        """(values, rows) per distinct value of `names` in first-seen order, counted by polars (no
        Python object per row)."""
        frame = pl.from_arrow(pool.columns(names)).select(names)
        return [(row[:-1], row[-1]) for row in frame.group_by(names, maintain_order=True).len().iter_rows()]

    def counts(column: str) -> Counter:
        out: Counter = Counter()
        for (value,), n in tally([column]):
            out["(missing)" if value is None else str(value)] += n
        return out

    pairs = Counter(dict(tally(["curate_domain", "curate_domain_source"])))
    domains = [{"domain": d, "source": s, "rows": n} for (d, s), n in pairs.most_common()]
    difficulty = None
    column = pool.shape.columns.get("difficulty")
    if column is not None:
        difficulty = {"column": column, "values": dict(sorted(counts(column).items(), key=_difficulty_key))}
    tagged = None
    if TAGGED_DIFFICULTY in pool.column_names:
        sources = counts(TAGGED_SOURCE) if TAGGED_SOURCE in pool.column_names else Counter()
        tagged = {"column": TAGGED_DIFFICULTY,
                  "values": dict(sorted(counts(TAGGED_DIFFICULTY).items(), key=_difficulty_key)),
                  "sources": dict(sources.most_common())}
    tokens = None
    if tokenizer is not None:
        tokens = quantiles(token_lengths((example.response for example in pool.examples()), tokenizer))
    return PoolStats(
        origin=pool.origin, split=pool.split, source=pool.source, shape=pool.shape.as_dict(),
        rows=len(pool), domains=domains, difficulty=difficulty,
        response_chars=quantiles(response_chars(pool).to_numpy()), response_tokens=tokens,
        tokenizer=None if tokenizer is None else str(tokenizer), tagged_difficulty=tagged,
    )


def quantiles(values: Sequence[int]) -> dict[str, int]:
    """Nearest-rank p10/p50/p90 and the max of `values` (all 0 for no values)."""
    import numpy as np

    ordered = np.sort(np.asarray(values, dtype=np.int64))
    if not len(ordered):
        return {f"p{q}": 0 for q in QUANTILES} | {"max": 0}
    n = len(ordered)
    out = {f"p{q}": int(ordered[max(0, math.ceil(q / 100 * n) - 1)]) for q in QUANTILES}
    return out | {"max": int(ordered[-1])}


def token_lengths(texts: Iterable[str], tokenizer: str | Path, batch_size: int = 256) -> list[int]:
    """Token counts of `texts` (read `batch_size` at a time) under a local tokenizer, special
    tokens excluded."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise MissingDependencyError("counting tokens needs transformers: pip install transformers") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{tokenizer}: cannot load a tokenizer: {first}") from None
    lengths: list[int] = []
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, batch_size)):
        lengths.extend(len(x) for x in tok(chunk, add_special_tokens=False)["input_ids"])
    return lengths


def _difficulty_key(item: tuple[str, int]) -> tuple[int, float, str]:
    value = item[0]
    label = value.strip().lower().replace(" ", "_")
    if label in DIFFICULTY_ORDER:
        return 0, DIFFICULTY_ORDER.index(label), value
    number = re.search(r"-?\d+(\.\d+)?", value)
    if number:
        return 1, float(number.group()), value
    return 2, 0.0, value
