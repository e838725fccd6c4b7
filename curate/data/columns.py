"""Names of the score columns curate writes, and which of them rank a pool on their own.

`curate score` writes `curate_influence_<q>` per query set q (or `curate_embedding_<q>` with
`--method embedding`), plus derived columns: `<column>_split<k>` (the score against disjoint
split k of the query set, for the stability report) and, with `--checkpoints`, `<column>_ck<i>`
(checkpoint i's own score; `<column>` is then the ensemble's). Only the main columns rank a pool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

INFLUENCE_PREFIX = "curate_influence_"
EMBEDDING_PREFIX = "curate_embedding_"
_DERIVED = re.compile(r"_(split|ck)\d+$")


def main_score_columns(columns: Iterable[str], prefix: str = INFLUENCE_PREFIX) -> list[str]:
    """The columns starting with `prefix` that are not a split's or a checkpoint's, in order."""
    return [c for c in columns if c.startswith(prefix) and not _DERIVED.search(c[len(prefix):])]
