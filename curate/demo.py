"""`run_demo`: the pipeline on the bundled sample pool, offline, with the packaged model.

Steps (each capability joins as it is built): inspect the pool; run the sample recipe
(`recipes/sample.yaml`: offline tags, difficulty flip with the bundled donor decontaminated
against the demo's query sets, exploration stripping, length pruning); score a subset by
influence on a math and a code query set with SmolLM2-135M-Instruct; prune that subset by
influence, and render the influence report (`out/report.html`); then a tiny validation run
(`curate validate`: a few LoRA SFT steps of SmolLM2 on the sample pool and on the recipe's output,
each evaluated with the untrained base on a handful of GSM8K and MBPP problems). Every step
writes a dataset with its manifest and card under `out`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SAMPLE = Path(__file__).parent / "resources" / "sample"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sample.yaml"
QUERY_SETS = {"math": SAMPLE / "queries" / "math.jsonl", "code": SAMPLE / "queries" / "code.jsonl"}


@dataclass
class DemoConfig:
    """out: folder for everything the demo writes. examples: pool rows to score, split evenly
    between math and code. queries: answers per query set. max_length: token bound (longer rows
    are cut and reported). modules: the tracked Linears; the demo tracks the MLPs of SmolLM2's last
    4 of 30 blocks, so the backward passes stop there and the run takes a few minutes on 2 CPU
    cores (all 30 blocks and the full 80-row pool take well over 15 minutes). score: False skips
    the model step (and the pruning that needs its scores). tokens: also score every response token
    (exact, by forward-mode AD), so the report highlights each top example's most influential
    tokens. validate: False skips the validation
    run; validate_steps: optimizer steps per variant (2 examples each); validate_problems:
    problems per benchmark (GSM8K, MBPP). The validation is a plumbing demonstration: a few steps
    on a handful of problems measure nothing about the recipe."""

    out: Path = Path("curate-demo")
    examples: int = 8
    queries: int = 8
    max_length: int = 768
    modules: str = r"layers\.(2[6-9])\.mlp\."
    score: bool = True
    tokens: bool = True
    validate: bool = True
    validate_steps: int = 2
    validate_problems: int = 3

    def __post_init__(self) -> None:
        from curate.errors import UsageError

        if self.examples < 2 or self.queries < 1:
            raise UsageError("the demo needs at least 2 examples and 1 query per set")


@dataclass
class DemoResult:
    """What each step produced: reports for the CLI to render, and the paths written."""

    stats: dict
    recipe: object  # curate.recipes.RunResult of recipes/sample.yaml
    score: object | None = None
    domains: dict[str, str] = field(default_factory=dict)  # curate_id -> domain of the scored rows
    prune_report: object | None = None
    validation: dict | None = None  # curate validate's results.json
    written: list[Path] = field(default_factory=list)


def demo_subset(pool, n: int) -> tuple[list[int], list[int]]:
    """Rows kept (the first n/2 math and n - n/2 code rows, in pool order) and rows left out."""
    domains = pool.dataset["curate_domain"]
    math = [i for i, d in enumerate(domains) if d == "math"][: n // 2]
    code = [i for i, d in enumerate(domains) if d == "code"][: n - len(math)]
    keep = sorted(math + code)
    kept = set(keep)
    return keep, [i for i in range(len(pool)) if i not in kept]


def run_demo(config: DemoConfig, progress=None, on_stats=None) -> DemoResult:
    """Run the demo. `on_stats` receives the pool's inspect numbers as soon as they are known."""
    from curate.data import load_pool, pool_stats
    from curate.errors import DataError
    from curate.recipes import run_recipe

    out = Path(config.out)
    pool = load_pool(SAMPLE / "pool.jsonl", source="sample")
    if on_stats is not None:
        on_stats(pool_stats(pool).as_dict())
    if not RECIPE.exists():
        raise DataError(f"{RECIPE} not found: `curate demo` runs from a source checkout (make demo)")
    recipe = run_recipe(RECIPE, progress=progress, output=out / "recipe" / "sample.parquet")
    result = DemoResult(pool_stats(pool).as_dict(), recipe, written=[recipe.output])
    if config.score:
        _score_and_prune(config, pool, result, progress)
    if config.validate:
        result.validation = _validate(config, recipe.output, progress)
        result.written.append(out / "validate" / "results.json")
    return result


def _score_and_prune(config: DemoConfig, pool, result: DemoResult, progress) -> None:
    """Score a balanced subset with SmolLM2, write it with the report, prune it by influence."""
    from curate.data import ManifestEntry, load_pool, write_pool
    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool
    from curate.influence.output import QuerySource, write_scored
    from curate.ops import PruneConfig, prune
    from curate.report import render_report

    keep, left_out = demo_subset(pool, config.examples)
    subset = pool.with_dataset(pool.dataset.select(keep))
    queries = {name: list(load_pool(path, source=f"query-{name}").examples())[: config.queries]
               for name, path in QUERY_SETS.items()}
    score_config = ScoreConfig(model="smollm2-135m", max_length=config.max_length, modules=config.modules,
                               fit_max_length=config.max_length, batch_tokens=2048, tokens=config.tokens)
    out = Path(config.out)
    result.score = score_pool(list(subset.examples()), queries, score_config, out / "score.work", progress=progress)
    result.domains = dict(zip(subset.dataset["curate_id"], subset.dataset["curate_domain"], strict=True))
    ids = pool.dataset["curate_id"]
    manifest = [ManifestEntry(ids[i], "removed", f"demo:subset not among the --examples {config.examples} scored rows")
                for i in left_out]
    sources = {name: QuerySource(str(QUERY_SETS[name].relative_to(SAMPLE.parent)), len(q))
               for name, q in queries.items()}
    scored = write_scored(subset, result.score, out / "scored", queries=sources,
                          command="curate demo", manifest=manifest)
    result.written.extend([scored.path, *scored.side_files])
    result.written.append(render_report(scored.path, out / "report.html"))
    pruned = prune(load_pool(scored.path), PruneConfig(keep=0.5))
    result.prune_report = pruned.report
    result.written.append(write_pool(pruned.pool, out / "pruned", manifest=pruned.manifest,
                                     command="curate demo", extra_card=pruned.report.card))


def _validate(config: DemoConfig, recipe_output: Path, progress) -> dict:
    """A few LoRA steps of SmolLM2 on the sample pool and on the recipe output, then evaluation."""
    from curate.training.config import TrainConfig
    from curate.validate import ValidateConfig, validate

    train = TrainConfig(max_steps=config.validate_steps, batch_size=2, learning_rate=1e-4, max_length=512,
                        lora_r=8, save_steps=config.validate_steps, gradient_checkpointing=False)
    settings = ValidateConfig(base_model="smollm2-135m", variants={"sample": str(SAMPLE / "pool.jsonl"),
                                                                   "recipe": str(recipe_output)},
                              evals=("gsm8k", "mbpp"), train=train, limit=config.validate_problems,
                              max_new_tokens=96)
    return validate(settings, Path(config.out) / "validate", progress=progress)
