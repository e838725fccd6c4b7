"""Contamination check of `curate validate`: does a training variant contain an evaluated problem?

    found = check_contamination({"pool": pool, "flip": flip}, problems, ngram=13)
    found   # {"flip": {"gsm8k exact": 1, "math500 13gram": 2}}: only variants with a hit

A hit is a training row whose problem text equals an evaluated problem's (normalised) or shares
`ngram` consecutive words with one, as `curate.ops.decontam` decides for `curate flip`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.evaluation.benchmarks import CODE_INSTRUCTION, MATH_INSTRUCTION, Problem

if TYPE_CHECKING:
    from curate.data import Pool


def check_contamination(pools: dict[str, Pool], problems: list[Problem], ngram: int = 13) -> dict[str, dict[str, int]]:
    """{variant: {"<benchmark> <exact|Ngram>": rows}} for every variant with a row whose problem
    equals an evaluated problem (normalised) or shares `ngram` consecutive words with one. The
    benchmarks' fixed instructions are removed from their prompts first (they are not the problem)."""
    import polars as pl

    from curate.ops.decontam import Benchmark, contaminated_rows, normalise

    by_source: dict[str, list[str]] = {}
    for problem in problems:
        text = problem.prompt.replace(MATH_INSTRUCTION, "").replace(CODE_INSTRUCTION, "")
        by_source.setdefault(problem.source, []).append(text)
    benches = [Benchmark(src, normalise(pl.Series(texts, dtype=pl.String)).to_list()) for src, texts in by_source.items()]
    found = {}
    for name, pool in pools.items():
        rows = contaminated_rows(pool, benches, ngram)
        if not rows.is_empty():
            counts = rows.group_by("reason").len().sort("reason")
            found[name] = {r.removeprefix("decontam:").replace(":", " "): n for r, n in counts.iter_rows()}
    return found


def describe(found: dict[str, int]) -> str:
    """One variant's hits as text: "gsm8k exact: 1, math500 13gram: 2"."""
    return ", ".join(f"{reason}: {n}" for reason, n in found.items())
