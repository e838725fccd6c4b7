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
- `embedding` (RDS+, Humane et al.): cosine of the row's mean-pooled last hidden state under
  `model` to the mean direction of the normalised embeddings of the `queries` examples
  (`curate.ops.embed`; ranks like the mean cosine to each query).

Counts: exactly `round(keep * N)` rows are kept (half rounds up), or `keep_n`. With `per_domain`
the total is split over `curate_domain` values in proportion to their sizes by largest remainder
(`select.apportion`), so the total is still exact and each domain keeps floor or ceil of
keep * N_d. Ties are broken by curate_id; null scores rank last (and are named in the report).
With `decontaminate`, overlapping rows are dropped first and the keep fraction applies to the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from curate.data import ManifestEntry, Pool
from curate.errors import DataError, UsageError
from curate.ops.decontam import DEFAULT_NGRAM, Benchmark, contaminated_rows, load_benchmarks
from curate.ops.result import OpReport, OpResult
from curate.ops.select import apportion, order_rows, percentile, round_half_up, zscore

if TYPE_CHECKING:
    import polars as pl

STRATEGIES = ("score", "rank", "correct-incorrect", "random", "mid-perplexity", "length", "embedding")
INFLUENCE_PREFIX = "curate_influence_"


@dataclass(frozen=True)
class PruneConfig:
    """How to prune. Exactly one of `keep` (fraction in (0, 1]) and `keep_n` (rows)."""

    keep: float | None = field(default=None, metadata={"help": "Fraction of rows to keep, in (0, 1]."})
    keep_n: int | None = field(default=None, metadata={"help": "Number of rows to keep."})
    strategy: str = field(default="score", metadata={"help": f"One of {', '.join(STRATEGIES)}."})
    by: tuple[str, ...] = field(default=(), metadata={
        "help": "Score columns for score/rank [default: every curate_influence_<q> without _split]."})
    correct: str | None = field(default=None, metadata={"help": "s_C column (correct-incorrect)."})
    incorrect: str | None = field(default=None, metadata={"help": "s_I column (correct-incorrect)."})
    per_domain: bool = field(default=False, metadata={"help": "Keep the fraction within each curate_domain."})
    lowest: bool = field(default=False, metadata={"help": "Keep the lowest scores instead of the highest."})
    seed: int = field(default=0, metadata={"help": "Seed of the random strategy."})
    decontaminate: tuple[str, ...] = field(default=(), metadata={"help": "Benchmark files to decontaminate against."})
    ngram: int = field(default=DEFAULT_NGRAM, metadata={"help": "Shared word n-gram that counts as overlap."})
    model: str | None = field(default=None, metadata={"help": "Model path, Hub id or alias (embedding)."})
    queries: tuple[str, ...] = field(default=(), metadata={"help": "Query set files to embed (embedding)."})
    max_length: int = field(default=2048, metadata={"help": "Tokens per example embedded; longer ones are cut."})
    batch_tokens: int = field(default=4096, metadata={"help": "Padded tokens per embedding batch."})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda:1, ... (embedding)."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "by", tuple(self.by))
        object.__setattr__(self, "decontaminate", tuple(self.decontaminate))
        object.__setattr__(self, "queries", tuple(self.queries))
        problems = []
        if (self.keep is None) == (self.keep_n is None):
            problems.append("give exactly one of keep (a fraction) and keep_n (a count)")
        if self.keep is not None and not 0 < self.keep <= 1:
            problems.append(f"keep={self.keep}: must be in (0, 1] (a fraction of rows; use keep_n for a count)")
        if self.keep_n is not None and self.keep_n < 1:
            problems.append(f"keep_n={self.keep_n}: must be at least 1")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy={self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.strategy == "correct-incorrect":
            if not (self.correct or self.incorrect):
                problems.append("strategy correct-incorrect needs correct and/or incorrect columns")
            if self.by:
                problems.append("strategy correct-incorrect takes correct/incorrect, not by")
        elif self.correct or self.incorrect:
            problems.append(f"correct/incorrect apply to strategy correct-incorrect, not {self.strategy}")
        if self.strategy in ("random", "mid-perplexity") and self.by:
            problems.append(f"strategy {self.strategy} takes no by columns")
        if self.strategy == "length" and len(self.by) > 1:
            problems.append("strategy length takes at most one by column")
        if self.strategy == "embedding":
            if not self.model:
                problems.append("strategy embedding needs a model")
            if not self.queries:
                problems.append("strategy embedding needs at least one query file")
            if self.by:
                problems.append("strategy embedding takes no by columns")
        elif self.model or self.queries:
            problems.append(f"model/queries apply to strategy embedding, not {self.strategy}")
        if self.max_length < 1 or self.batch_tokens < 1:
            problems.append(f"max_length={self.max_length}, batch_tokens={self.batch_tokens}: must be at least 1")
        if self.ngram < 4:
            problems.append(f"ngram={self.ngram}: must be at least 4")
        if problems:
            raise UsageError("; ".join(problems))


def prune(pool: Pool, config: PruneConfig, benchmarks: Sequence[Benchmark] | None = None) -> OpResult:
    """Keep the best rows of `pool` by `config`; rows keep their input order and schema.

    `benchmarks`: already loaded evaluation sets (default: read `config.decontaminate`).
    Raises `DataError` for a missing score column or a count larger than the pool.
    """
    import polars as pl

    if benchmarks is None:
        benchmarks = load_benchmarks(config.decontaminate)
    dirty = contaminated_rows(pool, benchmarks, config.ngram)
    manifest = [ManifestEntry(i, "removed", r) for i, r in dirty.select("curate_id", "reason").iter_rows()]

    table = pool.dataset.with_format("arrow")[:]
    frame = pl.from_arrow(table.select(["curate_id", "curate_domain"])).with_row_index("row")
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
        order_rows(part, "score").with_columns(pl.lit(quota[key]).alias("quota"), pl.lit(len(part)).alias("of"))
        for (key,), part in parts
    ])
    kept = ordered.filter(pl.col("rank") <= pl.col("quota"))
    dropped = ordered.filter(pl.col("rank") > pl.col("quota")).sort("rank", "curate_domain")
    sign = -1.0 if config.lowest else 1.0
    where = " in " if config.per_domain else ""
    for cid, domain, score, rank, of in dropped.select("curate_id", "curate_domain", "score", "rank", "of").iter_rows():
        value = "null score" if score is None else f"score {sign * score:.6g}"
        manifest.append(ManifestEntry(cid, "removed", f"prune:{config.strategy} {value}, rank {rank} of {of}{where}{domain if where else ''}"))

    out = pool.with_dataset(pool.dataset.select(sorted(kept["row"].to_list())))
    nulls = ordered.filter(pl.col("score").is_null())
    return OpResult(out, manifest, _report(config, pool, ordered, kept, nulls, dirty, sign))


def _scores(pool: Pool, config: PruneConfig, rows: pl.Series) -> pl.Series:
    """The keep-score of each row in `rows` (higher = keep)."""
    import numpy as np
    import polars as pl

    table = pool.dataset.with_format("arrow")[:]
    columns = table.column_names
    strategy = config.strategy

    def frame_of(names: list[str]) -> pl.DataFrame:
        for name in names:
            if name not in columns:
                raise DataError(_missing(name, columns))
        return pl.from_arrow(table.select(names)).with_row_index("row").filter(pl.col("row").is_in(rows.implode()))

    if strategy in ("score", "rank"):
        by = list(config.by) or [c for c in columns if c.startswith(INFLUENCE_PREFIX) and "_split" not in c]
        if not by:
            raise DataError(_missing(None, columns))
        f = frame_of(by)
        if len(by) == 1:
            return f[by[0]].cast(pl.Float64).fill_nan(None)
        parts = f.select((zscore if strategy == "score" else percentile)(c) for c in by)
        total = parts.select(pl.sum_horizontal(pl.all()).alias("s"), pl.any_horizontal(pl.all().is_null()).alias("n"))
        s = total.select(pl.when(pl.col("n")).then(None).otherwise(pl.col("s")))
        return s.to_series() / (1 if strategy == "score" else len(by))
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
    if strategy == "embedding":
        return _embedding_scores(pool, config, rows)
    if strategy == "mid-perplexity":
        f = frame_of(["curate_nll"])
        return f.select(-(percentile("curate_nll") - 0.5).abs()).to_series()
    # length
    column = config.by[0] if config.by else ("curate_tokens" if "curate_tokens" in columns else None)
    if column is not None:
        return frame_of([column])[column].cast(pl.Float64)
    from curate.ops.text import response_chars

    return response_chars(pool).cast(pl.Float64).gather(rows)


def _embedding_scores(pool: Pool, config: PruneConfig, rows: pl.Series) -> pl.Series:
    """Cosine of each row in `rows` to the queries (see `curate.ops.embed`)."""
    import polars as pl

    from curate.data import load_pool
    from curate.ops.embed import embedding_scores

    wanted = set(rows.to_list())
    examples = [e for i, e in enumerate(pool.examples()) if i in wanted]  # ascending, as `rows` is
    queries = [e for path in config.queries for e in load_pool(path).examples()]
    scores = embedding_scores(config.model, examples, queries, max_length=config.max_length,
                              batch_tokens=config.batch_tokens, device=config.device)
    return pl.Series("score", scores, dtype=pl.Float64)


def _missing(name: str | None, columns: list[str]) -> str:
    found = [c for c in columns if c.startswith(INFLUENCE_PREFIX)]
    have = f"available curate_influence_* columns: {', '.join(found)}" if found else \
        "the pool has no curate_influence_* columns (run `curate score` first)"
    return f"the pool has no score column {name!r}; {have}" if name else f"no score column given; {have}"


def _report(config, pool, ordered, kept, nulls, dirty, sign) -> OpReport:
    import polars as pl

    counts = {"rows in": len(pool), "decontaminated": len(dirty), "kept": len(kept),
              "pruned": len(ordered) - len(kept), "null scores": len(nulls)}
    notes = []
    if len(nulls):
        ids = nulls["curate_id"].sort().to_list()
        notes.append(f"{len(ids)} row(s) have a null score and rank last: {', '.join(ids[:5])}"
                     + (", ..." if len(ids) > 5 else ""))
    per = ordered.group_by("curate_domain").agg(
        pl.len().alias("rows"), (pl.col("rank") <= pl.col("quota")).sum().alias("kept"),
        pl.col("score").filter(pl.col("rank") <= pl.col("quota")).min().alias("lowest kept"),
    ).sort("curate_domain")
    what = {"correct-incorrect": f"correct `{config.correct}`, incorrect `{config.incorrect}`",
            "embedding": f"model `{config.model}`, queries {', '.join(f'`{q}`' for q in config.queries)}"}.get(
        config.strategy, ", ".join(f"`{c}`" for c in config.by) or "default columns")
    if config.strategy == "score" and len(config.by) > 1:
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
