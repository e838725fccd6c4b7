"""Aggregates of influence scores: mean, count and a 95% confidence interval per group.

    tables = influence_aggregates(frame)        # frame: a scored pool as a polars frame
    tables["domain"], tables["difficulty"], tables["behavior"]

The interval is the normal approximation mean +/- 1.96 * std / sqrt(n) (std with n - 1 degrees of
freedom); it assumes the group's scores are independent and that n is large enough for the mean
to be near-normal. Groups with n < 2 have no std, so their bounds are null.
"""

from __future__ import annotations

import polars as pl

from curate.errors import DataError

INFLUENCE_PREFIX = "curate_influence_"
BEHAVIOR_PREFIX = "curate_behavior_"
Z95 = 1.96


def influence_columns(frame: pl.DataFrame) -> list[str]:
    """The `curate_influence_<q>` columns of `frame`, without the `_split<k>` ones, in order."""
    return [c for c in frame.columns
            if c.startswith(INFLUENCE_PREFIX) and "_split" not in c[len(INFLUENCE_PREFIX):]]


def query_name(column: str) -> str:
    """`curate_influence_math` -> `math`."""
    return column[len(INFLUENCE_PREFIX):]


def difficulty_column(frame: pl.DataFrame) -> str | None:
    """`curate_difficulty` where tagged, else a native `level` column, else None."""
    for name in ("curate_difficulty", "level"):
        if name in frame.columns:
            return name
    return None


def behavior_columns(frame: pl.DataFrame) -> list[str]:
    """The `curate_behavior_<name>` count columns (the `_source` column is not a count)."""
    return [c for c in frame.columns
            if c.startswith(BEHAVIOR_PREFIX) and c != "curate_behavior_source" and frame[c].dtype.is_numeric()]


def _stats(frame: pl.DataFrame, keys: list[str], columns: list[str]) -> pl.DataFrame:
    """One row per (group, query): query, n, mean, std, ci_low, ci_high; nulls are left out."""
    parts = []
    for column in columns:
        score = pl.col(column)
        part = (
            frame.filter(score.is_not_null() & score.is_not_nan())
            .group_by(keys)
            .agg(n=score.count(), mean=score.mean(), std=score.std(ddof=1))
            .with_columns(pl.lit(query_name(column)).alias("query"))
        )
        parts.append(part)
    if not parts:
        return pl.DataFrame()
    stats = pl.concat(parts, how="vertical_relaxed")
    half = pl.when(pl.col("n") >= 2).then(Z95 * pl.col("std") / pl.col("n").cast(pl.Float64).sqrt())
    stats = stats.with_columns(
        ci_low=pl.col("mean") - half, ci_high=pl.col("mean") + half,
        std=pl.when(pl.col("n") >= 2).then(pl.col("std")),
    )
    return stats.select(["query", *keys, "n", "mean", "std", "ci_low", "ci_high"]).sort(["query", *keys],
                                                                                       nulls_last=True)


def influence_aggregates(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Mean influence with count and 95% CI, per query set, grouped three ways.

    `frame`: a scored pool (columns `curate_influence_<q>`, `curate_domain`; optionally
    `curate_difficulty` or `level`, and `curate_behavior_<name>` counts).
    Returns {"domain": ..., "difficulty": ..., "behavior": ...} (the last two only where the pool
    has those columns). Every table has `query` (q), the group key(s), `n`, `mean`, `std`,
    `ci_low`, `ci_high`; units are those of the scores (nats per unit of up-weighting).
    "domain" rows read as training domain -> query set (math -> code is the mean influence of the
    math examples on the code queries). "behavior" has `behavior` and `present` (count > 0).
    Raises `DataError` when the frame has no influence columns.
    """
    columns = influence_columns(frame)
    if not columns:
        raise DataError("no curate_influence_<q> columns: score the pool first (`curate score`)")
    tables: dict[str, pl.DataFrame] = {}
    if "curate_domain" in frame.columns:
        tables["domain"] = _stats(frame, ["curate_domain"], columns).rename({"curate_domain": "domain"})
    level = difficulty_column(frame)
    if level is not None:
        tables["difficulty"] = _stats(frame, [level], columns).rename({level: "difficulty"})
    behaviors = behavior_columns(frame)
    if behaviors:
        parts = []
        for column in behaviors:
            flagged = frame.with_columns((pl.col(column).fill_null(0) > 0).alias("present"))
            stats = _stats(flagged, ["present"], columns)
            parts.append(stats.with_columns(pl.lit(column[len(BEHAVIOR_PREFIX):]).alias("behavior")))
        tables["behavior"] = (pl.concat(parts)
                              .select(["query", "behavior", "present", "n", "mean", "std", "ci_low", "ci_high"])
                              .sort(["query", "behavior", "present"]))
    return tables
