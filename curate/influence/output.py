"""Writing a scored pool: the dataset card's influence sections and the token/segment side files.

`curate score`, the `score` step of a recipe and `curate demo` all write through `write_scored`, so
every scored pool carries the same card (sign and scale, settings with the query set sizes, plan,
ranking stability) and its `tokens.parquet` / `sentences.parquet` sit where `curate report` finds
them (`curate.data.side_path`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from curate.errors import UsageError

if TYPE_CHECKING:  # kept light: `curate score --help` reads SIGN_AND_SCALE without importing torch
    from curate.data import ManifestEntry, Pool
    from curate.influence.engine import ScoreResult

# What the query sets' answers are (`curate score --query-answers`, the card's `query answers`):
# reference solutions, or the model's own verified-correct answers (`curate query --answers model`).
QUERY_ANSWERS = ("reference", "model")

SIGN_AND_SCALE = """\
`curate_influence_<q>` = grad f_q(theta)^T (EK-FAC + damping I)^{-1} grad log p(z; theta), where
f_q is the mean over query set q of log p(answer | prompt) and log p(z) is summed over the
example's response tokens (prompt tokens masked). **Positive = up-weighting the example raises
the likelihood of the query answers (it helps); negative = it hurts.** The scale is a first-order
change in f_q (nats) per unit of up-weighting; with summed (not per-token) log-likelihoods, long
examples get larger magnitudes (`--normalize train` divides by the example's token count).
Scores are comparable within one run (same model, factors and damping), not across models.
`curate_influence_<q>_split<k>` are the same score against disjoint split k of the query set.
`curate_nll` is the mean response NLL per token (nats) under the scored model, `curate_tokens`
the number of response tokens scored, `curate_truncated` whether the example was cut at
--max-length."""

STABILITY_NOTE = """\
Each query set was split into disjoint, seeded halves (or K-ths); each split ranks the pool on its
own. Spearman between splits measures how much the ranking depends on the particular query
examples drawn; Spearman-Brown extrapolates it to the full query set. Below 0.7 the ranking is
flagged unstable: add query examples before selecting data by it. See `curate audit` for the
counterfactual check (does removing what the scores call helpful hurt more than removing random
rows?)."""


_QUERY_LINE = re.compile(r"^- query `(?P<query>[^`]+)`: .*\((?P<n>\d+) examples\)$", re.M)


@dataclass
class QuerySource:
    """Where a query set came from, for the card: `path` as given and its number of examples."""

    path: str
    size: int


@dataclass
class ScoredOutput:
    """The written pool (`path`: folder or file) and its side files (tokens, sentences)."""

    path: Path
    side_files: list[Path] = field(default_factory=list)


def score_card(result: ScoreResult, queries: Mapping[str, QuerySource], query_answers: str = "reference"
               ) -> dict[str, str]:
    """The dataset card sections of a scored pool, with the settings as run (`result.config`);
    `curate report` reads the query set sizes back from the `- query` lines. `query_answers` is one
    of `QUERY_ANSWERS`."""
    if query_answers not in QUERY_ANSWERS:
        raise UsageError(f"query answers {query_answers!r}: expected one of {', '.join(QUERY_ANSWERS)}")
    config = result.config
    from rich.text import Text

    card = {
        "Influence scores": SIGN_AND_SCALE,
        "Influence settings": "\n".join(
            [f"- model: `{config.model}`", f"- query answers: {query_answers}"]
            + [f"- query `{q}`: `{src.path}` ({src.size} examples)" for q, src in queries.items()]
            + [f"- {k}: `{v}`" for k, v in vars(config).items() if k != "model"]
        ),
        "Influence plan": "```\n" + Text.from_markup(result.plan.render()).plain + "\n```",
    }
    if result.stability:
        card["Ranking stability"] = STABILITY_NOTE + "\n\n```\n" + "\n".join(
            r.render() for r in result.stability.values()) + "\n```"
    return card


def card_query_sizes(card: str) -> dict[str, int]:
    """Query set name -> number of examples, read back from a card `score_card` wrote."""
    return {m["query"]: int(m["n"]) for m in _QUERY_LINE.finditer(card)}


def write_scored(pool: Pool, result: ScoreResult, out: str | Path, *, queries: Mapping[str, QuerySource],
                 query_answers: str = "reference",
                 command: str | Sequence[str] | None = None, manifest: Iterable[ManifestEntry] = (),
                 **write_options) -> ScoredOutput:
    """Write `pool` with `result`'s score columns, its card and side files; `write_options` go to
    `curate.data.write_pool` (fmt, emit, push_to_hub)."""
    from curate.data import side_path, write_pool

    path = write_pool(pool, out, annotations=result.table, command=command, manifest=manifest,
                      extra_card=score_card(result, queries, query_answers), **write_options)
    written = ScoredOutput(path)
    for name, side in (("tokens", result.tokens), ("sentences", result.sentences)):
        target = side_path(path, name)
        if side is None:
            target.unlink(missing_ok=True)  # an earlier run's file beside a file output would be read as ours
        else:
            side.write_parquet(target)
            written.side_files.append(target)
    return written
