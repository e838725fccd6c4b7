"""The linear datamodeling score (LDS; Park et al. 2023, TRAK) of a ranking, from subset fine-tunes.

Draw M seeded random subsets S_1..S_M of the pool, each `subset_frac` of its rows; fine-tune on
each and measure the query objective f_q(S_j) (nats, as the audit's arms). An attribution that
is additive predicts f_q(S_j) up to a constant by sum_{z in S_j} score(z); the LDS is the
Spearman correlation over the M subsets between the measured f_q and that sum. 1 = the scores
order the subsets exactly as the fine-tunes do; ~0 = no better than chance (a random ranking's
expected LDS is 0). The interval is a percentile bootstrap over subsets.

Any per-row value is a ranking here: the influence column, and each heuristic the audit runs
side by side (`curate.audit.counterfactual.ranking_values`: length, mid-perplexity, embedding
similarity). A row with a null value counts as the ranking's mean value. The "random" reference is not
one random ranking (whose LDS is itself a draw, sd ~ 1/sqrt(M)) but the null distribution:
`random_null` reports the mean LDS of many seeded random rankings and that distribution's 95%
range, which is what a ranking must clear to beat chance at this number of subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from curate.influence.stability import spearman

BOOTSTRAP = 2000  # resamples of the subsets behind each interval
NULL_DRAWS = 500  # random rankings behind the "random" reference
FEW_SUBSETS = 10  # below this many subsets the summary compares nothing


@dataclass
class LDSScore:
    """One ranking's LDS: spearman over the subsets (None with no spread in either variable),
    ci_low, ci_high the 95% percentile-bootstrap interval over subsets; predicted: per subset,
    the sum of the ranking's values over its rows (same order as `LDSResult.f`)."""

    name: str
    spearman: float | None
    ci_low: float | None
    ci_high: float | None
    predicted: list[float]


@dataclass
class LDSResult:
    """The LDS of every ranking on one objective. f: f_q(objective) of each subset fine-tune
    (nats); subset_size: rows per subset (of `rows`); scores: ranking name -> LDSScore."""

    objective: str
    subsets: int
    subset_frac: float
    subset_size: int
    rows: int
    f: list[float]
    scores: dict[str, LDSScore]

    def best_heuristic(self, score: str = "score") -> LDSScore | None:
        """The heuristic (not `score`, not random) with the highest LDS; None when there is none."""
        rivals = [s for n, s in self.scores.items() if n not in (score, "random") and s.spearman is not None]
        return max(rivals, key=lambda s: s.spearman, default=None)


def subset_rows(n: int, subsets: int, frac: float, seed: int) -> list[np.ndarray]:
    """The rows (sorted positions in 0..n-1) of each of `subsets` seeded random subsets of
    round(frac x n) rows, at least 1 and at most n - 1."""
    size = min(max(1, round(frac * n)), n - 1)
    return [np.sort(np.random.default_rng([seed, 1_000_003, j]).choice(n, size, replace=False))
            for j in range(subsets)]


def lds_score(name: str, f: Sequence[float], values: np.ndarray, rows: Sequence[np.ndarray], *,
              seed: int = 0, bootstrap: int = BOOTSTRAP) -> LDSScore:
    """The LDS of per-row `values` (float; NaN or infinite = null) against the measured `f` of the
    subsets `rows`. A null counts as the mean of the other rows' values (neutral: it moves no
    subset's sum relative to the others by more than its share of the mean)."""
    filled = np.asarray(values, dtype=np.float64).copy()
    finite = np.isfinite(filled)
    filled[~finite] = filled[finite].mean() if finite.any() else 0.0
    predicted = np.array([filled[r].sum() for r in rows])  # summed as listed: tied sums stay tied
    measured = np.asarray(f, dtype=np.float64)
    rho = spearman(measured, predicted)
    if rho is None:
        return LDSScore(name, None, None, None, predicted.tolist())
    rng = np.random.default_rng([seed, 2_000_003])
    draws = [spearman(measured[i], predicted[i]) for i in rng.integers(0, len(measured), (bootstrap, len(measured)))]
    kept = np.array([d for d in draws if d is not None])
    low, high = (float(np.quantile(kept, 0.025)), float(np.quantile(kept, 0.975))) if len(kept) else (None, None)
    return LDSScore(name, rho, low, high, predicted.tolist())


def random_null(f: Sequence[float], rows: Sequence[np.ndarray], n: int, *, seed: int = 0,
                draws: int = NULL_DRAWS) -> LDSScore:
    """The LDS of `draws` seeded random rankings of `n` rows: spearman = their mean, ci_low /
    ci_high = the 2.5% / 97.5% quantiles of that null distribution; predicted is empty."""
    sums = _membership(rows, n) @ np.random.default_rng([seed, 3_000_017]).standard_normal((draws, n)).T
    rhos = [r for r in (spearman(f, sums[:, d]) for d in range(draws)) if r is not None]
    if not rhos:
        return LDSScore("random", None, None, None, [])
    return LDSScore("random", float(np.mean(rhos)), float(np.quantile(rhos, 0.025)), float(np.quantile(rhos, 0.975)),
                    [])


def lds_summary(result: LDSResult, score: str = "score") -> str:
    """One sentence: the score's LDS against the best heuristic's, and whether the intervals separate."""
    own = result.scores.get(score)
    if own is None or own.spearman is None:
        return "The score's LDS is undefined (no spread in the subsets' f_q or in the score sums)."
    text = f"The score's LDS is {own.spearman:+.2f} [{own.ci_low:+.2f}, {own.ci_high:+.2f}]"
    if result.subsets < FEW_SUBSETS:
        return (text + f" over only {result.subsets} subsets: too few for the interval or a comparison with "
                "the heuristics to mean much (use 32 or more).")
    null = result.scores.get("random")
    if null is not None and null.spearman is not None:
        text += f" (95% of random rankings fall in [{null.ci_low:+.2f}, {null.ci_high:+.2f}])"
    rival = result.best_heuristic(score)
    if rival is None:
        return text + "; no heuristic was measured beside it."
    versus = f"the best heuristic's ({rival.name}: {rival.spearman:+.2f} [{rival.ci_low:+.2f}, {rival.ci_high:+.2f}])"
    if own.ci_low > rival.ci_high:
        return f"{text}, above {versus}, with intervals that do not overlap."
    if own.ci_high < rival.ci_low:
        return f"{text}, below {versus}, with intervals that do not overlap."
    return f"{text}; {versus} is within its interval: no separation at this number of subsets."


def _membership(rows: Sequence[np.ndarray], n: int) -> np.ndarray:
    """(subsets, n) 0/1 matrix: entry (j, i) = 1 when row i is in subset j (subset sums by one matmul)."""
    member = np.zeros((len(rows), n))
    for j, r in enumerate(rows):
        member[j, r] = 1.0
    return member
