"""Calibration before spending: does the rater agree with anything known?

`calibrate` tags a seeded sample of `config.calibrate` rows. Where rows carry native difficulty
labels (MATH level, TACO/APPS difficulty, `--native-map`), the sample is drawn from them and the
rater rates them blind (native labels are not used for the sample); its difficulty is compared,
per domain, with the native level mapped to 1-10 (`offline.NATIVE_DIFFICULTY`, the documented
level-to-scale table): Spearman's rho, Cohen's kappa with quadratic weights over the 1-10
categories, and the confusion table. Without native labels, the sample is tagged twice at
temperature > 0 with two request seeds, and the two answers of each row are compared the same
way: a rater that answers at random agrees with nothing either way.

Every run also reports the parse rate per task (rows with a value / rows asked) and the cost per
1,000 rows at the given prices. Agreement near 0 means the tags measure nothing yet: change the
rater or the prompts before tagging the pool.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from curate.tagging import offline
from curate.tagging.config import TagConfig

if TYPE_CHECKING:
    import polars as pl

    from curate.data import Pool
    from curate.progress import Progress
    from curate.tagging.tagger import TagReport

REPEAT_TEMPERATURE = 0.7  # the second-sample comparison needs sampling


@dataclass
class Agreement:
    """Rater against a reference on n rows: Spearman's rho, quadratic-weighted kappa, and the
    confusion counts {(reference, rater): n} (None where fewer than 3 rows have both)."""

    n: int
    spearman: float | None
    kappa: float | None
    confusion: dict[tuple[int, int], int]


@dataclass
class Calibration:
    """What `calibrate` measured: `reference` is "native labels" or "a second sample"."""

    rows: int
    reference: str
    agreement: dict[str, Agreement]  # by domain (native labels) or "all" (second sample)
    parse_rate: dict[str, float]  # task -> rows with a value / rows asked
    cost_per_1000: float
    answers: dict[int, int] = field(default_factory=dict)  # rater's difficulty -> rows (its spread)

    def lines(self) -> list[str]:
        """Markdown lines: a summary table, then each confusion table."""
        out = [f"Sample: {self.rows} rows; reference: {self.reference}.", "",
               "| domain | n | Spearman | quadratic-weighted kappa |", "|---|---:|---:|---:|"]
        for name, a in self.agreement.items():
            out.append(f"| {name} | {a.n} | {_num(a.spearman)} | {_num(a.kappa)} |")
        out += ["", "Parse rate: " + ", ".join(f"{t} {r:.0%}" for t, r in self.parse_rate.items()),
                f"Cost per 1,000 rows: ${self.cost_per_1000:.4f}",
                "Rater's difficulty answers: " + (", ".join(f"{k}: {v}" for k, v in sorted(self.answers.items()))
                                                   or "none")]
        for name, a in self.agreement.items():
            if not a.confusion:
                continue
            refs = sorted({r for r, _ in a.confusion})
            rated = sorted({t for _, t in a.confusion})
            out += ["", f"{name}: reference (rows) by rater (columns)", "",
                    "| | " + " | ".join(map(str, rated)) + " |", "|---" * (len(rated) + 1) + "|"]
            out += [f"| {r} | " + " | ".join(str(a.confusion.get((r, t), "")) for t in rated) + " |" for r in refs]
        return out


def calibrate(pool: Pool, config: TagConfig, progress: Progress | None = None
              ) -> tuple[Pool, pl.DataFrame, TagReport, Calibration]:
    """Tag the calibration sample of `pool`: (sample, its annotations, report, calibration)."""
    from curate.tagging.tagger import tag_pool

    table = offline.native_table(config.native_map)
    raw = offline.native_labels(pool)
    domains = pool.columns(["curate_domain"]).column("curate_domain").to_pylist()
    native = [offline.native_difficulty(v, table) if d in ("math", "code") else None for v, d in zip(raw, domains,
                                                                                                      strict=True)]
    labelled = [i for i, level in enumerate(native) if level is not None]
    candidates = labelled or list(range(len(pool)))
    rows = sorted(random.Random(config.seed).sample(candidates, min(config.calibrate, len(candidates))))
    sample = pool.take(rows)
    blind = dataclasses.replace(config, calibrate=None, then_all=False, native=False, shard=None)
    if labelled:
        annotations, report = tag_pool(sample, blind, progress)
        rated = annotations["curate_difficulty"].to_list()
        agreement = {d: agreement_of([native[i] for i in rows], rated, [domains[i] == d for i in rows])
                     for d in ("math", "code") if any(domains[i] == d for i in rows)}
        reference = "native labels (MATH level, TACO/APPS difficulty) mapped to 1-10"
    else:
        hot = max(config.temperature, REPEAT_TEMPERATURE)
        annotations, report = tag_pool(sample, dataclasses.replace(blind, temperature=hot, sample_seed=1), progress)
        second, _ = tag_pool(sample, dataclasses.replace(blind, temperature=hot, sample_seed=2), progress)
        rated = annotations["curate_difficulty"].to_list()
        agreement = {"all": agreement_of(second["curate_difficulty"].to_list(), rated, [True] * len(rows))}
        reference = f"a second sample of each row (temperature {hot}, request seeds 1 and 2)"
    asked = {t: len(rows) for t in report.tasks}
    parse_rate = {t: (asked[t] - report.failed.get(t, 0) - report.unparsed.get(t, 0)) / max(asked[t], 1)
                  for t in report.tasks}
    answers: dict[int, int] = {}
    for value in rated:
        if value is not None:
            answers[value] = answers.get(value, 0) + 1
    calibration = Calibration(len(rows), reference, agreement, parse_rate,
                              report.cost / max(len(rows), 1) * 1000, answers)
    return sample, annotations, report, calibration


def agreement_of(reference: list[int | None], rated: list[int | None], keep: list[bool]) -> Agreement:
    """Agreement of `rated` with `reference` over the rows `keep` selects where both have a value."""
    import polars as pl

    pairs = [(r, t) for r, t, k in zip(reference, rated, keep, strict=True) if k and r is not None and t is not None]
    confusion: dict[tuple[int, int], int] = {}
    for pair in pairs:
        confusion[pair] = confusion.get(pair, 0) + 1
    if len(pairs) < 3:
        return Agreement(len(pairs), None, None, confusion)
    frame = pl.DataFrame(pairs, schema=["r", "t"], orient="row")
    rho = frame.select(pl.corr("r", "t", method="spearman")).item()
    return Agreement(len(pairs), None if rho is None or rho != rho else float(rho), quadratic_kappa(pairs), confusion)


def quadratic_kappa(pairs: list[tuple[int, int]], low: int = 1, high: int = 10) -> float | None:
    """Cohen's kappa with quadratic weights, categories `low`..`high`: 1 - sum(w O) / sum(w E) with
    w_ij = (i - j)^2 / (K - 1)^2, O the observed and E the expected (outer product of the
    marginals) proportions. 1 = perfect, 0 = chance, < 0 = worse than chance."""
    k = high - low + 1
    n = len(pairs)
    observed = [[0.0] * k for _ in range(k)]
    for r, t in pairs:
        observed[r - low][t - low] += 1 / n
    rows = [sum(row) for row in observed]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    num = den = 0.0
    for i in range(k):
        for j in range(k):
            w = (i - j) ** 2 / (k - 1) ** 2
            num += w * observed[i][j]
            den += w * rows[i] * cols[j]
    return None if den == 0 else 1 - num / den


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
