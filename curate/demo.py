"""`run_demo`: the pipeline on the bundled sample pool, offline, with the packaged model.

Phases, each announced and reported as it finishes (`DemoEvents`):
1. inspect the sample pool;
2. run the sample recipe (`recipes/sample.yaml`: offline tags, difficulty flip with the bundled
   donor decontaminated against the demo's query sets, exploration stripping, length pruning);
3. score the recipe's output by EK-FAC influence on a math (GSM8K) and a code (MBPP) query set
   with SmolLM2-135M-Instruct, each set also in two disjoint splits whose agreement is the
   run's own stability check;
4. render the influence report (`report.html`), with token views of the top examples;
5. prune the scored rows by influence, by the query sets whose ranking the run found stable only;
6. with `validate`: a tiny validation run (LoRA SFT steps per variant, then evaluation).

What is scored, and why it is sized so (2 CPU cores, about two minutes for the model work): the
`per_domain` shortest math and code rows of the recipe's output (no row is cut: the length bound
is above the longest), against every bundled query answer (64 GSM8K, 32 MBPP: with fewer, the
math ranking does not pass its stability check), with the MLPs of SmolLM2's last 4 of 30 blocks
tracked, the empirical Fisher (the fit pass is then the scoring pass) and bfloat16 compute
(factors in float64; on these rows its scores match float32 at Pearson 0.998, Spearman >= 0.98:
benchmarks/RESULTS.md). Token scores are computed for the `tokens_top` best rows per query set,
the ones the report shows.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE = Path(__file__).parent / "resources" / "sample"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sample.yaml"
QUERY_SETS = {"math": SAMPLE / "queries" / "math.jsonl", "code": SAMPLE / "queries" / "code.jsonl"}
MAX_LENGTH = 2048  # above the longest sample row (1,786 tokens with the chat template): nothing is cut
PHASES = ("inspect", "recipe", "score", "report", "prune", "validate")


@dataclass
class DemoConfig:
    """out: folder for everything the demo writes. per_domain: rows scored per domain (the
    shortest of the recipe's output). tokens_top: rows per query set whose tokens are scored
    (the report's top examples). keep: fraction of the scored rows the influence pruning keeps
    (within each domain). modules, dtype, fisher: the influence settings (see the module doc).
    score: False stops after the recipe. validate: also the tiny validation run
    (`validate_steps` LoRA steps per variant, `validate_problems` problems per benchmark).
    keep_work: keep the scoring stages (factors, query directions, score chunks; about 0.6 GB)
    under `out/score.work` instead of deleting them at the end."""

    out: Path = Path("curate-demo")
    per_domain: int = 18
    tokens_top: int = 3
    keep: float = 0.5
    modules: str = r"layers\.(2[6-9])\.mlp\."
    dtype: str = "bfloat16"
    fisher: str = "empirical"
    score: bool = True
    validate: bool = False
    validate_steps: int = 2
    validate_problems: int = 3
    keep_work: bool = False

    def __post_init__(self) -> None:
        from curate.errors import UsageError

        if self.per_domain < 5:
            raise UsageError("--per-domain must be >= 5: a ranking of fewer rows per domain measures nothing")
        if not 0 < self.keep < 1:
            raise UsageError(f"--keep must be in (0, 1), got {self.keep}")


class DemoEvents:
    """What the demo reports as it goes: the default reports nothing (the CLI renders each)."""

    def phase(self, number: int, title: str) -> None:
        """Phase `number` of `PHASES` starts."""

    def done(self, name: str, result: object) -> None:
        """Phase `name` finished with `result` (see `run_demo` for each phase's result)."""


@dataclass
class DemoResult:
    """What each phase produced, and every file or folder written (listed once, in order)."""

    stats: dict
    recipe: object  # curate.recipes.RunResult of recipes/sample.yaml
    score: object | None = None  # curate.influence.engine.ScoreResult
    domains: dict[str, str] = field(default_factory=dict)  # curate_id -> domain of the scored rows
    pruned_by: list[str] = field(default_factory=list)  # influence columns the pruning used (all stable)
    prune_report: object | None = None
    validation: dict | None = None  # curate validate's results.json
    written: list[Path] = field(default_factory=list)


def demo_subset(pool, per_domain: int, lengths: dict[str, int]) -> tuple[list[int], list[int]]:
    """Rows scored (the `per_domain` shortest math and code rows by `lengths`, curate_id -> tokens;
    ties by curate_id; in pool order) and rows left out."""
    ids, domains = pool.dataset["curate_id"], pool.dataset["curate_domain"]
    keep: list[int] = []
    for domain in ("math", "code"):
        rows = [i for i, d in enumerate(domains) if d == domain]
        keep += sorted(rows, key=lambda i: (lengths[ids[i]], ids[i]))[:per_domain]
    kept = set(keep)
    return sorted(keep), [i for i in range(len(pool)) if i not in kept]


def stable_columns(score) -> list[str]:
    """The instance-score columns of a `ScoreResult` whose ranking passed the run's stability check."""
    return [f"curate_influence_{q}" for q, report in score.stability.items() if not report.unstable]


def run_demo(config: DemoConfig, progress=None, events: DemoEvents | None = None) -> DemoResult:
    """Run the demo's phases in order, telling `events` as each starts and ends.

    Results passed to `events.done`: "inspect" the pool's stats dict; "recipe" the RunResult;
    "score" the DemoResult so far (its `score` and `domains` set); "report" the report's path; "prune" the prune report, or a str saying
    why nothing was pruned; "validate" the results dict.
    """
    from curate.data import load_pool, pool_stats
    from curate.errors import DataError
    from curate.recipes import run_recipe

    events = events or DemoEvents()
    out = Path(config.out)
    events.phase(1, "inspect the sample pool")
    pool = load_pool(SAMPLE / "pool.jsonl")
    stats = pool_stats(pool).as_dict()
    events.done("inspect", stats)
    if not RECIPE.exists():
        raise DataError(f"{RECIPE} not found: `curate demo` runs from a source checkout (make demo)")
    events.phase(2, "recipe recipes/sample.yaml: tag, flip, strip, prune by length")
    recipe = run_recipe(RECIPE, progress=progress, output=out / "recipe" / "sample.parquet")
    result = DemoResult(stats, recipe, written=[recipe.output])
    events.done("recipe", recipe)
    if config.score:
        _score_report_prune(config, recipe.output, result, progress, events)
    if config.validate:
        events.phase(6, "validate: LoRA SFT steps per variant, then evaluation")
        result.validation = _validate(config, recipe.output, progress)
        result.written.append(out / "validate")
        events.done("validate", result.validation)
    return result


def _score_report_prune(config: DemoConfig, recipe_output: Path, result: DemoResult, progress,
                        events: DemoEvents) -> None:
    """Phases 3-5: score the recipe output's shortest rows, render the report, prune by stable scores."""
    from curate.data import ManifestEntry, load_pool
    from curate.influence.config import ScoreConfig
    from curate.influence.tokens import tokenize_all
    from curate.models import load_model
    from curate.ops import PruneConfig
    from curate.registry import OPERATIONS
    from curate.report import render_report
    from curate.results import OpContext, write_result

    out = Path(config.out)
    events.phase(3, f"influence scores: {config.per_domain} math + {config.per_domain} code rows, SmolLM2-135M")
    pool = load_pool(recipe_output)  # ids are the recipe's: the outputs join on curate_id
    model, tokenizer = load_model("smollm2-135m", dtype=config.dtype)
    lengths = {z.id: z.full_length for z in tokenize_all(tokenizer, pool.examples(), MAX_LENGTH)}
    keep, left_out = demo_subset(pool, config.per_domain, lengths)
    subset = pool.with_dataset(pool.dataset.select(keep))
    queries = {name: load_pool(path, source=f"query-{name}") for name, path in QUERY_SETS.items()}
    score_config = ScoreConfig(model="smollm2-135m", max_length=MAX_LENGTH, fit_max_length=MAX_LENGTH,
                               modules=config.modules, fisher=config.fisher, dtype=config.dtype,
                               query_splits=2, tokens=True, tokens_top=config.tokens_top)
    work = out / "score.work"
    try:
        scored_rows = OPERATIONS["score"](subset, {"queries": queries}, score_config,
                                          OpContext(progress, work, overwrite=True), model=model, tokenizer=tokenizer)
    finally:
        if not config.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    result.domains = dict(zip(subset.dataset["curate_id"], subset.dataset["curate_domain"], strict=True))
    ids = pool.dataset["curate_id"]
    manifest = [ManifestEntry(ids[i], "removed", f"demo: not among the {config.per_domain} shortest rows of its "
                              "domain scored") for i in left_out]
    result.score = scored_rows.report.data["score"]
    scored = write_result(scored_rows, out / "scored", manifest=manifest, command="curate demo")
    result.written.extend([scored.path, *scored.side_files])
    events.done("score", result)

    events.phase(4, "influence report")
    report = render_report(scored.path, out / "report.html", top=config.tokens_top * 2)
    result.written.append(report)
    events.done("report", report)

    events.phase(5, f"influence pruning: keep {config.keep:.0%} of each domain, by stable rankings only")
    result.pruned_by = stable_columns(result.score)
    if not result.pruned_by:
        events.done("prune", "nothing pruned: no query set's ranking passed the stability check")
        return
    pruned = OPERATIONS["prune"](load_pool(scored.path), {}, PruneConfig(keep=config.keep, by=tuple(result.pruned_by),
                                                                          per_domain=True))
    pruned.report.notes.append(f"ranked by {', '.join(result.pruned_by)}: each passed the run's stability check")
    result.prune_report = pruned.report
    result.written.append(write_result(pruned, out / "pruned", command="curate demo").path)
    events.done("prune", pruned.report)


def _validate(config: DemoConfig, recipe_output: Path, progress) -> dict:
    """A few LoRA steps of SmolLM2 on the sample pool and on the recipe output, then evaluation.

    The length bound fits every sample row (nothing is cut or dropped); 256 new tokens fit a GSM8K
    answer. A few steps on a handful of problems measure plumbing, not the recipe.
    """
    from curate.training.config import TrainConfig
    from curate.validate import ValidateConfig, validate

    train = TrainConfig(max_steps=config.validate_steps, batch_size=2, learning_rate=1e-4, max_length=MAX_LENGTH,
                        lora_r=8, save_steps=config.validate_steps, gradient_checkpointing=False)
    settings = ValidateConfig(base_model="smollm2-135m", variants={"sample": str(SAMPLE / "pool.jsonl"),
                                                                   "recipe": str(recipe_output)},
                              evals=("gsm8k", "mbpp"), train=train, limit=config.validate_problems,
                              max_new_tokens=256, temperature=0.0)
    return validate(settings, Path(config.out) / "validate", progress=progress)

