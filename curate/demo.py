"""`run_demo`: the pipeline on the bundled sample pool, offline, with the packaged model.

Today: inspect the pool, write it back (the write path with its manifest and card), and score a
subset by influence on a math and a code query set with SmolLM2-135M-Instruct. Each capability
joins the demo as it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SAMPLE = Path(__file__).parent / "resources" / "sample"


@dataclass
class DemoConfig:
    """out: folder for everything the demo writes. examples: pool rows to score, split evenly
    between math and code. queries: answers per query set. max_length: token bound (longer rows
    are cut and reported). modules: the tracked Linears; the demo tracks the MLPs of SmolLM2's last
    4 of 30 blocks, so the backward passes stop there and the run takes a few minutes on 2 CPU
    cores (all 30 blocks and the full 80-row pool take well over 15 minutes). score: False skips
    the model step."""

    out: Path = Path("curate-demo")
    examples: int = 8
    queries: int = 8
    max_length: int = 768
    modules: str = r"layers\.(2[6-9])\.mlp\."
    score: bool = True

    def __post_init__(self) -> None:
        from curate.errors import UsageError

        if self.examples < 2 or self.queries < 1:
            raise UsageError("the demo needs at least 2 examples and 1 query per set")


def demo_subset(pool, n: int) -> tuple[list[int], list[int]]:
    """Rows kept (the first n/2 math and n - n/2 code rows, in pool order) and rows left out."""
    domains = pool.dataset["curate_domain"]
    math = [i for i, d in enumerate(domains) if d == "math"][: n // 2]
    code = [i for i, d in enumerate(domains) if d == "code"][: n - len(math)]
    keep = sorted(math + code)
    kept = set(keep)
    return keep, [i for i in range(len(pool)) if i not in kept]


def run_demo(config: DemoConfig, progress=None, on_stats=None):
    """Run the demo; returns (ScoreResult or None, paths written).

    `on_stats` receives the pool's inspect numbers (a dict) as soon as they are known."""
    from curate.data import ManifestEntry, load_pool, pool_stats, write_pool

    out = Path(config.out)
    pool = load_pool(SAMPLE / "pool.jsonl", source="sample")
    if on_stats is not None:
        on_stats(pool_stats(pool).as_dict())
    written = [write_pool(pool, out / "pool", command="curate demo")]
    if not config.score:
        return None, written

    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool

    keep, left_out = demo_subset(pool, config.examples)
    subset = pool.with_dataset(pool.dataset.select(keep))
    queries = {}
    for name in ("math", "code"):
        qpool = load_pool(SAMPLE / "queries" / f"{name}.jsonl", source=f"query-{name}")
        queries[name] = list(qpool.examples())[: config.queries]
    score_config = ScoreConfig(model="smollm2-135m", max_length=config.max_length, modules=config.modules,
                               fit_max_length=config.max_length, batch_tokens=2048)
    result = score_pool(list(subset.examples()), queries, score_config, out / "score.work", progress=progress)
    ids = pool.dataset["curate_id"]
    manifest = [ManifestEntry(ids[i], "removed", f"not in the demo subset (--examples {config.examples})")
                for i in left_out]
    from curate.cli.score import SIGN_AND_SCALE

    written.append(write_pool(subset, out / "scored", annotations=result.table, manifest=manifest,
                              command="curate demo", extra_card={"Influence scores": SIGN_AND_SCALE}))
    return result, written
