"""Tables behind `curate report`: influence aggregates with 95% CIs, ranking stability, audit arms.

    tables = influence_aggregates(frame)        # frame: a scored pool as a polars frame
    tables["domain"], tables["difficulty"], tables["type"], tables["source"],
    tables["domain_difficulty"], tables["behavior"]          # each only where the pool has the columns
    stability_table(stability_all(frame))       # one row per query set with split columns
    audit_tables(load_audit("audit_out/"))      # arms, comparisons, reference f_q

The interval is the normal approximation mean +/- 1.96 * std / sqrt(n) (std with n - 1 degrees of
freedom); it assumes the group's scores are independent and that n is large enough for the mean
to be near-normal. Groups with n < 2 have no std, so their bounds are null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from curate.data.columns import INFLUENCE_PREFIX, main_score_columns
from curate.errors import DataError

if TYPE_CHECKING:
    from curate.audit.counterfactual import AuditResult
    from curate.influence.stability import StabilityReport

BEHAVIOR_PREFIX = "curate_behavior_"
Z95 = 1.96
# Group key -> the columns that may hold it, first present wins: curate's own tags, then the
# input's native columns (MATH's `level` and `type`, MATH-500's `subject`, OpenThoughts' `source`).
GROUPINGS: dict[str, tuple[str, ...]] = {
    "domain": ("curate_domain",),
    "difficulty": ("curate_difficulty", "level"),
    "type": ("type", "subject"),
    "source": ("source",),
}
STATS = ["n", "mean", "std", "ci_low", "ci_high"]
# Charts show a group's interval only where it means something: groups with fewer examples are
# listed in the tables, left out of the charts.
MIN_GROUP = 10
# Bands of curate's 1-10 difficulty, with `curate flip`'s default thresholds: easy <= EASY_MAX,
# hard >= HARD_MIN, medium between.
EASY_MAX, HARD_MIN = 3, 5
BANDS = ("easy", "medium", "hard")
TIE_NATS = 1e-9  # audit differences smaller than this (float noise) name no arm as hurting more


def influence_columns(frame: pl.DataFrame) -> list[str]:
    """The `curate_influence_<q>` columns of `frame`, without the `_split<k>` and `_ck<i>` ones, in order."""
    return main_score_columns(frame.columns)


def query_name(column: str) -> str:
    """`curate_influence_math` -> `math`."""
    return column[len(INFLUENCE_PREFIX):]


def group_column(frame: pl.DataFrame, key: str) -> str | None:
    """The column of `frame` holding group `key` (see `GROUPINGS`); None when there is none.

    Nested columns (lists, structs) do not count: they are not group labels.
    """
    for name in GROUPINGS[key]:
        if name in frame.columns and not frame[name].dtype.is_nested():
            return name
    return None


def behavior_columns(frame: pl.DataFrame) -> list[str]:
    """The `curate_behavior_<name>` count columns (the `_source` column is not a count)."""
    return [c for c in frame.columns
            if c.startswith(BEHAVIOR_PREFIX) and c != "curate_behavior_source" and frame[c].dtype.is_numeric()]


def aggregate_by(frame: pl.DataFrame, by: Mapping[str, str], columns: list[str]) -> pl.DataFrame:
    """Mean influence per group and query set: one row per (query, group).

    `by`: output key -> the frame column grouped on (several keys = one group per combination).
    `columns`: the influence columns; null and NaN scores are left out. Returns `query`, the keys,
    n, mean, std, ci_low, ci_high (std and bounds null where n < 2), sorted by query then keys,
    null keys last.
    """
    keys = list(by)
    parts = []
    for column in columns:
        score = pl.col(column)
        parts.append(
            frame.filter(score.is_not_null() & score.is_not_nan())
            .select(*[pl.col(c).alias(k) for k, c in by.items()], score.alias("score"))
            .group_by(keys)
            .agg(n=pl.col("score").count(), mean=pl.col("score").mean(), std=pl.col("score").std(ddof=1))
            .with_columns(pl.lit(query_name(column)).alias("query"))
        )
    stats = pl.concat(parts, how="vertical_relaxed")
    half = pl.when(pl.col("n") >= 2).then(Z95 * pl.col("std") / pl.col("n").cast(pl.Float64).sqrt())
    stats = stats.with_columns(
        ci_low=pl.col("mean") - half, ci_high=pl.col("mean") + half,
        std=pl.when(pl.col("n") >= 2).then(pl.col("std")),
    )
    return stats.select(["query", *keys, *STATS]).sort(["query", *keys], nulls_last=True)


def influence_aggregates(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Mean influence with count and 95% CI, per query set, grouped every way the pool allows.

    `frame`: a scored pool (columns `curate_influence_<q>`; optionally the `GROUPINGS` columns and
    `curate_behavior_<name>` counts). Returns a table per key of `GROUPINGS` the pool has
    ("domain", "difficulty", "type" = MATH question type, "source"), "difficulty_band" (easy /
    medium / hard, see `difficulty_band`) where the difficulty is curate's 1-10 `curate_difficulty`,
    "domain_difficulty" (both keys; the band where there is one, else the native level) where it
    has domain and difficulty, and "behavior" where it has behaviour counts.
    Every table has `query` (q), the group key(s), `n`, `mean`, `std`, `ci_low`, `ci_high`; units
    are those of the scores (nats per unit of up-weighting). "domain" rows read as training
    domain -> query set (math -> code is the mean influence of the math examples on the code
    queries). "behavior" has `behavior` and `present` (count > 0).
    Raises `DataError` when the frame has no influence columns.
    """
    columns = influence_columns(frame)
    if not columns:
        raise DataError("no curate_influence_<q> columns: score the pool first (`curate score`)")
    found = {key: group_column(frame, key) for key in GROUPINGS}
    tables = {key: aggregate_by(frame, {key: c}, columns) for key, c in found.items() if c is not None}
    difficulty = found["difficulty"]
    if difficulty == "curate_difficulty":  # 1-10: bands give groups large enough to compare
        frame = frame.with_columns(difficulty_band(pl.col(difficulty)).alias("difficulty_band"))
        tables["difficulty_band"] = aggregate_by(frame, {"difficulty_band": "difficulty_band"}, columns)
        difficulty = "difficulty_band"
    if found["domain"] and difficulty:
        tables["domain_difficulty"] = aggregate_by(
            frame, {"domain": found["domain"], "difficulty": difficulty}, columns)
    behaviors = behavior_columns(frame)
    if behaviors:
        parts = [aggregate_by(frame.with_columns((pl.col(c).fill_null(0) > 0).alias("present")),
                              {"present": "present"}, columns)
                 .with_columns(pl.lit(c[len(BEHAVIOR_PREFIX):]).alias("behavior")) for c in behaviors]
        tables["behavior"] = (pl.concat(parts).select(["query", "behavior", "present", *STATS])
                              .sort(["query", "behavior", "present"]))
    return tables


def difficulty_band(level: pl.Expr) -> pl.Expr:
    """curate's 1-10 difficulty as "easy" (<= EASY_MAX), "medium" or "hard" (>= HARD_MIN); null stays null."""
    return (pl.when(level.is_null()).then(None).when(level <= EASY_MAX).then(pl.lit("easy"))
            .when(level >= HARD_MIN).then(pl.lit("hard")).otherwise(pl.lit("medium")))


def charted(table: pl.DataFrame) -> pl.DataFrame:
    """The rows of an aggregate table a chart shows: groups of at least `MIN_GROUP` examples."""
    return table.filter(pl.col("n") >= MIN_GROUP)


def stability_table(reports: Mapping[str, StabilityReport]) -> pl.DataFrame:
    """One row per query set of `curate.influence.stability` reports: query, splits, split_size (query
    examples per split; null when unknown), rows, spearman_mean, spearman_min, top_k (fraction),
    top_k_overlap (chance level = top_k), rho_full (Spearman-Brown, full set), queries_needed (for
    rho 0.9; null when unknown or not needed), stable ("yes" / "no")."""
    return pl.DataFrame(
        [{"query": r.query, "splits": r.splits, "split_size": r.split_size, "rows": r.rows,
          "spearman_mean": r.spearman_mean, "spearman_min": r.spearman_min, "top_k": r.top_k,
          "top_k_overlap": r.top_k_overlap, "rho_full": r.rho_full, "queries_needed": r.queries_needed,
          "stable": "no" if r.unstable else "yes"} for r in reports.values()],
        schema_overrides={"split_size": pl.Float64, "queries_needed": pl.Int64},
    )


def load_audit(path: str | Path) -> AuditResult:
    """The `AuditResult` saved by `curate audit`: `path` is its out_dir or the results.json in it.

    Raises `DataError` naming the file when it is missing or is not an audit results.json.
    """
    from curate.audit.counterfactual import ArmResult, AuditResult, Comparison, Verdict
    from curate.audit.lds import LDSResult, LDSScore

    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{file}: no such file; give `curate audit`'s output folder or its results.json")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        pairs = {k: Comparison(**data["verdict"][k])
                 for k in ("helpful_vs_random", "harmful_vs_random", "helpful_vs_harmful")}
        baselines = {k: Comparison(**c) for k, c in data["verdict"]["baselines_vs_random"].items()}
        verdict = Verdict(**{**data["verdict"], **pairs, "baselines_vs_random": baselines})
        arms = {k: ArmResult(**a) for k, a in data["arms"].items()}
        lds = data.get("lds")
        if lds is not None:
            lds = LDSResult(**{**lds, "scores": {k: LDSScore(**v) for k, v in lds["scores"].items()}})
        return AuditResult(**{**data, "arms": arms, "verdict": verdict, "lds": lds})
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        detail = " ".join(f"{type(err).__name__}: {err}".split())
        raise DataError(f"{file}: not a `curate audit` results.json ({detail})") from None


def audit_tables(result: AuditResult) -> dict[str, pl.DataFrame]:
    """The audit as tables (f_q and deltas in nats; see `curate.audit.counterfactual`).

    "arms": arm, description, removed (rows), seeds, f_mean (objective's f_q, mean over seeds),
    delta_mean, delta_std (f_q(arm) - f_q(full); negative = removing the rows hurt).
    "comparisons": the verdict's paired differences delta(a) - delta(b), then each baseline vs
    random: comparison, diff_mean, diff_std, z (null without spread), seeds, hurt_more (the arm
    whose removal lowered f_q more; "tie" within `TIE_NATS`), expected (the sign the verdict
    wants; "" for baselines).
    "references": per query set, its size and f_q before fine-tuning (f_start) and of the scored
    model (f_model; null in proxy mode).
    "lds" (with subset fine-tunes): ranking, lds (Spearman over subsets), ci_low, ci_high (95%
    bootstrap over subsets), subsets.
    """
    q = result.objective
    arms = pl.DataFrame(
        [{"arm": a.name, "description": a.description, "removed": a.removed, "seeds": len(a.delta),
          "f_mean": sum(f[q] for f in a.f) / len(a.f) if a.f else None,
          "delta_mean": a.delta_mean, "delta_std": a.delta_std} for a in result.arms.values()],
        schema_overrides={"f_mean": pl.Float64})
    v = result.verdict
    expected = {"helpful_vs_random": "< 0", "harmful_vs_random": "> 0", "helpful_vs_harmful": "< 0"}
    pairs = [(getattr(v, k), sign) for k, sign in expected.items()]
    pairs += [(c, "") for c in v.baselines_vs_random.values()]
    comparisons = pl.DataFrame(
        [{"comparison": f"{c.a} - {c.b}", "diff_mean": c.diff_mean, "diff_std": c.diff_std, "z": c.z,
          "seeds": len(c.diffs), "hurt_more": "tie" if abs(c.diff_mean) < TIE_NATS else c.a if c.diff_mean < 0 else c.b,
          "expected": sign} for c, sign in pairs],
        schema_overrides={"z": pl.Float64})
    model = result.f_model or {}
    references = pl.DataFrame(
        [{"query": name, "examples": n, "f_start": result.f_start.get(name), "f_model": model.get(name)}
         for name, n in result.queries.items()],
        schema_overrides={"f_start": pl.Float64, "f_model": pl.Float64})
    tables = {"arms": arms, "comparisons": comparisons, "references": references}
    if result.lds is not None:
        tables["lds"] = pl.DataFrame(
            [{"ranking": "score" if name == "score" else f"{name} (baseline)", "lds": s.spearman, "ci_low": s.ci_low,
              "ci_high": s.ci_high, "subsets": result.lds.subsets} for name, s in result.lds.scores.items()],
            schema_overrides={"lds": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64})
    return tables
