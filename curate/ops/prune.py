"""`prune`: keep a fraction (or a count) of a pool by a score, a rank or a baseline.

Strategies (every score is "higher = keep"; `lowest=True` keeps the lowest instead):

- `score`: one column as is, or several columns z-scored (over their non-null values) and summed.
- `rank`: the mean, across the columns, of each row's rank percentile (0 = lowest, 1 = highest).
- `correct-incorrect`: Humane et al. as reconstructed in METHODS §3. With s_C the `correct`
  column (influence on correctly answered queries) and s_I the `incorrect` one, each gets a
  damped utility u = mean(pct(s), r), where r is the mean over the query splits
  `<col>_split<k>` of the row's per-split rank percentile (r = pct(s) when the pool has no split
  columns, so u = pct(s)). The score is u_C - u_I: high s_C keeps a row, high s_I drops it.
  Either column alone gives the *correct* or *incorrect* strategy.
- `random`: uniform, seeded; independent of row order (rows are drawn in curate_id order).
- `mid-perplexity`: keep the middle of `curate_nll` (score = -|pct(nll) - 0.5|).
- `length`: `curate_tokens` when the pool has it, else response characters; longest kept.
- `embedding` (RDS+, Humane et al.): the `curate_embedding_<q>` columns that `curate score
  --method embedding` writes (`curate.influence.embedding`: cosine of the row's mean-pooled last
  hidden state to query set q's mean direction), ranked as `score` ranks columns. The op reads
  columns only; `curate prune --strategy embedding --model M --query PATH` is a shortcut that
  scores the embeddings first.

Counts: exactly `round(keep * N)` rows are kept (half rounds up), or `keep_n`. With `per_domain`
the total is split over `curate_domain` values in proportion to their sizes by largest remainder
(`select.apportion`), so the total is still exact and each domain keeps floor or ceil of
keep * N_d. Ties are broken by curate_id; null scores rank last (and are named in the report).
With `decontaminate`, overlapping rows are dropped first and the keep fraction applies to the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curate.data import Pool
from curate.data.columns import EMBEDDING_PREFIX, INFLUENCE_PREFIX, main_score_columns
from curate.data.manifest import Manifest
from curate.errors import DataError
from curate.ops.decontam import DEFAULT_NGRAM, Benchmark, contaminated_rows, load_benchmarks
from curate.ops.select import apportion, order_rows, percentile, round_half_up, zscore
from curate.results import OpContext, OpReport, OpResult
from curate.settings import Problem, check_settings, raise_problems, setting

if TYPE_CHECKING:
    import polars as pl

STRATEGIES = ("score", "rank", "correct-incorrect", "random", "mid-perplexity", "length", "embedding")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune. Exactly one of `keep` (fraction in (0, 1]) and `keep_n` (rows)."""

    keep: float | None = setting(None, "Fraction of rows to keep; exactly round(keep x N) are kept. No default: "
                                 "give exactly one of {keep} and {keep_n}.", low=0, high=1, low_open=True)
    keep_n: int | None = setting(None, "Number of rows to keep (instead of {keep}; no default).", low=1)
    strategy: str = setting("score", "score: one column or z-scores summed; rank: mean rank percentile; "
                            "correct-incorrect: keep high {correct}, drop high {incorrect} (split-damped); baselines "
                            "random, mid-perplexity (middle of curate_nll), length (curate_tokens or response "
                            "chars), embedding (the curate_embedding_<q> columns of `curate score --method embedding`, as "
                            "score ranks them).",
                            choices=STRATEGIES)
    by: tuple[str, ...] = setting((), "Score column(s) [default: every curate_influence_<q> column without _split; "
                                  "with {strategy} embedding, every curate_embedding_<q> column].",
                                  metavar="COL[,COL...]")
    correct: str | None = setting(None, "s_C column for correct-incorrect (e.g. curate_influence_correct).")
    incorrect: str | None = setting(None, "s_I column for correct-incorrect.")
    per_domain: bool = setting(False, "Keep the fraction within each curate_domain (exact total, largest remainder).")
    lowest: bool = setting(False, "Keep the lowest scores instead (e.g. the shortest with {strategy} length).")
    seed: int = setting(0, "Seed of {strategy} random.")
    decontaminate: tuple[str, ...] = setting((), "Benchmark file(s): drop rows whose problem overlaps one.",
                                             metavar="BENCH", input_names=True)
    ngram: int = setting(DEFAULT_NGRAM, "Shared word n-gram that counts as overlap.", low=4)

    def __post_init__(self) -> None:
        for name in ("by", "decontaminate"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = check_settings(self)
        if (self.keep is None) == (self.keep_n is None):
            problems.append(Problem("give exactly one of {keep} (a fraction) and {keep_n} (a count)"))
        if self.strategy == "correct-incorrect":
            if not (self.correct or self.incorrect):
                problems.append(Problem("{strategy} correct-incorrect needs {correct} and/or {incorrect} columns"))
            if self.by:
                problems.append(Problem("{strategy} correct-incorrect takes {correct}/{incorrect}, not {by}"))
        elif self.correct or self.incorrect:
            problems.append(Problem(f"{{correct}}/{{incorrect}} apply to {{strategy}} correct-incorrect, "
                                    f"not {self.strategy}"))
        if self.strategy in ("random", "mid-perplexity") and self.by:
            problems.append(Problem(f"{{strategy}} {self.strategy} takes no {{by}} columns"))
        if self.strategy == "length" and len(self.by) > 1:
            problems.append(Problem("{strategy} length takes at most one {by} column"))
        raise_problems(self, problems)


def prune(pool: Pool, config: PruneConfig, benchmarks: Sequence[Benchmark] | None = None) -> OpResult:
    """Keep the best rows of `pool` by `config`; rows keep their input order and schema.

    `benchmarks`: already loaded evaluation sets (default: read `config.decontaminate`).
    Raises `DataError` for a missing score column or a count larger than the pool.
    """
    import polars as pl
    import pyarrow as pa
    import pyarrow.compute as pc

    if benchmarks is None:
        benchmarks = load_benchmarks(config.decontaminate)
    dirty = contaminated_rows(pool, benchmarks, config.ngram)
    manifest = Manifest.rows(dirty["curate_id"].to_arrow(), "removed", dirty["reason"].to_arrow())

    # Rows are ranked by (score, the rank of their curate_id): id strings stay in their Arrow column,
    # named only for the rows the manifest and the report list.
    table = pool.columns(["curate_id", "curate_domain"])
    ids = table.column("curate_id")
    frame = pl.DataFrame({"id_rank": pc.rank(ids, tiebreaker="first").cast(pa.uint32()),
                          "curate_domain": pl.from_arrow(table.column("curate_domain")).cast(pl.Categorical)})
    frame = frame.with_row_index("row")
    del table
    frame = frame.filter(~pl.col("row").is_in(dirty["row"].cast(pl.UInt32).implode()))
    frame = frame.with_columns(_scores(pool, config, frame["row"]).alias("score"))
    if config.lowest:
        frame = frame.with_columns(-pl.col("score"))
    n = len(frame)
    total = round_half_up(config.keep * n) if config.keep is not None else config.keep_n
    if total > n:
        raise DataError(f"keep_n={total}: the pool has only {n} rows" + (" after decontamination" if len(dirty) else ""))

    groups = ["curate_domain"] if config.per_domain else []
    sizes = dict(frame.group_by("curate_domain").len().iter_rows()) if groups else {"all": n}
    quota = apportion(total, sizes)
    parts = frame.partition_by("curate_domain", as_dict=True).items() if groups else [(("all",), frame)]
    ordered = pl.concat([
        order_rows(part, "score", tie="id_rank").with_columns(pl.lit(quota[key]).alias("quota"), pl.lit(len(part)).alias("of"))
        for (key,), part in parts
    ])
    kept = ordered.filter(pl.col("rank") <= pl.col("quota"))
    dropped = ordered.filter(pl.col("rank") > pl.col("quota")).sort(pl.col("rank"),
                                                                     pl.col("curate_domain").cast(pl.String))
    sign = -1.0 if config.lowest else 1.0
    value = (pl.col("score") * sign).map_elements(lambda v: f"score {v:.6g}", return_dtype=pl.String)
    reason = pl.concat_str(pl.lit(f"prune:{config.strategy} "), value.fill_null("null score"), pl.lit(", rank "),
                           pl.col("rank"), pl.lit(" of "), pl.col("of"),
                           *([pl.lit(" in "), pl.col("curate_domain").cast(pl.String)] if config.per_domain else []))
    reasons = dropped.select(reason).to_series().to_arrow()
    manifest = Manifest.of(manifest, Manifest.rows(ids.take(dropped["row"].to_arrow()), "removed", reasons))

    out = pool.take(kept["row"].sort().to_numpy())
    nulls = ids.take(ordered.filter(pl.col("score").is_null())["row"].to_arrow())
    return OpResult(out, manifest, _report(config, pool, ordered, kept, nulls, dirty, sign))


def _scores(pool: Pool, config: PruneConfig, rows: pl.Series) -> pl.Series:
    """The keep-score of each row in `rows` (higher = keep)."""
    import numpy as np
    import polars as pl

    columns = pool.column_names
    strategy = config.strategy

    def frame_of(names: list[str]) -> pl.DataFrame:
        for name in names:
            if name not in columns:
                raise DataError(_missing(name, columns))
        frame = pl.from_arrow(pool.columns(list(dict.fromkeys(names)))).select(names)
        return frame.with_row_index("row").filter(pl.col("row").is_in(rows.implode()))

    if strategy in ("score", "rank", "embedding"):
        prefix = EMBEDDING_PREFIX if strategy == "embedding" else INFLUENCE_PREFIX
        by = list(config.by) or main_score_columns(columns, prefix)
        if not by:
            raise DataError(_missing(None, columns, prefix))
        f = frame_of(by)
        if len(by) == 1:
            return f[by[0]].cast(pl.Float64).fill_nan(None)
        parts = f.select((percentile if strategy == "rank" else zscore)(c) for c in by)
        total = parts.select(pl.sum_horizontal(pl.all()).alias("s"), pl.any_horizontal(pl.all().is_null()).alias("n"))
        s = total.select(pl.when(pl.col("n")).then(None).otherwise(pl.col("s")))
        return s.to_series() / (len(by) if strategy == "rank" else 1)
    if strategy == "correct-incorrect":
        utility = pl.lit(0.0)
        names = []
        for column, sign in ((config.correct, 1.0), (config.incorrect, -1.0)):
            if column is None:
                continue
            splits = sorted((c for c in columns if c.startswith(f"{column}_split")), key=lambda c: c.rsplit("split", 1)[1].zfill(6))
            names += [column, *splits]
            damp = pl.mean_horizontal(pl.col(s) for s in splits) if splits else pl.col(column)
            utility = utility + sign * (pl.col(column) + damp) / 2
        f = frame_of(list(dict.fromkeys(names)))
        ranked = f.select(percentile(c) for c in dict.fromkeys(names))
        # any null among a row's columns leaves it unscored (mean_horizontal would skip nulls)
        unscored = pl.any_horizontal(pl.all().is_null())
        return ranked.select(pl.when(unscored).then(None).otherwise(utility)).to_series()
    if strategy == "random":
        f = frame_of(["curate_id"]).with_row_index("pos")
        order = f.sort("curate_id")
        draws = np.random.default_rng(config.seed).random(len(order))
        return order.with_columns(pl.Series("s", draws)).sort("pos")["s"]
    if strategy == "mid-perplexity":
        f = frame_of(["curate_nll"])
        return f.select(-(percentile("curate_nll") - 0.5).abs()).to_series()
    # length
    column = config.by[0] if config.by else ("curate_tokens" if "curate_tokens" in columns else None)
    if column is not None:
        return frame_of([column])[column].cast(pl.Float64)
    from curate.data.text import response_chars

    return response_chars(pool).cast(pl.Float64).gather(rows)


def _missing(name: str | None, columns: list[str], prefix: str = INFLUENCE_PREFIX) -> str:
    found = [c for c in columns if c.startswith(prefix)]
    how = "`curate score --method embedding`" if prefix == EMBEDDING_PREFIX else "`curate score`"
    have = f"available {prefix}* columns: {', '.join(found)}" if found else \
        f"the pool has no {prefix}* columns (run {how} first)"
    return f"the pool has no score column {name!r}; {have}" if name else f"no score column given; {have}"


def _report(config, pool, ordered, kept, nulls, dirty, sign) -> OpReport:
    import polars as pl

    counts = {"rows in": len(pool), "decontaminated": len(dirty), "kept": len(kept),
              "pruned": len(ordered) - len(kept), "null scores": len(nulls)}
    notes = []
    if len(nulls):
        ids = sorted(nulls.to_pylist())
        notes.append(f"{len(ids)} row(s) have a null score and rank last: {', '.join(ids[:5])}"
                     + (", ..." if len(ids) > 5 else ""))
    per = ordered.group_by("curate_domain").agg(
        pl.len().alias("rows"), (pl.col("rank") <= pl.col("quota")).sum().alias("kept"),
        pl.col("score").filter(pl.col("rank") <= pl.col("quota")).min().alias("lowest kept"),
    ).with_columns(pl.col("curate_domain").cast(pl.String)).sort("curate_domain")
    what = {"correct-incorrect": f"correct `{config.correct}`, incorrect `{config.incorrect}`"}.get(
        config.strategy, ", ".join(f"`{c}`" for c in config.by) or "default columns")
    if config.strategy in ("score", "embedding") and len(config.by) > 1:
        what += "; the score is the sum of the columns, each z-scored over its non-null values"
    lines = [
        f"- strategy: `{config.strategy}` ({what}){'; lowest kept' if config.lowest else ''}",
        f"- keep: {config.keep if config.keep is not None else config.keep_n} "
        f"({'fraction' if config.keep is not None else 'rows'}){', per domain' if config.per_domain else ''}",
        f"- decontaminated first: {len(dirty)} row(s)" + (f" against {', '.join(config.decontaminate)}" if config.decontaminate else ""),
        f"- null scores (ranked last): {len(nulls)}",
        "", "| domain | rows | kept | lowest kept score |", "|---|---|---|---|",
    ]
    for domain, rows, k, low in per.iter_rows():
        lines.append(f"| {domain} | {rows} | {k} | {'' if low is None else f'{sign * low:.6g}'} |")
    return OpReport(counts, notes, {"Pruning": "\n".join(lines)})


def run(pool: Pool, inputs: dict, config: PruneConfig, context: OpContext) -> OpResult:
    """The registry's call shape (no inputs besides the pool)."""
    return prune(pool, config)
