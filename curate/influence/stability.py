"""How stable an influence ranking is across disjoint halves (or K-ths) of its query set.

`curate score --query-splits K` scores every example against K disjoint, seeded, balanced splits
of each query set (`curate_influence_<q>_split<k>`, each split's own mean log-likelihood). If the
ranking reflected the query *task* rather than the particular query examples drawn, the splits
would rank the pool alike. We report, per query set:

- the Spearman correlation of the rankings of every pair of splits (mean, min, all pairs);
- the overlap of their top-k sets (|A ∩ B| / |A|, equal-sized sets; chance level is k);
- the split size (query examples per split), stated because agreement grows with it;
- the Spearman-Brown extrapolation to the full query set, which is K splits pooled:
  rho_full = K rho / (1 + (K - 1) rho). The full set's score is exactly the size-weighted mean of
  the split scores (influence is linear in the query gradient), which is the situation the
  formula describes (for Pearson correlations; on ranks it is the usual approximation).

Disjoint splits, not bootstrap resamples: resamples share examples, so they agree more than
independent query sets would. A ranking is flagged `unstable` when the extrapolated rho is below
`UNSTABLE_BELOW` = 0.7 (Infra's ablation found rankings from 50 and 100 query examples
correlating only ~0.6-0.7, a level we treat as too noisy to select data by).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations

import polars as pl

from curate.errors import DataError, UsageError

UNSTABLE_BELOW = 0.7
TARGET = 0.9
_SPLIT = re.compile(r"^curate_influence_(?P<query>.+)_split(?P<k>\d+)$")


@dataclass
class StabilityReport:
    """Agreement of the K split rankings of one query set (see the module doc).

    query: the query set's name. splits: K. query_size: examples in the full query set (None when
    unknown). split_size: query examples per split, n / K (splits are balanced: each holds
    n // K or n // K + 1). rows: pool rows ranked (those scored in every split).
    spearman_pairs: [split a, split b, rho] for every pair; spearman_mean, spearman_min over them
    (rank correlations in [-1, 1]; 1 = identical rankings).
    top_k: the fraction of rows in a top set; top_k_overlap: mean over pairs of |A ∩ B| / |A| for
    the two splits' top sets (1 = same set; about top_k by chance).
    rho_full: Spearman-Brown extrapolation of spearman_mean to the full set (K x split_size
    examples); equal to spearman_mean when that is <= 0 (no reliability to extrapolate).
    queries_needed: query examples at which the extrapolated rho would reach `TARGET` (0.9); None
    when the split size is unknown, spearman_mean <= 0 (no estimate) or already >= 0.9.
    unstable: rho_full < threshold (`UNSTABLE_BELOW`). warning: a plain sentence when unstable.
    """

    query: str
    splits: int
    query_size: int | None
    split_size: float | None
    rows: int
    spearman_pairs: list[list[float]]
    spearman_mean: float
    spearman_min: float
    top_k: float
    top_k_overlap: float
    rho_full: float
    queries_needed: int | None
    threshold: float = UNSTABLE_BELOW
    unstable: bool = field(init=False)
    warning: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.unstable = not self.rho_full >= self.threshold
        self.warning = None
        if self.unstable:
            more = (f" (about {self.queries_needed} in all would extrapolate to {TARGET:g})"
                    if self.queries_needed else "")
            size = f"{self.split_size:.3g} query examples" if self.split_size is not None else "a split"
            self.warning = (
                f"the ranking for {self.query!r} is unstable: disjoint splits of {size} agree only at "
                f"Spearman {self.spearman_mean:.2f} (full set, extrapolated: {self.rho_full:.2f} < "
                f"{self.threshold:g}); add query examples{more} before selecting data by these scores."
            )

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (NaN never appears: undefined correlations count as 0)."""
        return asdict(self)

    def render(self) -> str:
        """A few plain lines for the terminal or a dataset card."""
        size = f"{self.split_size:.3g} queries each" if self.split_size is not None else "size unknown"
        full = f"{self.query_size} queries" if self.query_size is not None else "the full set"
        lines = [
            f"stability of {self.query!r}: {self.splits} disjoint query splits ({size}), {self.rows} rows",
            f"  split-vs-split Spearman: mean {self.spearman_mean:.3f}, min {self.spearman_min:.3f}; "
            f"top {self.top_k:.0%} overlap {self.top_k_overlap:.2f} (chance {self.top_k:.2f})",
            f"  extrapolated to {full} (Spearman-Brown): {self.rho_full:.3f} -> "
            + ("UNSTABLE" if self.unstable else "stable") + f" (threshold {self.threshold:g})",
        ]
        if self.warning:
            lines.append(f"  warning: {self.warning}")
        return "\n".join(lines)


def spearman_brown(rho: float, factor: float) -> float:
    """Reliability of a measurement `factor` times as long: factor rho / (1 + (factor - 1) rho).

    Returned unchanged for rho <= 0, where the formula has no meaning as a reliability.
    """
    if rho <= 0:
        return rho
    return factor * rho / (1 + (factor - 1) * rho)


def _factor_for(rho: float, target: float) -> float:
    """The length factor at which spearman_brown(rho, factor) == target (rho, target in (0, 1))."""
    return target * (1 - rho) / (rho * (1 - target))


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties) of two equal-length sequences; None
    when either has no spread (or fewer than 2 values)."""
    import numpy as np

    x, y = _average_ranks(np.asarray(a, dtype=np.float64)), _average_ranks(np.asarray(b, dtype=np.float64))
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    rho = float(np.corrcoef(x, y)[0, 1])
    return None if math.isnan(rho) else rho


def _average_ranks(x):
    """Ranks 0..n-1 of `x`, ties sharing their mean rank (as polars' rank("average"), less one)."""
    import numpy as np

    ranks = np.empty(len(x))
    ranks[x.argsort(kind="stable")] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def _spearman(frame: pl.DataFrame, a: str, b: str) -> float:
    return spearman(frame[a], frame[b]) or 0.0


def _top_set(frame: pl.DataFrame, column: str, n: int) -> set[str]:
    # ties broken by curate_id so the set is deterministic
    return set(frame.sort([column, "curate_id"], descending=[True, False]).head(n)["curate_id"].to_list())


def stability(table: pl.DataFrame, query: str, splits: int, query_size: int | None, *,
              top_k: float = 0.1, threshold: float = UNSTABLE_BELOW) -> StabilityReport:
    """Stability of query set `query` from `table`'s `curate_influence_<query>_split<k>` columns.

    `table` needs `curate_id` and the K = `splits` split columns; rows with a null score in any
    split are left out. `query_size` is the full query set's size (for the split size; None if
    unknown). `top_k` is a fraction in (0, 1). Raises DataError for missing columns, UsageError for
    K < 2 or top_k outside (0, 1).
    """
    if splits < 2:
        raise UsageError(f"stability needs at least 2 query splits, got {splits}")
    if not 0 < top_k < 1:
        raise UsageError(f"top_k must be in (0, 1), got {top_k}")
    columns = [f"curate_influence_{query}_split{k}" for k in range(splits)]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"missing split columns {missing} (score with --query-splits {splits})")
    frame = table.select("curate_id", *[pl.col(c).cast(pl.Float64).fill_nan(None) for c in columns]).drop_nulls()
    n_top = max(1, round(top_k * frame.height))
    pairs, overlaps = [], []
    for a, b in combinations(range(splits), 2):
        pairs.append([a, b, _spearman(frame, columns[a], columns[b]) if frame.height > 1 else 0.0])
        ta, tb = _top_set(frame, columns[a], n_top), _top_set(frame, columns[b], n_top)
        overlaps.append(len(ta & tb) / n_top if frame.height else 0.0)
    rhos = [p[2] for p in pairs]
    rho = sum(rhos) / len(rhos)
    needed = None
    split_size = query_size / splits if query_size is not None else None
    if split_size is not None and 0 < rho < TARGET:
        needed = math.ceil(_factor_for(rho, TARGET) * split_size)
    return StabilityReport(
        query=query, splits=splits, query_size=query_size, split_size=split_size, rows=frame.height,
        spearman_pairs=pairs, spearman_mean=rho, spearman_min=min(rhos), top_k=top_k,
        top_k_overlap=sum(overlaps) / len(overlaps), rho_full=spearman_brown(rho, splits),
        queries_needed=needed, threshold=threshold,
    )


def split_columns(columns: Iterable[str]) -> dict[str, int]:
    """query name -> number of split columns `curate_influence_<q>_split<k>` among `columns`."""
    found: dict[str, set[int]] = {}
    for c in columns:
        m = _SPLIT.match(c)
        if m:
            found.setdefault(m["query"], set()).add(int(m["k"]))
    return {q: len(ks) for q, ks in found.items() if ks == set(range(len(ks)))}


def stability_all(table: pl.DataFrame, columns: Iterable[str] | None = None, *,
                  query_sizes: Mapping[str, int] | None = None, top_k: float = 0.1,
                  threshold: float = UNSTABLE_BELOW) -> dict[str, StabilityReport]:
    """`stability` for every query set with >= 2 split columns among `columns` (default: the
    table's columns). `query_sizes`: query name -> full query set size, where known."""
    sizes = query_sizes or {}
    found = split_columns(table.columns if columns is None else columns)
    return {q: stability(table, q, k, sizes.get(q), top_k=top_k, threshold=threshold)
            for q, k in found.items() if k >= 2}
