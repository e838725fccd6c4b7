"""Grading: math by math-verify on real-looking answers, code by function-call and stdin/stdout tests."""

from __future__ import annotations

import json

import pytest

from curate.errors import DataError, UsageError
from curate.evaluation import extract_code, grade, grade_code, grade_math, load_benchmark
from curate.evaluation.grading import gsm8k_gold, last_boxed

GSM8K_ANSWER = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
                "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18")


def test_gsm8k_gold_and_boxed_extraction():
    assert gsm8k_gold(GSM8K_ANSWER) == "18"
    assert gsm8k_gold("So the total is 1,200 dollars.\n#### 1,200") == "1200"
    assert last_boxed(r"so \boxed{\frac{1}{2}} and finally \boxed{\left( 3, \frac{\pi}{2} \right)}.") \
        == r"\left( 3, \frac{\pi}{2} \right)"
    assert last_boxed("no box here") is None


@pytest.mark.parametrize(("completion", "gold"), [
    (r"Half of the pie is left, so the answer is $\boxed{0.5}$.", r"\frac{1}{2}"),
    (r"We get $\frac{2}{4} = \boxed{\frac{1}{2}}$.", "0.5"),
    ("She sells 9 eggs for $2 each, so she makes 9 * 2 = 18 dollars.\nThe answer is $\\boxed{18}$.", "18"),
    ("9 * 2 = 18, so she makes 18 dollars a day.", "18"),  # no box: the last number
    (r"Total: $\boxed{1,200}$ dollars.", "1200"),
    (r"Converting, $r = 3$ and $\theta = \pi/2$, so $\boxed{(3, \frac{\pi}{2})}$.", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"The roots sum to $\boxed{-\dfrac{3}{2}}$.", "-1.5"),
    (r"AIME answer: $\boxed{033}$", "33"),
])
def test_equivalent_math_answers_are_correct(completion, gold):
    assert grade_math(completion, gold).correct


@pytest.mark.parametrize(("completion", "gold"), [
    ("She makes 9 * 2 = 20 dollars.\nThe answer is $\\boxed{20}$.", "18"),
    (r"So the probability is $\boxed{\frac{1}{3}}$.", "0.5"),
    (r"$\boxed{(3, \pi)}$", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"The answer is $\boxed{18}$, I think, no wait, it is $\boxed{19}$.", "18"),  # the last box counts
])
def test_wrong_math_answers_are_wrong(completion, gold):
    assert not grade_math(completion, gold).correct


def test_answer_without_math_is_no_answer():
    result = grade_math("I do not know.", "18")
    assert not result.correct and result.status == "no_answer"


def test_extract_code_takes_the_last_python_block():
    text = "First try:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\nDone."
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("print(3)") == "print(3)"


HUMANEVAL_TESTS = {
    "style": "check", "entry_point": "add",
    "prompt": 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}


def test_function_call_tests_humaneval_style():
    good = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    completion_only = "    return a + b\n"  # HumanEval completion style: the body after the prompt
    assert grade_code(good, HUMANEVAL_TESTS).correct
    assert grade_code(completion_only, HUMANEVAL_TESTS).correct
    result = grade_code(bad, HUMANEVAL_TESTS)
    assert not result.correct and result.status == "error" and "AssertionError" in result.detail


def test_function_call_tests_mbpp_style():
    tests = {"style": "asserts", "setup": "import math",
             "asserts": ["assert hyp(3, 4) == 5", "assert hyp(5, 12) == 13"]}
    assert grade_code("```python\ndef hyp(a, b):\n    return int(math.sqrt(a*a + b*b))\n```", tests).correct
    assert not grade_code("```python\ndef hyp(a, b):\n    return a + b\n```", tests).correct


def test_stdin_stdout_tests():
    tests = {"style": "stdio", "inputs": ["3\n1 2 3\n", "2\n10 -4\n"], "outputs": ["6\n", "6"]}
    good = "```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```"
    padded = "```python\nn = int(input())\nprint('  ', sum(map(int, input().split())), '\\n\\n')\n```"
    bad = "```python\nn = int(input())\nprint(n)\n```"
    slow = "```python\nwhile True:\n    pass\n```"
    assert grade_code(good, tests).correct
    assert grade_code(padded, tests).correct  # whitespace-normalised comparison
    wrong = grade_code(bad, tests)
    assert not wrong.correct and wrong.status == "wrong"
    hung = grade_code(slow, tests, timeout_s=1)
    assert not hung.correct and hung.status == "timeout"


def test_packaged_references_grade_correct():
    for name in ("gsm8k", "math500", "humaneval", "mbpp"):
        problems = load_benchmark(name, limit=3, seed=0)
        assert len(problems) == 3 and all(p.source == name for p in problems)
        for p in problems:
            assert p.reference and grade(p, p.reference).correct, p.id
    humaneval = load_benchmark("humaneval", limit=2)
    assert not grade(humaneval[0], "```python\ndef nope():\n    pass\n```").correct


def test_local_benchmark_files(tmp_path, write_jsonl):
    taco = write_jsonl(tmp_path / "taco.jsonl", [{
        "id": "t1", "question": "Read n and print n squared.",
        "input_output": json.dumps({"inputs": ["3\n"], "outputs": ["9\n"]}),
        "solutions": json.dumps(["n = int(input())\nprint(n * n)"]),
    }])
    [problem] = load_benchmark(str(taco))
    assert problem.domain == "code" and problem.id == "taco/t1" and problem.tests["style"] == "stdio"
    assert grade(problem, problem.reference).correct
    math = write_jsonl(tmp_path / "mini.jsonl", [{"problem": "What is 1/2 + 1/4?", "solution": r"It is $\boxed{\frac34}$."}])
    [problem] = load_benchmark(str(math))
    assert problem.domain == "math" and problem.answer == r"\frac34"
    assert grade(problem, r"So $\boxed{0.75}$").correct


def test_bad_benchmark_rows_name_file_and_row(tmp_path, write_jsonl):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}])
    with pytest.raises(DataError, match=r"bad.jsonl: row 2: no gold answer"):
        load_benchmark(str(bad))
    with pytest.raises(DataError, match="no such file"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        load_benchmark("missing.jsonl")  # a file name, not a mistyped benchmark


def test_unknown_benchmark_name_and_bad_limit_are_usage_errors():
    with pytest.raises(UsageError, match=r"unknown benchmark 'math5000': expected one of gsm8k, math500"):
        load_benchmark("math5000")
    with pytest.raises(UsageError, match="limit must be >= 1, got 0"):
        load_benchmark("gsm8k", limit=0)
    assert len(load_benchmark("gsm8k", limit=25)) == 20  # more than there are: all of them


def test_math_grading_works_off_the_main_thread():
    """math-verify's SIGALRM timeouts cannot be set outside the main thread; grading must still work."""
    import threading

    grades = []
    thread = threading.Thread(target=lambda: grades.extend(
        [grade_math(r"so $\boxed{0.5}$", r"\frac{1}{2}"), grade_math(r"$\boxed{3}$", "4")]))
    thread.start()
    thread.join()
    assert [g.correct for g in grades] == [True, False]
