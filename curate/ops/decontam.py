"""Decontamination: find pool (or donor) rows whose problem overlaps an evaluation set.

A row overlaps a benchmark when, after normalisation (lower case, every run of characters other
than letters and digits -> one space, so LaTeX markup and punctuation do not matter), its problem
equals a benchmark problem, or the two share a run of `ngram` consecutive words (default 13, the
GPT-3 / Llama contamination convention). A problem is the first user turn of the row without
Bespoke-Stratos' fixed math/code prefixes (for prompt/response shapes, the prompt column).
Both checks are vectorised (a join and an Aho-Corasick `contains_any`), so a 114k-row pool takes
seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curate.data.text import problem_texts

if TYPE_CHECKING:
    import polars as pl

    from curate.data import Pool

DEFAULT_NGRAM = 13


@dataclass(frozen=True)
class Benchmark:
    """An evaluation set: `name` (its file name) and its problems, normalised."""

    name: str
    problems: list[str]


def normalise(texts: pl.Series) -> pl.Series:
    """Lower case, runs of non-letter/digit characters -> one space, trimmed."""
    return texts.fill_null("").str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


def load_benchmarks(paths: Sequence[str | Path]) -> list[Benchmark]:
    """Read evaluation sets with the data layer (any pool shape: MATH-500, GSM8K, MBPP, ...)."""
    from curate.data import load_pool

    out = []
    for path in paths:
        pool = load_pool(path, source="bench")
        out.append(Benchmark(Path(str(path)).name, normalise(problem_texts(pool)).to_list()))
    return out


def overlaps(problems: pl.Series, benchmarks: Sequence[Benchmark], ngram: int = DEFAULT_NGRAM) -> pl.Series:
    """Per row, why its normalised problem overlaps a benchmark (`decontam:<bench>:exact` or
    `decontam:<bench>:<n>gram`), or null. `problems` must already be `normalise`d. The first
    benchmark that matches is named; within one, an exact match is reported before an n-gram."""
    import polars as pl

    frame = pl.DataFrame({"p": problems.fill_null("")}).with_columns(reason=pl.lit(None, pl.String))
    for bench in benchmarks:
        grams: set[str] = set()
        for p in bench.problems:
            words = p.split()
            grams.update(" " + " ".join(words[i:i + ngram]) + " " for i in range(len(words) - ngram + 1))
        exact = pl.col("p").is_in([p for p in bench.problems if p]) & (pl.col("p") != "")
        shared = (pl.lit(" ") + pl.col("p") + pl.lit(" ")).str.contains_any(sorted(grams)) if grams else pl.lit(False)
        found = (pl.when(exact).then(pl.lit(f"decontam:{bench.name}:exact"))
                 .when(shared).then(pl.lit(f"decontam:{bench.name}:{ngram}gram")))
        frame = frame.with_columns(pl.col("reason").fill_null(found))
    return frame["reason"]


def contaminated_rows(pool: Pool, benchmarks: Sequence[Benchmark], ngram: int = DEFAULT_NGRAM) -> pl.DataFrame:
    """`curate_id`, `row` (0-based) and `reason` of every row of `pool` that overlaps."""
    import polars as pl

    if not benchmarks:
        return pl.DataFrame(schema={"curate_id": pl.String, "row": pl.Int64, "reason": pl.String})
    reasons = overlaps(normalise(problem_texts(pool)), benchmarks, ngram)
    ids = pl.from_arrow(pool.columns(["curate_id"]).column("curate_id")).cast(pl.String)
    frame = pl.DataFrame({"curate_id": ids.rename("curate_id"), "reason": reasons}).with_row_index("row")
    return frame.filter(pl.col("reason").is_not_null()).select(
        "curate_id", pl.col("row").cast(pl.Int64), "reason")


def summarise(found: pl.DataFrame, what: str) -> Mapping[str, int]:
    """{reason: rows} for a report."""
    counts = found.group_by("reason").len().sort("reason")
    return {f"{what} {r}": n for r, n in counts.iter_rows()}


def decontaminate(pool: Pool, paths: Sequence[str | Path], ngram: int = DEFAULT_NGRAM):
    """Drop every row of `pool` that overlaps one of the benchmark files: an `OpResult` whose
    manifest lists each dropped row with its `decontam:<bench>:<how>` reason (nothing to do
    without paths). Used by the write path of every command; flip and prune also call
    `contaminated_rows` themselves, for their donor and their keep fraction."""
    from curate.data import ManifestEntry
    from curate.results import OpReport, OpResult

    found = contaminated_rows(pool, load_benchmarks(paths), ngram) if paths else None
    if found is None or found.is_empty():
        return OpResult(pool, [], OpReport(counts={"decontaminated": 0}))
    import numpy as np

    dropped = set(found["row"].to_list())
    kept = pool.take(np.setdiff1d(np.arange(len(pool)), found["row"].to_numpy()))
    manifest = [ManifestEntry(i, "removed", r) for i, r in found.select("curate_id", "reason").iter_rows()]
    counts = {"decontaminated": len(dropped), **summarise(found, "dropped")}
    return OpResult(kept, manifest, OpReport(counts=counts, card={"Decontamination": ", ".join(
        f"{k}: {v}" for k, v in counts.items())}))
