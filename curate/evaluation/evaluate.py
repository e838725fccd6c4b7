"""Evaluate a model on benchmark problems: generate, grade, summarise with bootstrap intervals.

    problems = load_benchmark("gsm8k") + load_benchmark("mbpp")
    result = evaluate(HFEngine(model, tokenizer), problems, EvalConfig(max_new_tokens=512))
    result.summary()   # {"gsm8k": {"n": 20, "pass@1": 0.35, "ci95": [0.15, 0.55], ...}, "mbpp": {...}}
    result.to_rows()   # one JSON-serialisable dict per problem
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from curate.errors import UsageError
from curate.evaluation.benchmarks import Problem
from curate.evaluation.grading import Grade, grade
from curate.progress import Progress, Silent

if TYPE_CHECKING:
    from curate.evaluation.engines import Engine

BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Sampling:
    """How one benchmark's answers are generated: the token budget, temperature, top-p and
    samples per problem (k of avg@k)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    samples: int


# Long chain-of-thought evaluation defaults, in the spirit of SkyThought and open-r1 (lighteval):
# budgets that do not cut a reasoning model's answers, sampling at temperature 0.6 / top-p 0.95,
# and several samples per problem (avg@k). Any setting given explicitly overrides them.
BENCHMARK_SAMPLING = {
    "math500": Sampling(32768, 0.6, 0.95, 4),
    "aime24": Sampling(32768, 0.6, 0.95, 16),
    "aime25": Sampling(32768, 0.6, 0.95, 16),
    "gsm8k": Sampling(8192, 0.6, 0.95, 4),
    "humaneval": Sampling(16384, 0.6, 0.95, 4),
    "mbpp": Sampling(16384, 0.6, 0.95, 4),
    "livecodebench": Sampling(32768, 0.6, 0.95, 4),
}
DEFAULT_SAMPLING = Sampling(32768, 0.6, 0.95, 4)  # other benchmarks (files, Hub ids)


@dataclass
class EvalConfig:
    """How to evaluate. pass@1 is estimated as avg@k: the mean over `samples` answers per problem.
    The generation settings left None take each benchmark's default (`BENCHMARK_SAMPLING`)."""

    max_new_tokens: int | None = field(default=None, metadata={"help": "Generated tokens per answer, at most."})
    samples: int | None = field(default=None, metadata={"help": "Answers per problem (k of avg@k)."})
    temperature: float | None = field(default=None, metadata={"help": "0 = greedy; > 0 needed when samples > 1."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass (with temperature > 0)."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and of the bootstrap."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (engine hf)."})
    timeout_s: float = field(default=10.0, metadata={"help": "Seconds per sandboxed code run."})

    def __post_init__(self) -> None:
        errors = []
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            errors.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.samples is not None and self.samples < 1:
            errors.append(f"samples must be >= 1, got {self.samples}")
        if self.temperature is not None and self.temperature < 0:
            errors.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            errors.append(f"top_p must be in (0, 1], got {self.top_p}")
        if (self.samples or 1) > 1 and self.temperature == 0:
            errors.append("samples > 1 needs temperature > 0 (greedy answers would all be the same)")
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.timeout_s <= 0:
            errors.append(f"timeout_s must be > 0, got {self.timeout_s}")
        if errors:
            raise UsageError("; ".join(errors))

    def sampling(self, source: str) -> Sampling:
        """The settings for benchmark `source`: explicit ones, else its defaults (greedy -> 1 sample)."""
        base = BENCHMARK_SAMPLING.get(source, DEFAULT_SAMPLING)
        temperature = base.temperature if self.temperature is None else self.temperature
        samples = self.samples if self.samples is not None else (1 if temperature == 0 else base.samples)
        return Sampling(self.max_new_tokens or base.max_new_tokens, temperature,
                        base.top_p if self.top_p is None else self.top_p, samples)


@dataclass
class ProblemRecord:
    """One problem's answers and grades; lists run over the `samples` answers."""

    id: str
    domain: str
    source: str
    prompt: str
    completions: list[str]
    correct: list[bool]
    truncated: list[bool]
    status: list[str]
    isolation: str | None = None  # the code sandbox's isolation; None for math

    @property
    def score(self) -> float:
        """Share of correct answers, in [0, 1]."""
        return sum(self.correct) / len(self.correct)


@dataclass
class EvalResult:
    """Per-problem records (benchmark order) and the config they were made with."""

    records: list[ProblemRecord]
    config: EvalConfig

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per benchmark source: `n` problems, the generation settings used (`samples` k,
        `max_new_tokens`, `temperature`, `top_p`), `pass@1` (avg@k: mean over problems of the share
        of correct answers, in [0, 1]), `pass@k` ({k: unbiased pass@k} for k = 1, 2, 4, ... up to
        the samples; Chen et al. 2021), `ci95` ([low, high]: percentile bootstrap, 1000
        resamples of problems, seeded by `config.seed`), `truncated` (share of answers that hit
        `max_new_tokens`), `errors` (answers a server refused, graded wrong) and `isolation` (the
        sandbox's, for code)."""
        import numpy as np

        out: dict[str, dict[str, Any]] = {}
        for source in dict.fromkeys(r.source for r in self.records):
            recs = [r for r in self.records if r.source == source]
            sampling = self.config.sampling(source)
            scores = np.array([r.score for r in recs], dtype=np.float64)
            rng = np.random.default_rng(self.config.seed)
            means = scores[rng.integers(0, len(scores), size=(BOOTSTRAP_RESAMPLES, len(scores)))].mean(axis=1)
            truncated = [t for r in recs for t in r.truncated]
            isolation = sorted({r.isolation for r in recs if r.isolation})
            out[source] = {
                "n": len(recs),
                "samples": sampling.samples,
                "max_new_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "pass@1": float(scores.mean()),
                "pass@k": {k: pass_at_k(recs, k) for k in _powers_of_two(sampling.samples)},
                "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
                "truncated": sum(truncated) / len(truncated),
                "errors": sum(st.startswith("error: ") for r in recs for st in r.status),
                "isolation": ", ".join(isolation) or None,
            }
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per problem (the `ProblemRecord` fields plus `score`)."""
        return [{**asdict(r), "score": r.score} for r in self.records]


def evaluate(
    engine: Engine,
    problems: list[Problem],
    config: EvalConfig,
    progress: Progress | None = None,
) -> EvalResult:
    """Generate `config.samples` answers per problem with `engine` (`curate.evaluation.engines`)
    and grade each (math-verify, sandboxed tests). An answer the engine could not get (a server
    refused the request) is graded wrong with the status `error: <why>`."""
    progress = progress or Silent()
    if not problems:
        return EvalResult([], config)
    answers: dict[str, list] = {}
    for source in dict.fromkeys(p.source for p in problems):  # each benchmark with its own settings
        group = [p for p in problems if p.source == source]
        s = config.sampling(source)
        generations = engine.generate([p.prompt for p in group], max_new_tokens=s.max_new_tokens, samples=s.samples,
                                      temperature=s.temperature, top_p=s.top_p, seed=config.seed, progress=progress)
        answers.update({p.id: g for p, g in zip(group, generations, strict=True)})
    records = []
    with progress.task("grade", total=sum(map(len, answers.values())), unit="answers") as advance:
        for problem in problems:
            grades = []
            for g in answers[problem.id]:
                grades.append(Grade(False, f"error: {g.error}") if g.error else
                              grade(problem, g.text, timeout_s=config.timeout_s))
                advance(1)
            isolation = next((gr.isolation for gr in grades if gr.isolation), None)
            records.append(ProblemRecord(
                id=problem.id, domain=problem.domain, source=problem.source, prompt=problem.prompt,
                completions=[g.text for g in answers[problem.id]], correct=[gr.correct for gr in grades],
                truncated=[g.truncated for g in answers[problem.id]], status=[gr.status for gr in grades],
                isolation=isolation,
            ))
    return EvalResult(records, config)


def pass_at_k(records: list[ProblemRecord], k: int) -> float:
    """Unbiased pass@k over problems (Chen et al. 2021): mean of 1 - C(n - c, k) / C(n, k) with n
    answers of which c are correct (k <= n)."""
    from math import comb

    values = [1.0 - comb(len(r.correct) - sum(r.correct), k) / comb(len(r.correct), k) for r in records]
    return sum(values) / len(values)


def _powers_of_two(n: int) -> list[int]:
    return [k for k in (2**i for i in range(12)) if k <= n]
