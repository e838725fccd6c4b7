"""The report's matplotlib figures as PNG bytes: influence histograms by training domain, grouped
bars of means with error bars, and split-vs-split rank scatter plots for ranking stability.

matplotlib loads on first use, with the Agg backend (never opens a window).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import polars as pl

from curate.analysis import query_name
from curate.report.document import _cell

if TYPE_CHECKING:
    from curate.influence.stability import StabilityReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _histograms(frame: pl.DataFrame, columns: list[str]) -> bytes:
    """One panel per query set: overlaid histograms of influence per training domain."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.5), squeeze=False)
    domains = frame["curate_domain"].fill_null("unknown") if "curate_domain" in frame.columns \
        else pl.Series(["all"] * len(frame))
    for ax, column in zip(axes[0], columns, strict=True):
        for domain in sorted(set(domains.to_list())):
            values = frame[column].filter(domains == domain).drop_nulls().drop_nans().to_numpy()
            if len(values):
                ax.hist(values, bins=30, alpha=0.5, label=f"{domain} (n={len(values)})")
        ax.axvline(0, color="#444", linewidth=0.8)
        ax.set_title(f"query set: {query_name(column)}")
        ax.set_xlabel("influence")
        ax.legend(fontsize=8)
    return _png(fig)


def _bars(table: pl.DataFrame, x: str, hue: str | None = None, ylabel: str = "mean influence (95% CI)") -> bytes:
    """One panel per query set: `mean` per `x` group with error bars down to `ci_low` and as far up.

    `table`: rows with `query`, `x`, `mean`, `ci_low` (and `hue`); groups keep the table's order.
    With `hue`, each group has a bar per `hue` value side by side (values sorted, null last).
    """
    plt = _pyplot()
    queries = table["query"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(queries), figsize=(5 * len(queries), 3.5), squeeze=False)
    for ax, q in zip(axes[0], queries, strict=True):
        part = table.filter(pl.col("query") == q)
        groups = part[x].unique(maintain_order=True).to_list()
        hues = part[hue].unique().sort(nulls_last=True).to_list() if hue else [None]
        width = 0.8 / len(hues)
        for j, value in enumerate(hues):
            bars = part.filter(pl.col(hue).eq_missing(value)) if hue else part
            offset = (j - (len(hues) - 1) / 2) * width
            ax.bar([groups.index(g) + offset for g in bars[x].to_list()], bars["mean"].to_numpy(), width,
                   yerr=(bars["mean"] - bars["ci_low"]).fill_null(0.0).to_numpy(), capsize=3,
                   label=f"{hue} = {_cell(value) or 'unknown'}" if hue else None)
        ax.set_xticks(range(len(groups)), [_cell(g) or "unknown" for g in groups],
                      rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
        ax.axhline(0, color="#444", linewidth=0.8)
        ax.set_title(f"query set: {q}", fontsize=10)
        ax.set_xlabel(f"training {x}" if x == "domain" else x)
        ax.set_ylabel(ylabel)
        if hue:
            ax.legend(fontsize=7)
    return _png(fig)


def _rank_scatter(frame: pl.DataFrame, reports: dict[str, StabilityReport]) -> bytes:
    """One panel per query set: each pool row's rank (1 = most helpful) by split 0 against split 1."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(reports), figsize=(4 * len(reports), 4), squeeze=False)
    for ax, report in zip(axes[0], reports.values(), strict=True):
        a, b = (f"curate_influence_{report.query}_split{k}" for k in (0, 1))
        scores = frame.select(pl.col(a).cast(pl.Float64).fill_nan(None), pl.col(b).cast(pl.Float64).fill_nan(None))
        ranks = scores.drop_nulls().select(pl.all().rank("average", descending=True))
        ax.scatter(ranks[a].to_numpy(), ranks[b].to_numpy(), s=8, alpha=0.6)
        ax.plot([1, max(len(ranks), 1)], [1, max(len(ranks), 1)], color="#444", linewidth=0.8)
        ax.set_title(f"{report.query}: Spearman {report.spearman_pairs[0][2]:.2f}", fontsize=10)
        ax.set_xlabel("rank by query split 0")
        ax.set_ylabel("rank by query split 1")
    return _png(fig)


def _png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
