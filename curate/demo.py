"""`run_demo`: the pipeline on the bundled sample pool, offline, with the packaged model.

Steps (each capability joins as it is built): inspect the pool; tag it offline (native labels,
rules); difficulty-flip it with the bundled donor, decontaminated against the demo's query sets;
strip post-answer exploration from the flipped pool (offline rules, the Infra ablation);
score a subset by influence on a math and a code query set with SmolLM2-135M-Instruct; prune that
subset by influence. Every step writes a dataset with its manifest and card under `out`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SAMPLE = Path(__file__).parent / "resources" / "sample"
QUERY_SETS = {"math": SAMPLE / "queries" / "math.jsonl", "code": SAMPLE / "queries" / "code.jsonl"}


@dataclass
class DemoConfig:
    """out: folder for everything the demo writes. examples: pool rows to score, split evenly
    between math and code. queries: answers per query set. max_length: token bound (longer rows
    are cut and reported). modules: the tracked Linears; the demo tracks the MLPs of SmolLM2's last
    4 of 30 blocks, so the backward passes stop there and the run takes a few minutes on 2 CPU
    cores (all 30 blocks and the full 80-row pool take well over 15 minutes). score: False skips
    the model step (and the pruning that needs its scores)."""

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


@dataclass
class DemoResult:
    """What each step produced: reports for the CLI to render, and the paths written."""

    stats: dict
    tag_report: object
    flip_report: object
    strip_report: object | None = None
    score: object | None = None
    domains: dict[str, str] = field(default_factory=dict)  # curate_id -> domain of the scored rows
    prune_report: object | None = None
    written: list[Path] = field(default_factory=list)


def demo_subset(pool, n: int) -> tuple[list[int], list[int]]:
    """Rows kept (the first n/2 math and n - n/2 code rows, in pool order) and rows left out."""
    domains = pool.dataset["curate_domain"]
    math = [i for i, d in enumerate(domains) if d == "math"][: n // 2]
    code = [i for i, d in enumerate(domains) if d == "code"][: n - len(math)]
    keep = sorted(math + code)
    kept = set(keep)
    return keep, [i for i in range(len(pool)) if i not in kept]


def _tagged(path: Path, out: Path, source: str, progress) -> tuple:
    """Tag a sample file offline and write it; returns (reloaded tagged pool, report, path)."""
    from curate.data import load_pool, write_pool
    from curate.tagging import TagConfig, tag_pool

    pool = load_pool(path, source=source)
    annotations, report = tag_pool(pool, TagConfig(offline=True), progress=progress)
    written = write_pool(pool, out, annotations=annotations, command="curate demo", extra_card=report.card())
    return load_pool(written), report, written


def run_demo(config: DemoConfig, progress=None, on_stats=None) -> DemoResult:
    """Run the demo. `on_stats` receives the pool's inspect numbers as soon as they are known."""
    from curate.data import ManifestEntry, load_pool, pool_stats, write_pool
    from curate.ops import FlipConfig, PruneConfig, StripConfig, flip, load_benchmarks, prune, strip

    out = Path(config.out)
    stats = pool_stats(load_pool(SAMPLE / "pool.jsonl", source="sample")).as_dict()
    if on_stats is not None:
        on_stats(stats)

    pool, tag_report, tagged_path = _tagged(SAMPLE / "pool.jsonl", out / "tagged", "sample", progress)
    donor, _, donor_path = _tagged(SAMPLE / "donor.jsonl", out / "donor-tagged", "donor", progress)
    benchmarks = load_benchmarks(list(QUERY_SETS.values()))
    flipped = flip(pool, donor, FlipConfig(decontaminate=tuple(str(p) for p in QUERY_SETS.values())), benchmarks)
    result = DemoResult(stats, tag_report, flipped.report, written=[tagged_path, donor_path])
    result.written.append(write_pool(flipped.pool, out / "flipped", manifest=flipped.manifest,
                                     command="curate demo", extra_card=flipped.report.card))
    stripped = strip(flipped.pool, StripConfig(offline=True))
    result.strip_report = stripped.report
    result.written.append(write_pool(stripped.pool, out / "no-exploration", manifest=stripped.manifest,
                                     command="curate demo", extra_card=stripped.report.card))
    if not config.score:
        return result

    from curate.cli.score import SIGN_AND_SCALE
    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool

    keep, left_out = demo_subset(pool, config.examples)
    subset = pool.with_dataset(pool.dataset.select(keep))
    queries = {name: list(load_pool(path, source=f"query-{name}").examples())[: config.queries]
               for name, path in QUERY_SETS.items()}
    score_config = ScoreConfig(model="smollm2-135m", max_length=config.max_length, modules=config.modules,
                               fit_max_length=config.max_length, batch_tokens=2048)
    result.score = score_pool(list(subset.examples()), queries, score_config, out / "score.work", progress=progress)
    result.domains = dict(zip(subset.dataset["curate_id"], subset.dataset["curate_domain"], strict=True))
    ids = pool.dataset["curate_id"]
    manifest = [ManifestEntry(ids[i], "removed", f"demo:subset not among the --examples {config.examples} scored rows")
                for i in left_out]
    scored_path = write_pool(subset, out / "scored", annotations=result.score.table, manifest=manifest,
                             command="curate demo", extra_card={"Influence scores": SIGN_AND_SCALE})
    result.written.append(scored_path)

    pruned = prune(load_pool(scored_path), PruneConfig(keep=0.5))
    result.prune_report = pruned.report
    result.written.append(write_pool(pruned.pool, out / "pruned", manifest=pruned.manifest,
                                     command="curate demo", extra_card=pruned.report.card))
    return result
