"""Render a scored pool's influence analyses as one HTML page or a Markdown file with PNGs.

    render_report("scored.parquet", "report.html")             # self-contained: images are data URIs
    render_report("scored/", "report.md", fmt="md", top=10)     # report.md plus report_<figure>.png

The page has histograms of influence by training domain per query set, mean influence by domain
and by difficulty with 95% intervals (`curate.analysis`), the aggregate tables, and the top
examples per query set. Where `tokens.parquet` sits next to the pool, each top example's response
is shown with its top 5% tokens by token influence on that query set marked; where
`sentences.parquet` does, its segments are shown with their influence.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curate.analysis import difficulty_column, influence_aggregates, influence_columns, query_name
from curate.errors import DataError, UsageError

FORMATS = ("html", "md")
DEFAULT_TOKENIZER = Path(__file__).parent / "resources" / "smollm2_tokenizer"
TOKEN_FRACTION = 0.05
SNIPPET = 300

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.resp{white-space:pre-wrap;font-family:monospace;font-size:.85em;border:1px solid #ddd;padding:.6em;
max-height:24em;overflow:auto}mark.tok{background:#ffd54f}.seg{border-radius:3px}.seg sub{color:#555}
img{max-width:100%}"""


def side_path(pool_path: str | Path, name: str) -> Path:
    """Where `curate score` writes side file `name` (tokens, sentences) for the output `pool_path`."""
    path = Path(pool_path)
    if path.is_dir():
        return path / f"{name}.parquet"
    return path.with_name(f"{path.name.split('.')[0]}.{name}.parquet")


@dataclass
class _Doc:
    """The report under construction: Markdown or HTML blocks, and the figures they reference."""

    fmt: str
    out: Path
    blocks: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>" if self.fmt == "html"
                           else f"{'#' * level} {_md_escape(text)}")

    def para(self, text: str) -> None:
        self.blocks.append(f"<p>{html.escape(text)}</p>" if self.fmt == "html" else _md_escape(text))

    def raw(self, block: str) -> None:
        self.blocks.append(block)

    def figure(self, name: str, png: bytes, alt: str) -> None:
        if self.fmt == "html":
            data = base64.b64encode(png).decode("ascii")
            self.blocks.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        else:
            file = f"{self.out.stem}_{name}.png"
            self.figures[file] = png
            self.blocks.append(f"![{_md_escape(alt)}]({file})")

    def table(self, frame: pl.DataFrame) -> None:
        rows = [[_cell(v) for v in row] for row in frame.iter_rows()]
        if self.fmt == "html":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
            numeric = [frame[c].dtype.is_numeric() for c in frame.columns]
            body = "".join("<tr>" + "".join(f'<td{" class=num" if n else ""}>{html.escape(v)}</td>'
                                            for v, n in zip(row, numeric, strict=True)) + "</tr>" for row in rows)
            self.blocks.append(f"<table><tr>{head}</tr>{body}</table>")
        else:
            lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
            self.blocks.append("\n".join(lines))

    def write(self, title: str) -> None:
        if self.fmt == "html":
            text = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{_CSS}</style></head><body>\n" + "\n".join(self.blocks) + "\n</body></html>\n")
        else:
            text = "\n\n".join(self.blocks) + "\n"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for file, png in self.figures.items():
            _atomic_write(self.out.parent / file, png)
        _atomic_write(self.out, text.encode("utf-8"))


def render_report(pool_path: str | Path, out_path: str | Path, fmt: str = "html", top: int = 20,
                  tokenizer: str | Path | None = None) -> Path:
    """Write the influence report of the scored pool at `pool_path` to `out_path`; return `out_path`.

    `fmt`: "html" (one self-contained page) or "md" (Markdown, PNG figures written beside it as
    `<stem>_<figure>.png`). `top`: examples listed per query set, highest influence first.
    `tokenizer`: a folder holding `tokenizer.json` (or the file itself) used to decode token ids
    for the token highlights; default the packaged SmolLM2 tokenizer. It must be the tokenizer of
    the model that scored the pool, else the highlighted text is wrong.
    Raises `DataError` when the pool has no influence columns, `UsageError` for a bad option.
    """
    from curate.data import load_pool

    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if top < 1:
        raise UsageError(f"top must be >= 1, got {top}")
    pool = load_pool(pool_path)
    frame = pl.from_arrow(pool.dataset.data.table)
    columns = influence_columns(frame)
    if not columns:
        raise DataError(f"{pool_path}: no curate_influence_<q> columns; score the pool first (`curate score`)")
    tables = influence_aggregates(frame)
    doc = _Doc(fmt, Path(out_path))

    tokens_file, sentences_file = side_path(pool_path, "tokens"), side_path(pool_path, "sentences")
    tokens = pl.read_parquet(tokens_file) if tokens_file.is_file() else None
    sentences = pl.read_parquet(sentences_file) if sentences_file.is_file() else None
    queries = [query_name(c) for c in columns]
    doc.heading(f"Influence report: {pool_path}", 1)
    doc.para(f"{len(frame)} examples; query sets: {', '.join(queries)}; token scores: "
             f"{'yes' if tokens is not None else 'no'}; segment scores: {'yes' if sentences is not None else 'no'}. "
             "Positive influence means up-weighting the example raises the likelihood of the query answers. "
             "Intervals are 95% normal approximations, mean +/- 1.96 std / sqrt(n); null where n < 2.")

    doc.heading("Distribution by training domain")
    doc.figure("histograms", _histograms(frame, columns), "influence histograms by domain")
    for key, title in (("domain", "Mean influence by training domain"), ("difficulty", "Mean influence by difficulty")):
        if key in tables:
            doc.heading(title + (f" ({difficulty_column(frame)})" if key == "difficulty" else ""))
            doc.figure(f"mean_by_{key}", _bars(tables[key], key, title), title)
            doc.table(tables[key])
    if "behavior" in tables:
        doc.heading("Mean influence by behaviour present (count > 0) or absent")
        doc.table(tables["behavior"])

    responses = {ex.id: ex.response for ex in pool.examples()}
    decode = None
    for column in columns:
        q = query_name(column)
        best = (frame.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan())
                .sort(column, descending=True).head(top))
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
            if decode is None:
                decode = _decoder(tokenizer)
            doc.heading(f"Top {TOKEN_FRACTION:.0%} tokens of the top examples ({q})", 3)
            rows = {r["curate_id"]: r for r in tokens.filter(pl.col("curate_id").is_in(ids)).iter_rows(named=True)}
            for i in ids:
                if i in rows:
                    doc.raw(_tokens_block(doc.fmt, i, rows[i]["token_ids"], rows[i][key], decode))
        key = f"segment_influence_{q}"
        if sentences is not None and key in sentences.columns:
            doc.heading(f"Segment influence of the top examples ({q})", 3)
            for i in ids:
                segs = sentences.filter(pl.col("curate_id") == i).sort("segment")
                if len(segs):
                    doc.raw(_segments_block(doc.fmt, i, segs, key))
    doc.write(f"curate report: {pool_path}")
    return doc.out


def top_token_positions(scores: list[float | None], fraction: float = TOKEN_FRACTION) -> set[int]:
    """Positions of the ceil(fraction * T) highest-influence tokens (ties: earlier first)."""
    values = [(-(s if s is not None and not math.isnan(s) else -math.inf), k) for k, s in enumerate(scores)]
    k = math.ceil(fraction * len(scores))
    return {pos for _, pos in sorted(values)[:k]}


def _tokens_block(fmt: str, curate_id: str, ids: list[int], scores: list[float], decode) -> str:
    marked = top_token_positions(scores)
    parts = []
    for k, (tid, score) in enumerate(zip(ids, scores, strict=True)):
        text = html.escape(decode(tid))
        if k in marked:
            parts.append(f'<mark class="tok" title="{score:.4g}">{text}</mark>')
        else:
            parts.append(text)
    label = html.escape(curate_id)
    if fmt == "md":
        return f"**{_md_escape(curate_id)}**\n\n<pre>{''.join(parts)}</pre>"
    return f'<p><b>{label}</b></p><div class="resp">{"".join(parts)}</div>'


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


def _decoder(tokenizer: str | Path | None):
    """A function token id -> text, from a `tokenizer.json` (or a folder holding one)."""
    from tokenizers import Tokenizer

    path = Path(tokenizer) if tokenizer is not None else DEFAULT_TOKENIZER
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no tokenizer.json to decode token ids with (--tokenizer)")
    tok = Tokenizer.from_file(str(file))
    return lambda tid: tok.decode([int(tid)], skip_special_tokens=False)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md_escape(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _md_cell(value) -> str:
    return _md_escape(_cell(value)).replace("\n", " ")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


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


def _bars(table: pl.DataFrame, key: str, title: str) -> bytes:
    """One panel per query set: mean influence per group with 95% interval error bars."""
    plt = _pyplot()
    queries = table["query"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(queries), figsize=(5 * len(queries), 3.5), squeeze=False)
    for ax, q in zip(axes[0], queries, strict=True):
        part = table.filter(pl.col("query") == q)
        labels = [_cell(v) or "unknown" for v in part[key].to_list()]
        means = part["mean"].to_numpy()
        errors = (part["mean"] - part["ci_low"]).fill_null(0.0).to_numpy()
        ax.bar(range(len(labels)), means, yerr=errors, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(labels)), labels)
        ax.axhline(0, color="#444", linewidth=0.8)
        ax.set_title(f"{title}: {q}", fontsize=10)
        ax.set_xlabel(f"training {key}" if key == "domain" else key)
        ax.set_ylabel("mean influence")
    return _png(fig)


def _png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
