"""Segmenters: split a response into the spans whose influence `--sentences` measures.

Infra leaves the unit open; each segmenter returns (start, end) character spans of the response
text, in order, that do not overlap. Removing a span gives the counterfactual example z without y.
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? (optionally closed by quotes/brackets) followed by whitespace, or at a
# line break; math like "3.5" or "e.g. x" stays whole because the full stop needs a space after.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_STEP_BREAK = re.compile(r"\n\s*\n")
_MARKERS = re.compile(r"<\|begin_of_thought\|>|<\|end_of_thought\|>|<\|begin_of_solution\|>|<\|end_of_solution\|>|<think>|</think>")

SEGMENTERS = ("sentences", "steps", "blocks")
SEGMENT_METHODS = ("ablation", "linear")  # see curate.influence.segment_scores


def _spans_between(text: str, breaks: re.Pattern) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in breaks.finditer(text):
        if text[start : match.end()].strip():
            spans.append((start, match.end()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def segment(text: str, how: str) -> list[tuple[int, int]]:
    """Spans of `text` by `how`:

    sentences: sentence by sentence (each span keeps its trailing whitespace);
    steps: paragraphs separated by blank lines (`\\n\\n`, the usual reasoning step);
    blocks: the text between reasoning markers (Sky-T1 `<|begin_of_thought|>`... and R1 `<think>`),
        i.e. the thought and the solution, markers kept in place.
    Spans holding only whitespace or markers are skipped.
    """
    if how == "sentences":
        return _spans_between(text, _SENTENCE_END)
    if how == "steps":
        return _spans_between(text, _STEP_BREAK)
    if how == "blocks":
        spans, start = [], 0
        for match in _MARKERS.finditer(text):
            if text[start : match.start()].strip():
                spans.append((start, match.start()))
            start = match.end()
        if text[start:].strip():
            spans.append((start, len(text)))
        return spans
    raise ValueError(f"unknown segmenter {how!r}; choose from {', '.join(SEGMENTERS)}")
