"""The report under construction (`_Doc`): Markdown or HTML blocks, tables, figures, the page CSS.

HTML inlines figures as data URIs; Markdown references `<stem>_<figure>.png` files written beside
it. Files are written atomically (temp name, then rename).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curate.stages import atomic_write_bytes

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.resp{white-space:pre-wrap;font-family:monospace;font-size:.85em;border:1px solid #ddd;padding:.6em;
max-height:24em;overflow:auto}mark.tok{border-radius:2px;padding:0}
.legend .sw{display:inline-block;padding:1px 8px;margin-right:4px;border-radius:3px}.words{font-size:.85em;color:#333}.seg{border-radius:3px}.seg sub{color:#555}
img{max-width:100%}"""


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
            atomic_write_bytes(self.out.parent / file, png)
        atomic_write_bytes(self.out, text.encode("utf-8"))


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

