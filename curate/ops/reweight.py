"""`reweight`: shift a mixture by repeating or sampling rows by a weight column.

A row with weight w appears floor(w) times, plus once more with probability w - floor(w) (a coin
seeded by the row's curate_id, so the draw does not depend on row order); weight 0 drops it.
`keep_size` first rescales the weights so their sum is the pool's size (the output's expected
size). Copies get the id `<curate_id>#w<k>` (k = 2, 3, ...) and sit right after the original.
Every copy is an `added` manifest entry and every dropped row a `removed` one, with the weight.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import MISSING, dataclass

from curate.data import ManifestEntry, Pool
from curate.errors import DataError
from curate.results import OpContext, OpReport, OpResult
from curate.settings import Problem, check_settings, raise_problems, setting


@dataclass(frozen=True)
class ReweightConfig:
    """How to reweight."""

    by: str = setting(MISSING, "Column of non-negative weights (e.g. one you computed from scores).")
    keep_size: bool = setting(False, "Rescale the weights to sum to the pool size.")
    seed: int = setting(0, "Seed of the fractional-weight coins.")

    def __post_init__(self) -> None:
        raise_problems(self, check_settings(self) + ([] if self.by else [Problem("{by}: give a weight column")]))


def _coin(seed: int, curate_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{curate_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def reweight(pool: Pool, config: ReweightConfig) -> OpResult:
    """Repeat or drop rows by weight (see the module docstring); the input schema is kept."""
    columns = pool.column_names
    if config.by not in columns:
        raise DataError(f"reweight: no column {config.by!r} (columns: {', '.join(columns)})")
    narrow = pool.columns(["curate_id", config.by])
    ids, weights = narrow.column("curate_id").to_pylist(), narrow.column(config.by).to_pylist()
    for i, w in enumerate(weights):
        if w is None or not isinstance(w, int | float) or math.isnan(w) or w < 0:
            raise DataError(f"reweight: row {i} ({ids[i]}): weight {w!r} in {config.by!r} is not a number >= 0")
    total = float(sum(weights))
    if total == 0:
        raise DataError(f"reweight: every weight in {config.by!r} is 0; nothing would be kept")
    scale = len(weights) / total if config.keep_size else 1.0

    rows: list[int] = []
    new_ids: list[str] = []
    manifest: list[ManifestEntry] = []
    for i, (cid, w) in enumerate(zip(ids, weights, strict=True)):
        w = w * scale
        copies = math.floor(w) + (_coin(config.seed, cid) < w - math.floor(w))
        if copies == 0:
            manifest.append(ManifestEntry(cid, "removed", f"reweight:zero drawn 0 copies at weight {w:.4g}"))
        for k in range(copies):
            rows.append(i)
            new_ids.append(cid if k == 0 else f"{cid}#w{k + 1}")
            if k:
                manifest.append(ManifestEntry(new_ids[-1], "added", f"reweight:copy {k + 1} of {cid} at weight {w:.4g}"))
    import pyarrow as pa

    from curate.data.rows import ColumnRows

    copies = pool.take(rows)
    out = copies.with_rows(ColumnRows(copies.rows, pa.table({"curate_id": pa.array(new_ids, pa.string())})))
    counts = {"rows in": len(pool), "rows out": len(rows),
              "copies added": sum(e.action == "added" for e in manifest),
              "rows dropped": sum(e.action == "removed" for e in manifest)}
    card = {"Reweighting": (f"Weights from `{config.by}`" + (" rescaled to sum to the pool size" if config.keep_size else "")
                            + f"; seed {config.seed}. " + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ".")}
    return OpResult(out, manifest, OpReport(counts=counts, card=card))


def run(pool: Pool, inputs: dict, config: ReweightConfig, context: OpContext) -> OpResult:
    """The registry's call shape (no inputs besides the pool)."""
    return reweight(pool, config)
