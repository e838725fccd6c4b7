"""`flip`: the Infra difficulty flip. Same pool size and domain counts; the easiest math rows are
replaced by harder donor math and the hardest code rows by easier donor code (`reverse`: the
control, harder code and easier math).

Difficulty is `difficulty_col` (default `curate_difficulty`, 1-10, from the tagger or the user).
Only when a table has no such column, a native MATH `level` (1-5, or "Level L") is mapped with the
offline tagger's table (`curate.tagging.offline.NATIVE_DIFFICULTY`: level L -> L + 1) with source
`native`, so a flip reads levels the same way whether or not the pool was tagged. Per flipped domain with N_d rows, n = `swap_n` or
round(swap_frac * N_d) rows are swapped:

- harder (math by default): pool rows with difficulty <= `easy_max`, easiest first (ties by
  curate_id), are replaced by donor rows with difficulty >= `hard_min`, drawn at random (`seed`);
- easier (code by default): pool rows with difficulty >= `hard_min`, hardest first, are replaced
  by donor rows with difficulty <= `easy_max`.

Donor rows are never used twice, never one whose normalised problem is already in the pool (or
repeats an earlier donor row), never one overlapping a `decontaminate` benchmark. Rows without a
difficulty are never swapped. When either side runs short, what can be swapped is swapped and the
report says how many and why. Pool and donor difficulty sources (`curate_difficulty_source`) must
agree per domain unless `allow_mixed_sources`. With `decontaminate`, overlapping pool rows are
dropped (listed as removed), so the output is smaller by that many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curate.analysis import EASY_MAX, HARD_MIN
from curate.data import Pool
from curate.data.manifest import Manifest
from curate.data.text import problem_batches
from curate.errors import DataError
from curate.ops.decontam import (
    DEFAULT_NGRAM,
    Benchmark,
    contaminated_rows,
    load_benchmarks,
    normalise,
)
from curate.ops.select import round_half_up
from curate.results import OpContext, OpReport, OpResult
from curate.settings import Problem, check_settings, raise_problems, setting

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

FLIP_DOMAINS = ("math", "code")
BINS = tuple(range(1, 11))


@dataclass(frozen=True)
class FlipConfig:
    """How to flip. Thresholds are on the 1-10 difficulty scale."""

    swap_frac: float = setting(0.25, "Fraction of each flipped domain to swap.", low=0, high=1, low_open=True)
    swap_n: int | None = setting(None, "Rows to swap per domain (instead of {swap_frac}).", low=1)
    easy_max: float = setting(EASY_MAX, "Easy: difficulty <= this (1-10 scale; MATH levels 1-2, TACO EASY).",
                              low=1, high=10)
    hard_min: float = setting(HARD_MIN, "Hard: difficulty >= this (MATH levels 4-5, TACO MEDIUM_HARD and up, "
                              "APPS competition).", low=1, high=10)
    domains: tuple[str, ...] = setting(FLIP_DOMAINS, "Domains to flip.", choices=FLIP_DOMAINS)
    reverse: bool = setting(False, "The control: harder code, easier math.")
    difficulty_col: str = setting("curate_difficulty", "Difficulty column (1-10); without it a MATH `level` L "
                                  "counts as L + 1 (the offline tagger's table).")
    allow_mixed_sources: bool = setting(False, "Flip even when pool and donor difficulty sources differ.")
    seed: int = setting(0, "Seed of the donor draw.")
    decontaminate: tuple[str, ...] = setting((), "Benchmark file(s): drop pool and donor rows that overlap one.",
                                             metavar="BENCH", input_names=True)
    ngram: int = setting(DEFAULT_NGRAM, "Shared word n-gram that counts as overlap.", low=4)

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "decontaminate", tuple(self.decontaminate))
        problems = check_settings(self)
        if not self.easy_max < self.hard_min:
            problems.append(Problem(f"{{easy_max}} {self.easy_max}, {{hard_min}} {self.hard_min}: "
                                    "need {easy_max} < {hard_min}"))
        raise_problems(self, problems)

    def direction(self, domain: str) -> str:
        return "harder" if (domain == "math") != self.reverse else "easier"


def _problem_keys(pool: Pool) -> list[pl.Series]:
    """`key` (a 64-bit hash of each row's normalised problem) and `blank` (no problem text)."""
    import polars as pl

    keys, blanks = [], []
    for texts in problem_batches(pool):
        norm = normalise(texts)
        keys.append(norm.hash(seed=0))
        blanks.append(norm == "")
    if not keys:
        return [pl.Series("key", [], pl.UInt64), pl.Series("blank", [], pl.Boolean)]
    return [pl.concat(keys).alias("key"), pl.concat(blanks).alias("blank")]


def difficulty_frame(pool: Pool, column: str) -> tuple[pl.DataFrame, pa.ChunkedArray]:
    """(`row`, `rank` (of the row's curate_id among the pool's, 0-based: ties are broken by it),
    `curate_domain` (categorical), `difficulty` (float, 1-10 or null), `source` (categorical); the
    curate_id column itself). The frame holds no id string: ids stay in the compact Arrow column,
    read where a report or the manifest names a row."""
    import polars as pl

    names = pool.column_names
    wanted = [c for c in ("curate_id", "curate_domain", column, "curate_difficulty_source", "level") if c in names]
    table = pool.columns(list(dict.fromkeys(wanted)))
    ids = table.column("curate_id")
    rank = pl.Series(ids).rank("ordinal").cast(pl.UInt32) - 1
    frame = pl.DataFrame({"rank": rank, "curate_domain": pl.Series(table.column("curate_domain")).cast(pl.Categorical)}
                         ).with_row_index("row")
    if column in names:
        values = pl.from_arrow(table.column(column)).cast(pl.Float64, strict=False)
        sources = (pl.from_arrow(table.column("curate_difficulty_source")).cast(pl.String)
                   if "curate_difficulty_source" in names else pl.Series([None] * len(frame), dtype=pl.String))
        sources = sources.fill_null("unspecified")
    elif column == "curate_difficulty" and "level" in names:
        from curate.tagging.offline import NATIVE_DIFFICULTY, native_difficulty

        raw = pl.from_arrow(table.column("level")).to_list()
        values = pl.Series([native_difficulty(v, NATIVE_DIFFICULTY) for v in raw], dtype=pl.Float64)
        sources = pl.Series(["native"] * len(frame), dtype=pl.String)
    else:
        values = pl.Series([None] * len(frame), dtype=pl.Float64)
        sources = pl.Series(["none"] * len(frame), dtype=pl.String)
    return frame.with_columns(values.alias("difficulty"), sources.cast(pl.Categorical).alias("source")), ids


def flip(pool: Pool, donor: Pool, config: FlipConfig, benchmarks: Sequence[Benchmark] | None = None) -> OpResult:
    """Swap rows of `pool` for rows of `donor` (rendered into the pool's schema) per `config`.

    Raises `DataError` when the donor has no rows of a flipped domain, a flipped domain has no
    difficulty, or difficulty sources differ (without `allow_mixed_sources`).
    """
    import numpy as np
    import polars as pl

    from curate.data.rows import SpliceRows
    from curate.ops.donor import render_rows

    if benchmarks is None:
        benchmarks = load_benchmarks(config.decontaminate)
    col = config.difficulty_col
    # A problem is compared by a 64-bit hash of its normalised text (`key`; `blank`: no text), so
    # a million rows' problems are not held as text.
    mine, pool_ids = difficulty_frame(pool, col)
    mine = mine.with_columns(_problem_keys(pool))
    before = _summary(mine)
    theirs, donor_ids = difficulty_frame(donor, col)
    theirs = theirs.with_columns(_problem_keys(donor))
    _no_clash(pool_ids, donor_ids)

    dirty = contaminated_rows(pool, benchmarks, config.ngram)
    dirty_donor = contaminated_rows(donor, benchmarks, config.ngram)
    manifest = [Manifest.rows(dirty["curate_id"].to_arrow(), "removed", dirty["reason"].to_arrow())]
    mine = mine.filter(~pl.col("row").is_in(dirty["row"].cast(pl.UInt32).implode()))
    in_pool = theirs["key"].is_in(mine["key"].implode()) & ~theirs["blank"]
    repeat = theirs["key"].is_duplicated() & ~theirs.select(pl.col("key").is_first_distinct()).to_series()
    theirs = theirs.with_columns(
        dirty=pl.col("row").is_in(dirty_donor["row"].cast(pl.UInt32).implode()), in_pool=in_pool, repeat=repeat
    ).drop("key", "blank")
    mine = mine.drop("key", "blank")
    del in_pool, repeat
    usable = theirs.filter(~pl.col("dirty") & ~pl.col("in_pool") & ~pl.col("repeat")).select(
        "row", "rank", "curate_domain", "difficulty")
    rng = np.random.default_rng(config.seed)
    usable = usable.sort("rank").with_columns(pl.Series("draw", rng.random(len(usable)))).sort("draw")

    notes: list[str] = []
    swaps: list[pl.DataFrame] = []  # per domain: pool_row, donor_row, difficulty, donor_difficulty
    per_domain: dict[str, dict[str, int]] = {}
    for domain in config.domains:
        pairs = _domain_pairs(domain, mine, theirs, usable, config, notes)
        if pairs is None:
            continue
        pairs, per_domain[domain] = pairs
        swaps.append(pairs)
        number = {"function": lambda v: f"{v:g}", "return_dtype": pl.String}
        reasons = pl.concat_str(pl.lit(f"flip:{domain} {config.direction(domain)}: difficulty "),
                                pl.col("difficulty").map_elements(**number), pl.lit(" -> "),
                                pl.col("donor_difficulty").map_elements(**number))
        manifest.append(Manifest.rows(pool_ids.take(pairs["pool_row"].to_arrow()), "replaced",
                                      pairs.select(reasons).to_series().to_arrow(),
                                      donor_ids.take(pairs["donor_row"].to_arrow())))
    # The frames are summarised and freed before the donor rows are rendered: at a million rows
    # each holds tens of MB, and the rendering's batches come on top of what is still alive.
    del usable
    swapped = pl.concat(swaps) if swaps else pl.DataFrame(schema={"pool_row": pl.UInt32, "donor_row": pl.UInt32})
    after = _summary(pl.concat([
        mine.filter(~pl.col("row").is_in(swapped["pool_row"].implode())).select("curate_domain", "difficulty"),
        theirs.filter(pl.col("row").is_in(swapped["donor_row"].implode())).select("curate_domain", "difficulty")]))

    excluded = {"overlapping benchmarks": dirty_donor["curate_id"],
                **{why: pl.Series(donor_ids.take(theirs.filter(flag)["row"].to_arrow()))
                   for why, flag in (("already in the pool", "in_pool"), ("repeated in the donor", "repeat"))}}
    # In-place replacement: row i of the output is pool row i, or the donor row that replaced it.
    keep = mine["row"].cast(pl.Int64).to_numpy()
    del mine, theirs
    at = np.searchsorted(keep, swapped["pool_row"].cast(pl.Int64).to_numpy())
    rendered = render_rows(pool, donor, swapped["donor_row"].cast(pl.Int64).to_numpy(), at)
    out = pool.with_rows(SpliceRows(pool.rows, keep, np.sort(at), rendered))
    report = _report(config, pool, donor, per_domain, before, after, dirty, excluded, notes)
    return OpResult(out, Manifest.of(*manifest), report)


def _domain_pairs(domain: str, mine: pl.DataFrame, theirs: pl.DataFrame, usable: pl.DataFrame,
                  config: FlipConfig, notes: list[str]) -> tuple[pl.DataFrame, dict[str, int]] | None:
    """One flipped domain's swaps: (`pool_row`, `difficulty`, `donor_row`, `donor_difficulty`) in
    swap order, and {rows, asked, swapped}; None when the pool has no row of the domain. Notes
    why fewer than asked were swapped; raises `DataError` where the domain cannot be flipped."""
    import polars as pl

    col = config.difficulty_col
    p = mine.filter(pl.col("curate_domain") == domain)
    d_all = theirs.filter(pl.col("curate_domain") == domain)
    if len(d_all) == 0:
        raise DataError(f"the donor has no {domain} rows (curate_domain); a flip needs donor rows of every "
                        f"flipped domain (or flip only {', '.join(x for x in config.domains if x != domain) or 'another domain'} with --domains)")
    if len(p) == 0:
        notes.append(f"{domain}: the pool has no {domain} rows; nothing to swap")
        return None
    if p["difficulty"].null_count() == len(p) or d_all["difficulty"].null_count() == len(d_all):
        side = "pool" if p["difficulty"].null_count() == len(p) else "donor"
        raise DataError(f"{domain}: the {side} has no {col} values (and no MATH `level` to fall back on); "
                        "tag difficulty first (`curate tag`) or pass --difficulty-col")
    p_src = set(p.drop_nulls("difficulty")["source"])
    d_src = set(d_all.drop_nulls("difficulty")["source"])
    if p_src != d_src and not config.allow_mixed_sources:
        raise DataError(f"{domain}: pool difficulty source {sorted(p_src)} differs from the donor's {sorted(d_src)} "
                        "(curate_difficulty_source); scores from different raters are not comparable. "
                        "Pass --allow-mixed-sources to flip anyway")
    harder = config.direction(domain) == "harder"
    target = config.swap_n if config.swap_n is not None else round_half_up(config.swap_frac * len(p))
    target = min(target, len(p))
    if harder:
        out_rows = p.filter(pl.col("difficulty") <= config.easy_max).sort(["difficulty", "rank"])
        in_rows = usable.filter((pl.col("curate_domain") == domain) & (pl.col("difficulty") >= config.hard_min))
    else:
        out_rows = p.filter(pl.col("difficulty") >= config.hard_min).sort(["difficulty", "rank"], descending=[True, False])
        in_rows = usable.filter((pl.col("curate_domain") == domain) & (pl.col("difficulty") <= config.easy_max))
    n = min(target, len(out_rows), len(in_rows))
    if n < target:
        why = []
        if len(out_rows) < target:
            why.append(f"the pool has only {len(out_rows)} {domain} rows at difficulty "
                       f"{'<= ' + format(config.easy_max, 'g') if harder else '>= ' + format(config.hard_min, 'g')}")
        if len(in_rows) < target:
            excluded = d_all.filter(pl.col("dirty") | pl.col("in_pool") | pl.col("repeat"))
            why.append(f"the donor has only {len(in_rows)} usable {domain} rows at difficulty "
                       f"{'>= ' + format(config.hard_min, 'g') if harder else '<= ' + format(config.easy_max, 'g')} "
                       f"({int(excluded['in_pool'].sum())} already in the pool, {int(excluded['repeat'].sum())} repeated, "
                       f"{int(excluded['dirty'].sum())} overlapping benchmarks, {d_all['difficulty'].null_count()} without difficulty)")
        notes.append(f"{domain}: swapped {n} of the {target} asked: " + "; ".join(why))
    pairs = pl.concat([out_rows.head(n).select(pool_row="row", difficulty="difficulty"),
                       in_rows.head(n).select(donor_row="row", donor_difficulty="difficulty")], how="horizontal")
    return pairs, {"rows": len(p), "asked": target, "swapped": n}


def _no_clash(pool_ids: pa.ChunkedArray, donor_ids: pa.ChunkedArray) -> None:
    """Raise `DataError` when an id is both in the pool and in the donor (each side's ids are unique)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from curate.data.pool import all_distinct

    if all_distinct(pa.chunked_array([*pool_ids.chunks, *donor_ids.chunks], pool_ids.type)):
        return
    clash = pc.filter(pool_ids, pc.is_in(pool_ids, value_set=donor_ids.combine_chunks()))
    raise DataError(f"donor ids clash with pool ids (e.g. {min(clash.to_pylist())!r}): the same own id or the same "
                    "content in both; remove the duplicates, or load the donor with an explicit source qualifier")


def _summary(frame: pl.DataFrame) -> dict[str, dict]:
    """{domain: {"mean": mean difficulty or None, "hist": {rounded difficulty "1".."10" and "none": rows}}}
    of a frame with `curate_domain` and `difficulty`."""
    import polars as pl

    out = {}
    for domain in sorted(frame["curate_domain"].unique().cast(pl.String).to_list()):
        values = frame.filter(pl.col("curate_domain") == domain)["difficulty"]
        binned = dict(values.drop_nulls().round().cast(pl.Int64).clip(1, 10).value_counts().iter_rows())
        hist = {str(b): binned.get(b, 0) for b in BINS}
        hist["none"] = values.null_count()
        out[domain] = {"mean": values.mean(), "hist": hist}
    return out


def _report(config, pool, donor, per_domain, before, after, dirty, excluded, notes) -> OpReport:
    empty = {"mean": None, "hist": {**{str(b): 0 for b in BINS}, "none": 0}}
    hist = {d: {"before": s["hist"], "after": after.get(d, empty)["hist"]} for d, s in before.items()}

    def mean(summary, d):
        m = summary.get(d, empty)["mean"]
        return "" if m is None else f"{m:.2f}"

    lines = [
        f"- donor: `{donor.origin}` ({len(donor)} rows); difficulty column `{config.difficulty_col}`"
        + (" (MATH `level` L read as L + 1 where the column is missing)" if config.difficulty_col not in pool.column_names else ""),
        f"- easy <= {config.easy_max:g}, hard >= {config.hard_min:g}; "
        + (f"swap_n {config.swap_n}" if config.swap_n is not None else f"swap_frac {config.swap_frac:g}")
        + f"; seed {config.seed}; {'reverse (control)' if config.reverse else 'forward'}",
        *(f"- {d}: made {config.direction(d)}" for d in config.domains),
        f"- pool rows dropped as overlapping benchmarks: {len(dirty)}",
        *(f"- donor rows not used, {why}: {len(ids)}" + (f" ({', '.join(ids.head(10))}{', ...' if len(ids) > 10 else ''})"
                                                            if len(ids) else "")
          for why, ids in excluded.items()),
        *(f"- note: {n}" for n in notes),
        "", "| domain | rows | asked | swapped | mean difficulty before | after |", "|---|---|---|---|---|---|",
        *(f"| {d} | {v['rows']} | {v['asked']} | {v['swapped']} | {mean(before, d)} | {mean(after, d)} |" for d, v in per_domain.items()),
        "", "Difficulty histograms (rows per rounded difficulty):", "",
        "| difficulty | " + " | ".join(f"{d} before | {d} after" for d in hist) + " |",
        "|---|" + "---|---|" * len(hist),
        *(f"| {b} | " + " | ".join(f"{h['before'][b]} | {h['after'][b]}" for h in hist.values()) + " |"
          for b in [*map(str, BINS), "none"]),
    ]
    counts = {"rows in": len(pool), "rows out": len(pool) - len(dirty),
              **{f"{d} swapped": v["swapped"] for d, v in per_domain.items()}, "decontaminated": len(dirty)}
    return OpReport(counts, notes, {"Difficulty flip": "\n".join(lines)}, {"histograms": hist})


def run(pool: Pool, inputs: dict, config: FlipConfig, context: OpContext) -> OpResult:
    """The registry's call shape: `inputs["donor"]` is the donor pool; the result carries the
    before/after histograms as a figure."""
    import dataclasses

    result = flip(pool, inputs["donor"], config)
    histograms = result.report.data["histograms"]
    return dataclasses.replace(result, figures={"difficulty": ("Difficulty flip",
                                                               lambda path: plot_histograms(histograms, path))})


def plot_histograms(histograms: dict[str, dict[str, dict[str, int]]], path: str) -> None:
    """Before/after difficulty histograms, one panel per domain, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(histograms)), figsize=(5 * max(1, len(histograms)), 3.5), squeeze=False)
    for ax, (domain, h) in zip(axes[0], histograms.items(), strict=False):
        xs = list(BINS)
        ax.bar([x - 0.2 for x in xs], [h["before"][str(x)] for x in xs], width=0.4, label="before")
        ax.bar([x + 0.2 for x in xs], [h["after"][str(x)] for x in xs], width=0.4, label="after")
        ax.set_title(domain)
        ax.set_xlabel("difficulty (1-10)")
        ax.set_ylabel("rows")
        ax.set_xticks(xs)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
