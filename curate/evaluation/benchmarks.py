"""Evaluation benchmarks as a list of `Problem`s: packaged slices, local files or Hub ids.

    problems = load_benchmark("gsm8k")                 # the packaged 20-problem slice
    problems = load_benchmark("data/math500.jsonl", limit=100, seed=0)
    problems = load_benchmark("openai/openai_humaneval")   # through datasets.load_dataset

Recognised row shapes (by their columns):

| shape | columns | domain |
|---|---|---|
| HumanEval | `prompt, test, entry_point` (+ `canonical_solution`) | code, `check` tests |
| MBPP | `text` or `prompt`, `test_list` (+ `code`, `test_setup_code`) | code, `asserts` tests |
| APPS / TACO | `question` or `problem`, `input_output` (JSON `{"inputs", "outputs"}`) (+ `solutions`) | code, `stdio` tests |
| GSM8K | `question, answer` with the final answer after `####` | math |
| MATH-style | `problem` with `answer`, or `solution` holding a `\\boxed{}` answer | math |
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import CurateError, DataError, UsageError
from curate.evaluation.grading import gsm8k_gold, last_boxed

BENCHMARK_DIR = Path(__file__).parents[1] / "resources" / "benchmarks"
PACKAGED = ("gsm8k", "math500", "humaneval", "mbpp")
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = "Write your solution as a Python program in a single ```python code block."


@dataclass(frozen=True)
class Problem:
    """One evaluation problem.

    `id`: `f"{source}/{key}"`, unique within the benchmark. `domain`: "math" or "code". `prompt`:
    the user turn, instructions included. `answer`: the gold final answer (math; None for code).
    `tests`: the code tests (see `curate.evaluation.grading`; None for math). `reference`: a
    reference solution text when the benchmark has one (math: worked solution ending in a boxed
    answer; code: a program that passes `tests`). `source`: the benchmark's name.
    """

    id: str
    domain: str
    prompt: str
    answer: str | None = None
    tests: dict[str, Any] | None = None
    reference: str | None = None
    source: str = ""


def packaged_path(name: str) -> Path:
    """The packaged slice's file for a name in `PACKAGED`."""
    return BENCHMARK_DIR / f"{name}.jsonl"


def load_benchmark(name_or_path: str | Path, *, limit: int | None = None, seed: int = 0,
                   split: str | None = None) -> list[Problem]:
    """Load a benchmark: a packaged name (`PACKAGED`), a local file/folder, or a Hub id.

    `limit`: keep a seeded random subset of this many problems (in benchmark order). `split`: for
    folders and Hub ids (default: `test` for Hub ids; folders as `curate.data.read_dataset` picks).
    Raises `DataError` naming the file and row on input it cannot understand, and `UsageError`
    for a name that is neither packaged, nor a path that exists, nor a Hub id (`owner/name`).
    """
    from curate.data.load import read_dataset

    text = str(name_or_path)
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be >= 1, got {limit}")
    problem = unknown_benchmark(text)
    if problem:
        raise UsageError(problem)
    if text in PACKAGED:
        path, source = packaged_path(text), text
    elif Path(text).expanduser().exists():
        path, source = text, Path(text).name.split(".")[0]
    else:
        path, source = text, text
    try:
        dataset, origin, _ = read_dataset(path, split or _default_split(path))
    except CurateError:
        raise
    except Exception as err:  # datasets/Hub errors: one line for the CLI
        raise DataError(f"{text}: cannot load benchmark: {str(err).splitlines()[0] if str(err) else err!r}") from None
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{origin}: empty benchmark (0 rows)")
    problems = [_problem(row, i, source, origin) for i, row in enumerate(rows)]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{origin}: duplicate problem id {dup!r}")
    if limit is not None and limit < len(problems):
        keep = sorted(random.Random(seed).sample(range(len(problems)), limit))
        problems = [problems[i] for i in keep]
    return problems


def unknown_benchmark(text: str) -> str | None:
    """Why `text` names no benchmark, or None when it may: a packaged name, an existing path, a
    Hub id (`owner/name`) or a data file name (its absence is reported when it is read). A bare
    word is a mistyped packaged name, not worth a query to the Hub."""
    if text in PACKAGED or "/" in text or Path(text).suffix or Path(text).expanduser().exists():
        return None
    return (f"unknown benchmark {text!r}: expected one of {', '.join(PACKAGED)}, "
            "a local file or folder, or a Hub id (owner/name)")


def _default_split(path: str | Path) -> str | None:
    p = Path(path)
    return None if p.is_file() else ("test" if not p.exists() else None)


def _problem(row: dict[str, Any], index: int, source: str, origin: str) -> Problem:
    where = f"{origin}: row {index + 1}"
    cols = set(row)
    key = next((row[c] for c in ("task_id", "unique_id", "id", "problem_id") if row.get(c) is not None), index)
    pid = f"{source}/{key}"
    if {"prompt", "test", "entry_point"} <= cols:
        prompt = f"Complete the following Python function.\n\n```python\n{row['prompt']}```\n\n{CODE_INSTRUCTION}"
        tests = {"style": "check", "test": row["test"], "entry_point": row["entry_point"], "prompt": row["prompt"]}
        solution = row.get("canonical_solution")
        reference = f"```python\n{row['prompt']}{solution}```" if solution else None
        return Problem(pid, "code", prompt, tests=tests, reference=reference, source=source)
    if "test_list" in cols:
        text = row.get("text") or row.get("prompt")
        asserts = list(row["test_list"] or [])
        if not text or not asserts:
            raise DataError(f"{where}: MBPP row needs `text` (or `prompt`) and a non-empty `test_list`")
        setup = "\n".join(row.get("test_imports") or []) + "\n" + (row.get("test_setup_code") or "")
        prompt = f"{text}\nYour code should pass this test:\n\n{asserts[0]}\n\n{CODE_INSTRUCTION}"
        reference = f"```python\n{row['code'].replace(chr(13), '')}\n```" if row.get("code") else None
        return Problem(pid, "code", prompt, tests={"style": "asserts", "asserts": asserts, "setup": setup.strip()},
                       reference=reference, source=source)
    if "input_output" in cols:
        return _stdio(row, pid, source, where)
    question = row.get("question") or row.get("problem")
    if not question:
        raise DataError(f"{where}: no problem text (expected a `question` or `problem` column; has {sorted(cols)})")
    prompt = f"{question}\n{MATH_INSTRUCTION}"
    answer, solution = row.get("answer"), row.get("solution")
    if isinstance(answer, str) and "####" in answer:  # GSM8K
        gold = gsm8k_gold(answer)
        steps = answer.split("####")[0].strip()
        steps = "".join(part.split(">>")[-1] for part in steps.split("<<"))  # drop calculator notes
        return Problem(pid, "math", prompt, answer=gold, reference=f"{steps}\nThe answer is $\\boxed{{{gold}}}$.",
                       source=source)
    if answer is None and isinstance(solution, str):
        answer = last_boxed(solution)
    if answer is None or str(answer).strip() == "":
        raise DataError(f"{where}: no gold answer (expected `answer`, or a `solution` with \\boxed{{}})")
    reference = solution if isinstance(solution, str) and last_boxed(solution) else None
    return Problem(pid, "math", prompt, answer=str(answer).strip(), reference=reference, source=source)


def _stdio(row: dict[str, Any], pid: str, source: str, where: str) -> Problem:
    spec = row["input_output"]
    try:
        spec = json.loads(spec) if isinstance(spec, str) else spec
        inputs, outputs = list(spec["inputs"]), list(spec["outputs"])
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(f"{where}: `input_output` is not JSON with `inputs` and `outputs`: {err}") from None
    if spec.get("fn_name"):
        raise DataError(f"{where}: call-based tests (`fn_name`) are not supported; only stdin/stdout tests")
    if not inputs or len(inputs) != len(outputs):
        raise DataError(f"{where}: `input_output` needs as many outputs as inputs, at least one")
    question = row.get("question") or row.get("problem") or row.get("prompt")
    if not question:
        raise DataError(f"{where}: no problem text (`question`, `problem` or `prompt`)")
    prompt = f"{question}\n\nRead the input from standard input and print the answer to standard output. {CODE_INSTRUCTION}"
    solutions = row.get("solutions")
    if isinstance(solutions, str):
        try:
            solutions = json.loads(solutions)
        except ValueError:
            solutions = [solutions]
    reference = f"```python\n{solutions[0]}\n```" if solutions else None
    tests = {"style": "stdio", "inputs": [_text(i) for i in inputs], "outputs": [_text(o) for o in outputs]}
    return Problem(pid, "code", prompt, tests=tests, reference=reference, source=source)


def _text(value: Any) -> str:
    """A test input/output as text: APPS stores some as lists of lines."""
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)
