"""Scoring as an operation: `run` (the registry's call shape) and the scored pool's card.

`curate score`, the `score` step of a recipe and `curate demo` all go through `run` and
`curate.ops.write_result`, so every scored pool carries the same card (sign and scale, settings
with the query set sizes, plan, ranking stability) and its `tokens.parquet` / `sentences.parquet`
sit where `curate report` finds them (`curate.data.side_path`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curate.errors import UsageError

if TYPE_CHECKING:  # kept light: `curate score --help` reads SIGN_AND_SCALE without importing torch
    from curate.data import Pool
    from curate.influence.config import ScoreConfig
    from curate.influence.engine import ScoreResult
    from curate.results import OpContext, OpResult

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


EMBEDDING_NOTE = """\
`curate_embedding_<q>` = cos(e(z), m_q): e(z) is the example's mean-pooled last hidden state
(prompt and response) and m_q the mean of query set q's normalised embeddings (RDS+, Humane et al.).
In [-1, 1]; higher = more like the query set. A similarity baseline, not an influence estimate."""

_QUERY_LINE = re.compile(r"^- query `(?P<query>[^`]+)`: .*\((?P<n>\d+) examples\)$", re.M)


@dataclass
class QuerySource:
    """Where a query set came from, for the card: `path` as given and its number of examples."""

    path: str
    size: int


def score_card(result: ScoreResult, queries: Mapping[str, QuerySource]) -> dict[str, str]:
    """The dataset card sections of a scored pool, with the settings as run (`result.config`);
    `curate report` reads the query set sizes back from the `- query` lines."""
    config = result.config
    from rich.text import Text

    card = {
        "Influence scores": SIGN_AND_SCALE,
        "Influence settings": "\n".join(
            [f"- model: `{config.model}`", f"- query answers: {config.query_answers}"]
            + [f"- query `{q}`: `{src.path}` ({src.size} examples)" for q, src in queries.items()]
            + [f"- {k}: `{v}`" for k, v in vars(config).items() if k not in ("model", "query_answers")]
        ),
        "Influence plan": "```\n" + Text.from_markup(result.plan.render()).plain + "\n```",
    }
    if result.checkpoints:
        card["Checkpoint ensemble"] = (
            "`curate_influence_<q>` (and its splits) is the weighted mean over these models, each scored on its "
            "own; `curate_influence_<q>_ck<i>` is model i's score. curate_nll, curate_tokens and curate_truncated "
            "are the final model's (highest step).\n\n" + "\n".join(
                f"- ck{i}: `{c.path}` (weight {c.weight:.4g}" + ("" if c.step is None else f", step {c.step}") + ")"
                for i, c in enumerate(result.checkpoints)))
    if result.stability:
        card["Ranking stability"] = STABILITY_NOTE + "\n\n```\n" + "\n".join(
            r.render() for r in result.stability.values()) + "\n```"
    return card


def card_query_sizes(card: str) -> dict[str, int]:
    """Query set name -> number of examples, read back from a card `score_card` wrote."""
    return {m["query"]: int(m["n"]) for m in _QUERY_LINE.finditer(card)}


def run(pool: Pool, inputs: dict, config: ScoreConfig, context: OpContext, *, model=None,
        tokenizer=None) -> OpResult:
    """The registry's call shape: `inputs["queries"]` maps each query set's name to its pool;
    resumable state lives in `context.work_dir` (required). The rows are unchanged; the scores
    are `annotations`, the token / sentence tables `side` files, the `ScoreResult` is
    `report.data["score"]` (a `--shard` job that did its part: `result.pending`, no table).

    `model`/`tokenizer`: already loaded (tests, the demo), else `config.model` is loaded."""
    from curate.influence.engine import score_pool
    from curate.results import OpReport, OpResult

    queries: dict[str, Pool] = inputs["queries"]
    if config.method == "embedding":
        from curate.influence.embedding import embedding_table

        table = embedding_table(pool, queries, config, model=model, tokenizer=tokenizer, progress=context.progress)
        card = {"Embedding scores": EMBEDDING_NOTE + "\n\n" + "\n".join(
            [f"- model: `{config.model}`"] + [f"- query `{q}`: `{p.origin}` ({len(p)} examples)" for q, p in queries.items()]
            + [f"- {k}: `{getattr(config, k)}`" for k in ("max_length", "batch_tokens", "dtype")])}
        return OpResult(pool, [], OpReport({"rows": len(table), "columns": table.columns[1:]}, [], card), annotations=table)
    if context.work_dir is None:
        raise UsageError("scoring needs a work folder for its stages (OpContext.work_dir)")
    from curate.data.pool import ExampleSequence

    # The pool's text is read as the stages need it (a batch at a time), never held whole.
    examples, query_examples = ExampleSequence(pool), {q: list(p.examples()) for q, p in queries.items()}
    if config.checkpoints:
        from curate.influence.ensemble import score_checkpoints

        if model is not None:
            raise UsageError("checkpoints are loaded one by one: pass no model with them")
        result = score_checkpoints(examples, query_examples, config, context.work_dir, overwrite=context.overwrite,
                                   progress=context.progress)
    else:
        result = score_pool(examples, query_examples, config, context.work_dir, overwrite=context.overwrite,
                            progress=context.progress, model=model, tokenizer=tokenizer)
    if result.pending:
        return OpResult(pool, [], OpReport(notes=[result.pending], data={"score": result}))
    sources = {q: QuerySource(p.origin, len(p)) for q, p in queries.items()}
    counts = {"rows": len(result.table), "columns": result.columns}
    return OpResult(pool, [], OpReport(counts, [], score_card(result, sources), {"score": result}),
                    annotations=result.table, side={"tokens": result.tokens, "sentences": result.sentences})
