"""The report's sections, each written into a `_Doc`: aggregates with 95% CIs by grouping, ranking
stability across query splits, the counterfactual audit, and the top examples per query set with
their token highlights (top 5% tokens by token influence) and segment influence.
"""

from __future__ import annotations

import functools
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from curate.analysis import (
    EASY_MAX,
    GROUPINGS,
    HARD_MIN,
    MIN_GROUP,
    audit_tables,
    charted,
    group_column,
    influence_aggregates,
    query_name,
    stability_table,
)
from curate.audit.lds import lds_summary
from curate.errors import DataError
from curate.report.document import _cell, _Doc, _md_cell, _md_escape
from curate.report.figures import _bars, _rank_scatter

if TYPE_CHECKING:
    from curate.audit.counterfactual import AuditResult

DEFAULT_TOKENIZER = Path(__file__).parents[1] / "resources" / "smollm2_tokenizer"
TOKEN_FRACTION = 0.05
SNIPPET = 300
# Aggregate sections in page order: (table key, title, bars along, bars side by side within a group).
SECTIONS = (
    ("domain", "Mean influence by training domain", "domain", None),
    ("difficulty_band", f"Mean influence by difficulty band (curate's 1-10 scale: easy <= {EASY_MAX}, "
     f"hard >= {HARD_MIN}, as curate flip)", "difficulty_band", None),
    ("difficulty", "Mean influence by difficulty", "difficulty", None),
    ("domain_difficulty", "Mean influence by training domain and difficulty", "domain", "difficulty"),
    ("type", "Mean influence by question type", "type", None),
    ("source", "Mean influence by source", "source", None),
    ("behavior", "Mean influence with each behaviour present (count > 0) or absent", "behavior", "present"),
)


def _aggregate_sections(doc: _Doc, frame: pl.DataFrame) -> None:
    """A chart and a table per `SECTIONS` entry the pool has columns for."""
    tables = influence_aggregates(frame)
    for key, title, x, hue in SECTIONS:
        if key not in tables:
            continue
        column = group_column(frame, key) if key in GROUPINGS else None
        doc.heading(title + (f" (column {column})" if column not in (None, key) else ""))
        table, shown = tables[key], charted(tables[key])
        if len(shown):
            doc.figure(f"mean_by_{key}", _bars(shown, x, hue), title)
            doc.para("Charted groups: " + "; ".join(
                f"{r['query']} / {' / '.join(_cell(r[k]) or 'unknown' for k in (x, hue) if k)}: n={r['n']}"
                for r in shown.iter_rows(named=True)) + ".")
        if len(shown) < len(table):
            doc.para(f"{len(table) - len(shown)} group(s) with fewer than {MIN_GROUP} examples are in the table "
                     "only: an interval over so few examples says little.")
        doc.table(table)


def _stability_section(doc: _Doc, frame: pl.DataFrame, sizes: dict[str, int]) -> None:
    """Split-vs-split agreement of every query set scored in >= 2 disjoint splits; nothing if none."""
    from curate.influence.stability import stability_all

    reports = stability_all(frame, query_sizes=sizes)
    if not reports:
        return
    doc.heading("Ranking stability across disjoint query splits")
    doc.para("Each query set was also scored in K disjoint splits of its examples. spearman_mean / min: rank "
             "correlation of the pool's rankings by every pair of splits (1 = identical). top_k_overlap: shared "
             "fraction of the two splits' top top_k rows (about top_k by chance). rho_full: Spearman-Brown "
             "extrapolation to the full query set; below 0.7 the ranking is flagged unstable. queries_needed: "
             "query examples at which rho_full would reach 0.9.")
    unknown = sorted(r.query for r in reports.values() if r.split_size is None)
    if unknown:
        doc.para(f"Split size unknown for {', '.join(unknown)}: no dataset card beside the pool records the "
                 "query set sizes, so split_size and queries_needed are left empty.")
    doc.table(stability_table(reports))
    for report in reports.values():
        if report.warning:
            doc.para(f"Warning: {report.warning}")
    doc.figure("stability", _rank_scatter(frame, reports), "ranks by query split 0 against split 1")


def _audit_section(doc: _Doc, result: AuditResult) -> None:
    """The counterfactual audit: verdict, setup and cost, arms (chart and table), comparisons."""
    tables = audit_tables(result)
    seeds = max((len(a.delta) for a in result.arms.values()), default=0)
    doc.heading("Counterfactual audit")
    doc.para(f"Verdict: {result.verdict.summary}.")
    trained = f"the proxy {result.trained} (PROXY MODE: not the base model)" if result.proxy else result.trained
    doc.para(f"Ranked by {result.score_column}; objective: f_q of query set {result.objective} (mean summed "
             f"log-likelihood of its answers, nats). Each arm fine-tunes {trained} on the {result.rows}-row pool "
             f"without {result.removed} rows, over {seeds} seed(s). Cost: {result.fine_tunes} fine-tunes, "
             f"{result.tokens:,} tokens.")
    for note in result.notes:
        doc.para(f"Note: {note}")
    doc.heading("Arms: change in the objective, f_q(arm) - f_q(full)", 3)
    arms = tables["arms"].select(query=pl.lit(result.objective), arm="arm", mean="delta_mean",
                                 ci_low=pl.col("delta_mean") - pl.col("delta_std"))
    doc.figure("audit_arms", _bars(arms, "arm", ylabel="delta f_q, nats (1 std over seeds)"),
               "change in the query objective per audit arm")
    doc.table(tables["arms"])
    doc.heading("Paired comparisons over seeds: delta(a) - delta(b)", 3)
    doc.para("z = mean difference / (std / sqrt(seeds)); empty without spread. hurt_more: the arm whose removal "
             "lowered f_q more. expected: the sign the verdict needs.")
    doc.table(tables["comparisons"])
    doc.heading("Objective before fine-tuning (f_start) and of the scored model (f_model)", 3)
    doc.table(tables["references"])
    if result.lds is not None:
        lds = result.lds
        doc.heading("Linear datamodeling score (LDS)", 3)
        doc.para(f"{lds.subsets} fine-tunes on random subsets of {lds.subset_size} of the {lds.rows} rows. LDS = "
                 f"Spearman correlation over the subsets between the measured f_q({lds.objective}) and the sum of "
                 "each ranking's values over the subset's rows (1 = the ranking orders the subsets as the fine-tunes "
                 "do, 0 = chance); ci: 95% bootstrap over subsets, except for random: the mean LDS of many seeded "
                 "random rankings and the range 95% of them fall in. " + lds_summary(lds))
        doc.table(tables["lds"])


def top_rows(frame: pl.DataFrame, column: str, top: int) -> pl.DataFrame:
    """The `top` rows of `frame` with the highest non-null, non-NaN `column`."""
    return frame.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan()).sort(column, descending=True).head(top)


def _top_section(doc: _Doc, frame: pl.DataFrame, column: str, top: int, responses: dict[str, str],
                 tokens: pl.DataFrame | None, sentences: pl.DataFrame | None, tokenizer) -> None:
    """The `top` highest-influence examples on `column`, with their token and segment views."""
    q = query_name(column)
    best = top_rows(frame, column, top)
    ids = best["curate_id"].to_list()
    doc.heading(f"Top {len(ids)} examples for query set {q}")
    doc.table(pl.DataFrame({
        "curate_id": ids,
        "domain": best["curate_domain"].to_list() if "curate_domain" in best.columns else [None] * len(ids),
        "influence": best[column].to_list(),
        "response": [responses.get(i, "")[:SNIPPET] for i in ids],
    }, schema_overrides={"domain": pl.Utf8}))
    key = f"token_influence_{q}"
    if tokens is not None and key in tokens.columns:
        decode = _decoder(tokenizer)
        doc.heading(f"Top {TOKEN_FRACTION:.0%} words by token influence, top examples ({q})", 3)
        doc.para(TOKEN_LEGEND.format(pct=f"{TOKEN_FRACTION:.0%}"))
        if doc.fmt == "html":
            doc.raw(_LEGEND_HTML)
        rows = {r["curate_id"]: r for r in tokens.filter(pl.col("curate_id").is_in(ids)).iter_rows(named=True)}
        for i in ids:
            if i in rows and rows[i][key] is not None:  # `--tokens-top` scores each set's top rows only
                doc.raw(_tokens_block(doc.fmt, i, rows[i]["token_ids"], rows[i][key], decode))
    key = f"segment_influence_{q}"
    if sentences is not None and key in sentences.columns:
        doc.heading(f"Segment influence of the top examples ({q})", 3)
        for i in ids:
            segs = sentences.filter(pl.col("curate_id") == i).sort("segment")
            if len(segs):
                doc.raw(_segments_block(doc.fmt, i, segs, key))


def top_token_positions(scores: list[float | None], fraction: float = TOKEN_FRACTION) -> set[int]:
    """Positions of the ceil(fraction * T) scores largest in magnitude, either sign (ties: earlier
    first; null and NaN never count)."""
    values = [(-(abs(s) if s is not None and not math.isnan(s) else -math.inf), k) for k, s in enumerate(scores)]
    k = math.ceil(fraction * len(scores))
    return {pos for v, pos in sorted(values)[:k] if v != math.inf}


def words(pieces: list[str], scores: list[float | None]) -> list[tuple[str, float]]:
    """Tokens merged into words, each with the sum of its tokens' scores.

    A word starts at a token that begins with whitespace or follows whitespace (whitespace-only
    tokens trail the word before them), so sub-word fragments (the `<` of `<|begin_of_thought|>`, the `2` of `12`) are shown and
    scored with the word they belong to. Null scores count as 0. The words' texts concatenate to
    the response; their scores sum to the example's instance score.
    """
    out: list[tuple[str, float]] = []
    for text, score in zip(pieces, scores, strict=True):
        value = 0.0 if score is None or math.isnan(score) else float(score)
        starts = text[:1].isspace() or (out and out[-1][0][-1:].isspace())
        if out and (not starts or not text.strip()):  # whitespace-only tokens trail their word
            out[-1] = (out[-1][0] + text, out[-1][1] + value)
        else:
            out.append((text, value))
    return out


TOKEN_LEGEND = (
    "Words are coloured by the sum of their tokens' influence on the query set: green raises the query "
    "answers' log-likelihood when the example is up-weighted, red lowers it; the stronger the colour, the "
    "larger the magnitude (relative to the example's strongest word). Only the top {pct} of words by magnitude "
    "are coloured; hover a word for its value. The lines under each example list its strongest words both ways."
)


def _tokens_block(fmt: str, curate_id: str, ids: list[int], scores: list[float], decode) -> str:
    """One example's response with its strongest words (either sign) coloured, then the top words."""
    spans = words([decode(t) for t in ids], scores)
    marked = top_token_positions([v for _, v in spans])
    scale = max((abs(v) for _, v in spans), default=0.0) or 1.0
    parts = []
    for k, (text, value) in enumerate(spans):
        if k in marked:
            alpha = 0.25 + 0.6 * abs(value) / scale
            color = f"rgba(46,160,67,{alpha:.2f})" if value >= 0 else f"rgba(218,54,51,{alpha:.2f})"
            body = text.strip()  # whitespace around the word stays uncoloured
            start = len(text) - len(text.lstrip())
            parts.append(f'{html.escape(text[:start])}<mark class="tok" style="background:{color}" '
                         f'title="{value:.4g}">{html.escape(body)}</mark>{html.escape(text[start + len(body):])}')
        else:
            parts.append(html.escape(text))
    ranked = sorted((v, text.strip()) for text, v in spans if text.strip())
    best = ", ".join(f"{_short(t)} {v:+.3g}" for v, t in reversed(ranked[-5:]) if v > 0) or "none"
    worst = ", ".join(f"{_short(t)} {v:+.3g}" for v, t in ranked[:5] if v < 0) or "none"
    summary = f"raises most: {best}; lowers most: {worst}"
    if fmt == "md":
        return f"**{_md_escape(curate_id)}**\n\n<pre>{''.join(parts)}</pre>\n\n{_md_escape(summary)}"
    return (f'<p><b>{html.escape(curate_id)}</b></p><div class="resp">{"".join(parts)}</div>'
            f'<p class="words">{html.escape(summary)}</p>')


def _short(text: str, limit: int = 24) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


_LEGEND_HTML = (
    '<p class="legend">colour scale: <span class="sw" style="background:rgba(218,54,51,.85)">lowers most</span>'
    '<span class="sw" style="background:rgba(218,54,51,.3)">lowers</span>'
    '<span class="sw" style="background:rgba(46,160,67,.3)">raises</span>'
    '<span class="sw" style="background:rgba(46,160,67,.85)">raises most</span></p>'
)


def _segments_block(fmt: str, curate_id: str, segs: pl.DataFrame, key: str) -> str:
    values = segs[key].to_list()
    if fmt == "md":
        frame = segs.select("segment", pl.col("text").str.slice(0, 200), pl.col(key).alias("influence"))
        lines = [f"**{_md_escape(curate_id)}**", "", "| segment | text | influence |", "|---|---|---|"]
        lines += [f"| {s} | {_md_cell(t)} | {_cell(v)} |" for s, t, v in frame.iter_rows()]
        return "\n".join(lines)
    scale = max((abs(v) for v in values if v is not None), default=0.0) or 1.0
    spans = []
    for text, v in zip(segs["text"].to_list(), values, strict=True):
        alpha = 0.0 if v is None else min(1.0, abs(v) / scale) * 0.6
        color = f"rgba(46,160,67,{alpha:.2f})" if (v or 0) >= 0 else f"rgba(218,54,51,{alpha:.2f})"
        spans.append(f'<span class="seg" style="background:{color}" title="{_cell(v)}">{html.escape(text)}'
                     f"<sub>[{_cell(v)}]</sub></span> ")
    return f'<p><b>{html.escape(curate_id)}</b> (green helps, red hurts)</p><div class="resp">{"".join(spans)}</div>'


@functools.lru_cache(maxsize=4)
def _decoder(tokenizer: str | Path | None):
    """A function token id -> text, from a `tokenizer.json` (or a folder holding one); loaded once."""
    from tokenizers import Tokenizer

    path = Path(tokenizer) if tokenizer is not None else DEFAULT_TOKENIZER
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no tokenizer.json to decode token ids with (--tokenizer)")
    tok = Tokenizer.from_file(str(file))
    return lambda tid: tok.decode([int(tid)], skip_special_tokens=False)
