"""Render a scored pool's influence analyses as one HTML page or a Markdown file with PNGs.

    render_report("scored.parquet", "report.html")             # self-contained: images are data URIs
    render_report("scored/", "report.md", fmt="md", top=10)     # report.md plus report_<figure>.png
    render_report("scored/", "report.html", audit="audit/")     # with the counterfactual audit

The page has histograms of influence by training domain per query set; mean influence with 95%
intervals (`curate.analysis`) by domain, difficulty, domain x difficulty, question type, source and
behaviour present/absent, as charts and tables, wherever the pool has those columns; the ranking
stability of query sets scored in disjoint splits (`curate.influence.stability`); the counterfactual
audit's verdict, arms and comparisons when `audit` is given; and the top examples per query set.
Where `tokens.parquet` sits next to the pool, each top example's response is shown with its top 5%
tokens by token influence on that query set marked; where `sentences.parquet` does, its segments
are shown with their influence.

The pieces: `document` (the Markdown/HTML writer), `figures` (matplotlib PNGs), `sections` (what
each section shows). Importing this package is cheap: matplotlib and tokenizers load on first use.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.analysis import influence_columns, load_audit, query_name
from curate.data import side_path
from curate.errors import DataError, UsageError
from curate.report.document import _Doc
from curate.report.figures import _histograms
from curate.report.sections import (
    DEFAULT_TOKENIZER,
    SECTIONS,
    SNIPPET,
    TOKEN_FRACTION,
    _aggregate_sections,
    _audit_section,
    _stability_section,
    _top_section,
    top_rows,
    top_token_positions,
    words,
)

__all__ = [
    "DEFAULT_TOKENIZER",
    "FORMATS",
    "SECTIONS",
    "SNIPPET",
    "TOKEN_FRACTION",
    "query_sizes",
    "render_report",
    "top_token_positions",
    "words",
]

FORMATS = ("html", "md")
UNITS = ("How to read a score: it is the first-order change, in nats, of the query set's mean log-likelihood "
         "per unit of extra weight on the example in the training loss (a mean over examples). Adding one more "
         "copy of an example to a pool of N examples is about 1/N of a unit, so a score of 2,000 in a pool of "
         "10,000 predicts about +0.2 nats. Summed log-likelihoods make long examples score larger, and the "
         "scale depends on the model and the damping: compare scores within one report, not across runs.")


def render_audit_card(result, out_dir: str | Path) -> Path:
    """`curate audit`'s card, OUT/README.md (Markdown, its chart as README_audit_arms.png beside it):
    the same audit section `render_report(..., audit=...)` shows, LDS included."""
    doc = _Doc("md", Path(out_dir) / "README.md")
    doc.heading(f"curate audit: {result.score_column}", 1)
    _audit_section(doc, result)
    doc.write(f"curate audit: {result.score_column}")
    return doc.out


def render_report(pool_path: str | Path, out_path: str | Path, fmt: str = "html", top: int = 20,
                  tokenizer: str | Path | None = None, audit: str | Path | None = None) -> Path:
    """Write the influence report of the scored pool at `pool_path` to `out_path`; return `out_path`.

    `fmt`: "html" (one self-contained page) or "md" (Markdown, PNG figures written beside it as
    `<stem>_<figure>.png`). `top`: examples listed per query set, highest influence first.
    `tokenizer`: a folder holding `tokenizer.json` (or the file itself) used to decode token ids
    for the token highlights; default the packaged SmolLM2 tokenizer. It must be the tokenizer of
    the model that scored the pool, else the highlighted text is wrong.
    `audit`: `curate audit`'s output folder or its results.json; adds the audit's section.
    Raises `DataError` when the pool has no influence columns or `audit` is not an audit's
    results, `UsageError` for a bad option. Nothing is written when it raises.
    """
    from curate.data import load_pool

    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if top < 1:
        raise UsageError(f"top must be >= 1, got {top}")
    audit_result = load_audit(audit) if audit is not None else None
    pool = load_pool(pool_path)
    from curate.analysis import GROUPINGS

    # Scores, tags and group labels only: the text stays on disk.
    groups = {c for names in GROUPINGS.values() for c in names}
    frame = pl.from_arrow(pool.columns([c for c in pool.column_names if c.startswith("curate_") or c in groups]))
    columns = influence_columns(frame)
    if not columns:
        raise DataError(f"{pool_path}: no curate_influence_<q> columns; score the pool first (`curate score`)")
    doc = _Doc(fmt, Path(out_path))

    tokens_file, sentences_file = side_path(pool_path, "tokens"), side_path(pool_path, "sentences")
    tokens = pl.read_parquet(tokens_file) if tokens_file.is_file() else None
    sentences = pl.read_parquet(sentences_file) if sentences_file.is_file() else None
    doc.heading(f"Influence report: {pool_path}", 1)
    doc.para(f"{len(frame)} examples; query sets: {', '.join(query_name(c) for c in columns)}; token scores: "
             f"{'yes' if tokens is not None else 'no'}; segment scores: {'yes' if sentences is not None else 'no'}. "
             "Positive influence means up-weighting the example raises the likelihood of the query answers. "
             "Intervals are 95% normal approximations, mean +/- 1.96 std / sqrt(n); null where n < 2.")
    doc.para(UNITS)
    doc.heading("Distribution by training domain")
    doc.figure("histograms", _histograms(frame, columns), "influence histograms by domain")
    _aggregate_sections(doc, frame)
    _stability_section(doc, frame, query_sizes(pool_path))
    if audit_result is not None:
        _audit_section(doc, audit_result)
    shown = {i for column in columns for i in top_rows(frame, column, top)["curate_id"].to_list()}
    responses = {ex.id: ex.response for ex in pool.examples() if ex.id in shown}
    for column in columns:
        _top_section(doc, frame, column, top, responses, tokens, sentences, tokenizer)
    doc.write(f"curate report: {pool_path}")
    return doc.out


def query_sizes(pool_path: str | Path) -> dict[str, int]:
    """Query set name -> examples, from the dataset card `curate score` wrote beside the pool
    (`README.md` in a pool folder, `<stem>.README.md` beside a file); {} where there is none."""
    from curate.data.write import output_paths
    from curate.influence.output import card_query_sizes

    path = Path(pool_path)
    card = output_paths(path, "disk" if path.is_dir() else path.suffix.lstrip("."))[2]
    if not card.is_file():
        return {}
    return card_query_sizes(card.read_text(encoding="utf-8"))
