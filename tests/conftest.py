"""Shared fixtures for the data-layer tests: the tiny hand-made files in tests/fixtures/data/."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture
def fixtures() -> Path:
    """The folder of tiny data files (see its ATTRIBUTION.md)."""
    return FIXTURES


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[dict]], Path]:
    """A function writing rows as JSON lines to a path (parents created) and returning the path."""

    def write(path: Path, rows: list[dict]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    return write
