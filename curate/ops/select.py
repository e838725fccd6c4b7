"""Ranking helpers shared by the operations: percentiles, z-scores, exact-count selection.

Conventions: a *score* is "higher = keep"; nulls rank last; ties are broken by `curate_id`
(ascending), so a selection never depends on row order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def round_half_up(x: float) -> int:
    """`round` without banker's rounding: 2.5 -> 3 (a count of rows to keep)."""
    return int(math.floor(x + 0.5))


def percentile(column: str) -> pl.Expr:
    """Rank percentile in [0, 1] of a column (average rank for ties; 0 = lowest, 1 = highest;
    a single non-null value gets 0.5; nulls stay null)."""
    import polars as pl

    c = pl.col(column).cast(pl.Float64).fill_nan(None)
    n = c.count()
    r = c.rank("average")
    return pl.when(n > 1).then((r - 1) / (n - 1)).otherwise(pl.lit(0.5)).alias(column)


def zscore(column: str) -> pl.Expr:
    """(x - mean) / std over the non-null values (std 0 -> all 0)."""
    import polars as pl

    c = pl.col(column).cast(pl.Float64).fill_nan(None)
    std = c.std()
    return pl.when(std > 0).then((c - c.mean()) / std).otherwise(c * 0.0).alias(column)


def order_rows(frame: pl.DataFrame, score: str, tie: str) -> pl.DataFrame:
    """`frame` sorted best first: score descending, nulls last, ties by `tie` ascending (curate_id,
    or a column ranking the ids); adds `rank` (1 = best)."""
    import polars as pl

    ordered = frame.sort([score, tie], descending=[True, False], nulls_last=True)
    return ordered.with_columns(pl.int_range(1, pl.len() + 1).alias("rank"))


def apportion(total: int, sizes: Mapping[str, int]) -> dict[str, int]:
    """Split `total` kept rows over groups in proportion to their `sizes` so the parts sum to
    `total` exactly (largest remainder: each group gets floor(total * n_g / N), then the rows
    left over go one each to the groups with the largest fractional parts, ties by group name)."""
    n = sum(sizes.values())
    if n == 0:
        return dict.fromkeys(sizes, 0)
    exact = {g: total * s / n for g, s in sizes.items()}
    parts = {g: math.floor(x) for g, x in exact.items()}
    left = total - sum(parts.values())
    for g in sorted(sizes, key=lambda g: (-(exact[g] - parts[g]), g))[:left]:
        parts[g] += 1
    return parts
