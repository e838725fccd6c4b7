"""Query sets for influence: the benchmark problems a model answers correctly (and incorrectly).

`build_query_sets` generates one greedy answer per problem, grades it, partitions *all* graded
problems into correct and incorrect, then samples each part down to `n` rows with the seed and
writes, under `out`:

- `correct.jsonl`, `incorrect.jsonl`: `{"id", "messages": [user, assistant], "domain", "source"}`
  rows, readable by `curate score --query NAME=DIR/correct.jsonl` (OpenAI messages shape). The
  assistant turn is the model's own answer (`answers="model"`), or the benchmark's reference
  solution (`answers="reference"`: for math without one, the gold answer as `\\boxed{gold}`);
- `graded.jsonl`: every graded problem (`EvalResult.to_rows()`);
- `summary.json`: model, bench, accuracy found, counts before and after sampling, sampled ids,
  sandbox isolation.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from curate.errors import DataError, UsageError
from curate.evaluation.benchmarks import Problem, load_benchmark
from curate.evaluation.engines import ENGINES, HFEngine, ServerEngine, ServerSettings
from curate.evaluation.evaluate import EvalConfig, EvalResult, ProblemRecord, evaluate
from curate.progress import Progress, Silent
from curate.stages import atomic_write_bytes

ANSWERS = ("model", "reference")


def build_query_sets(
    model: str,
    bench: str,
    out: str | Path,
    *,
    n: int = 100,
    seed: int = 0,
    answers: str = "model",
    max_new_tokens: int = 512,
    limit: int | None = None,
    batch_size: int = 8,
    timeout_s: float = 10.0,
    device: str = "auto",
    engine: str = "hf",
    server: ServerSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Grade `model` (path, Hub id or alias) on `bench` (packaged name, file or Hub id) and write
    the query sets to the folder `out`; returns the summary written to `out/summary.json`.

    `n`: rows kept per set at most (seeded sample, benchmark order kept). `limit`: grade only a
    seeded subset of this many problems. `max_new_tokens`: per greedy answer. `timeout_s`: per
    sandboxed code run. `device`: "auto" (cuda when available), "cpu", "cuda:1", ...
    `engine`: "hf" (transformers here), "server" (the OpenAI-compatible endpoint `server`, whose
    `model` is the id on the server) or "vllm" (`vllm serve model` started for the run and
    stopped after it, `curate.evaluation.vllm`); through a server, answers are cached in
    `out/generations.sqlite` (unless `server.cache` names another file), so a killed run resumes.
    """
    from curate.models import check_model, load_model

    if answers not in ANSWERS:
        raise UsageError(f"answers must be one of {', '.join(ANSWERS)}, got {answers!r}")
    if n < 1:
        raise UsageError(f"n must be >= 1, got {n}")
    progress = progress or Silent()
    config = EvalConfig(max_new_tokens=max_new_tokens, samples=1, temperature=0.0, seed=seed, batch_size=batch_size,
                        timeout_s=timeout_s)  # query sets: one greedy answer per problem
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if (engine == "server") != (server is not None):
        raise UsageError("engine server needs its endpoint (server settings), and only it does")
    if engine != "server":
        check_model(model)  # settings and model name first: a typo fails before the benchmark loads
    problems = load_benchmark(bench, limit=limit, seed=seed)
    cache = str(Path(out) / "generations.sqlite")
    if engine == "server":
        result = evaluate(ServerEngine(dataclasses.replace(server, cache=server.cache or cache)), problems, config,
                          progress=progress)
    elif engine == "vllm":
        from curate.evaluation.vllm import VLLMLaunch, serving
        from curate.models import resolve_model

        with serving(VLLMLaunch(resolve_model(str(model)), str(model), log=Path(out) / "vllm.log")) as url:
            result = evaluate(ServerEngine(ServerSettings(url, str(model), cache=cache)), problems, config,
                              progress=progress)
    else:
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        lm, tokenizer = load_model(model, device=device)
        result = evaluate(HFEngine(lm, tokenizer, batch_size), problems, config, progress=progress)
    return write_query_sets(result, problems, out, n=n, seed=seed, answers=answers,
                            meta={"model": str(model), "bench": str(bench), "limit": limit,
                                  "max_new_tokens": max_new_tokens})


def write_query_sets(
    result: EvalResult,
    problems: list[Problem],
    out: str | Path,
    *,
    n: int,
    seed: int,
    answers: str = "model",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Partition graded problems (correct = every sample correct), sample, write; see the module doc."""
    by_id = {p.id: p for p in problems}
    correct = [r for r in result.records if all(r.correct)]
    incorrect = [r for r in result.records if not all(r.correct)]
    rng = random.Random(seed)
    kept = {name: _sample(part, n, rng) for name, part in (("correct", correct), ("incorrect", incorrect))}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in kept.items():
        _write_jsonl(out / f"{name}.jsonl", [_row(r, by_id[r.id], answers) for r in recs])
    _write_jsonl(out / "graded.jsonl", result.to_rows())
    graded = len(result.records)
    summary = {
        **(meta or {}),
        "answers": answers,
        "seed": seed,
        "n": n,
        "graded": graded,
        "accuracy": len(correct) / graded if graded else None,
        "counts": {"correct": len(correct), "incorrect": len(incorrect)},
        "sampled": {name: len(recs) for name, recs in kept.items()},
        "ids": {name: [r.id for r in recs] for name, recs in kept.items()},
        "by_source": result.summary(),
        "isolation": sorted({r.isolation for r in result.records if r.isolation}) or None,
    }
    _write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def reference_answer(problem: Problem) -> str:
    """The assistant turn for `answers="reference"`: the reference solution, else `\\boxed{gold}`."""
    if problem.reference:
        return problem.reference
    if problem.domain == "math" and problem.answer is not None:
        return f"The answer is $\\boxed{{{problem.answer}}}$."
    raise DataError(f"{problem.id}: no reference solution for --answers reference")


def _row(record: ProblemRecord, problem: Problem, answers: str) -> dict[str, Any]:
    assistant = record.completions[0] if answers == "model" else reference_answer(problem)
    return {
        "id": record.id,
        "messages": [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": assistant}],
        "domain": record.domain,
        "source": record.source,
    }


def _sample(records: list[ProblemRecord], n: int, rng: random.Random) -> list[ProblemRecord]:
    if len(records) <= n:
        return list(records)
    keep = set(rng.sample(range(len(records)), n))
    return [r for i, r in enumerate(records) if i in keep]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    _write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
