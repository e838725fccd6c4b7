"""Regenerate the reference part of docs/operations.md from the registry.

Run:  python scripts/docs_operations.py   (tests/test_registry.py fails while the file is stale)
"""

from pathlib import Path

from curate.registry import reference

MARKER = "do not edit below -->\n\n"

path = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
head = path.read_text().split(MARKER, 1)[0]
path.write_text(head + MARKER + reference())
print(f"wrote {path}")
