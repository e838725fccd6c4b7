"""Grade a model's answer: math by answer equivalence (math-verify), code by running tests.

Math: the gold answer is wrapped in `\\boxed{}` and parsed with `math_verify.parse`; the model's
answer is parsed as it is (math-verify finds the last `\\boxed{}`, else the last expression);
`math_verify.verify(gold, pred)` decides, gold first (the order matters: the gold side is the one
whose sets/intervals/relations are interpreted). A normalised exact string match is accepted first,
which also grades answers math-verify cannot parse (words, names).

Code: the program is the last ```python (or bare ```) block of the answer, else the whole answer.
Three test styles, as stored in `Problem.tests`:

- `{"style": "check", "test": str, "entry_point": str, "prompt": str}`: HumanEval; the program
  plus `test` plus `check(entry_point)` must exit 0. An answer that does not define `entry_point`
  is taken as a completion of `prompt` (the function's header and docstring).
- `{"style": "asserts", "asserts": [str], "setup": str}`: MBPP; program, setup and asserts exit 0.
- `{"style": "stdio", "inputs": [str], "outputs": [str]}`: APPS/TACO/LiveCodeBench style; for each
  pair the program's stdout equals the expected output up to whitespace (compared token by token).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from curate.errors import DataError
from curate.evaluation.sandbox import run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Grade:
    """One answer's grade. `status` is "correct", "wrong", "no_answer", or for code the sandbox
    status of the first failing run ("error", "timeout", "memory", "output_limit", ...).
    `isolation` is the sandbox's isolation for code, None for math."""

    correct: bool
    status: str
    isolation: str | None = None
    detail: str = ""


def gsm8k_gold(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after `####`, thousands separators removed."""
    found = _GSM8K_ANSWER.search(answer)
    text = found.group(1) if found else answer
    return text.strip().replace(",", "")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; None if none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def grade_math(completion: str, gold: str) -> Grade:
    """Whether `completion` states an answer equivalent to `gold` (a bare answer, e.g. "18", "\\frac{1}{2}")."""
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere parse and
    # verify would fail (and report "no answer"), so they run without a timeout there.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    extracted = last_boxed(completion)
    said = extracted if extracted is not None else completion
    if _norm(said) == _norm(gold) and _norm(gold):
        return Grade(True, "correct", detail=said.strip())
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=limit)
    pred_parsed = parse(completion, parsing_timeout=limit)
    if not pred_parsed:
        return Grade(False, "no_answer")
    ok = bool(gold_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=limit)
    return Grade(ok, "correct" if ok else "wrong", detail=str(pred_parsed[-1]))


def extract_code(text: str) -> str:
    """The last ```python block of a model answer, else the last fenced block, else the whole text."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1].strip("\n") + "\n"
    if blocks:
        return blocks[-1][1].strip("\n") + "\n"
    return text


def code_programs(code: str, tests: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """The runs that grade `code`: a list of (program, stdin, expected stdout or None)."""
    style = tests.get("style")
    if style == "check":
        entry = tests["entry_point"]
        if not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
            code = tests.get("prompt", "") + code
        return [(f"{code}\n\n{tests['test']}\n\ncheck({entry})\n", None, None)]
    if style == "asserts":
        body = "\n".join(tests["asserts"])
        return [(f"{code}\n\n{tests.get('setup') or ''}\n\n{body}\n", None, None)]
    if style == "stdio":
        return [(code, str(i), str(o)) for i, o in zip(tests["inputs"], tests["outputs"], strict=True)]
    raise DataError(f"unknown test style {style!r}; expected check, asserts or stdio")


def grade_code(
    completion: str,
    tests: dict[str, Any],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    extract: bool = True,
) -> Grade:
    """Run the answer's code against `tests` (see the module docstring) in the sandbox.

    `timeout_s` and `memory_mb` apply to each run (one per stdin/stdout pair). Stops at the first
    failing run. `extract=False` runs `completion` as it is (a reference solution).
    """
    code = extract_code(completion) if extract else completion
    isolation = None
    for index, (program, stdin, expected) in enumerate(code_programs(code, tests)):
        result = run_python(program, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)
        isolation = result.isolation
        if not result.ok:
            return Grade(False, result.status, isolation, _last_line(result.stderr))
        if expected is not None and result.stdout.split() != expected.split():
            return Grade(False, "wrong", isolation, f"test {index}: output differs")
    return Grade(True, "correct", isolation)


def grade(problem: Any, completion: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> Grade:
    """Grade `completion` for a `Problem`: math against `problem.answer`, code by `problem.tests`."""
    if problem.domain == "math":
        return grade_math(completion, problem.answer or "")
    return grade_code(completion, problem.tests or {}, timeout_s=timeout_s, memory_mb=memory_mb)


def _norm(text: str) -> str:
    text = _THOUSANDS.sub("", text.strip().strip("$").strip())
    return " ".join(text.split()).rstrip(".")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
