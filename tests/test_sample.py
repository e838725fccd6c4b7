"""The bundled sample under `curate/resources/sample/`: present, parseable, small, well-shaped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.models import TOKENIZER_DIR

SAMPLE = Path(__file__).parent.parent / "curate" / "resources" / "sample"
MATH_PREFIX = "Return your final response within \\boxed{}. "
CODE_PREFIX = "Generate an executable Python function generated from the given prompt. "
DONOR_FIELDS = {
    "problem", "deepseek_reasoning", "deepseek_solution", "ground_truth_solution",
    "domain", "source", "test_cases", "starter_code", "level",
}


def read(name: str) -> list[dict]:
    with open(SAMPLE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def norm(text: str) -> str:
    return " ".join(text.split())


def test_files_exist_and_are_small() -> None:
    for name in ("pool.jsonl", "donor.jsonl", "queries/math.jsonl", "queries/code.jsonl", "README.md"):
        assert (SAMPLE / name).is_file(), name
    assert list((SAMPLE / "licenses").iterdir())
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 5_000_000


def test_pool_is_bespoke_stratos_shaped() -> None:
    pool = read("pool.jsonl")
    assert {r["system"] for r in pool} == {pool[0]["system"]}  # one fixed system prompt
    math = [r for r in pool if r["conversations"][0]["value"].startswith(MATH_PREFIX)]
    code = [r for r in pool if r["conversations"][0]["value"].startswith(CODE_PREFIX)]
    assert len(math) + len(code) == len(pool) and len(math) >= 40 and len(code) >= 25
    for row in pool:
        assert set(row) == {"system", "conversations", "level"}
        assert [t["from"] for t in row["conversations"]] == ["user", "assistant"]
    for row in math:
        answer = row["conversations"][1]["value"]
        assert answer.startswith("<|begin_of_thought|>\n\n") and answer.endswith("\n\n<|end_of_solution|>")
        assert "\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n" in answer
        assert row["level"] in {1, 2, 3, 4, 5}
    assert {r["level"] for r in math} == {1, 2, 3, 4, 5}
    for row in code:
        answer = row["conversations"][1]["value"]
        assert answer.startswith("<|begin_of_solution|>\n\n```python\n") and "<|begin_of_thought|>" not in answer
        assert row["level"] is None
        assert "QUESTION:" not in row["conversations"][0]["value"] and "ANSWER:" not in row["conversations"][0]["value"]


def test_donor_is_openthoughts_shaped() -> None:
    donor = read("donor.jsonl")
    assert all(set(r) == DONOR_FIELDS for r in donor)
    math = [r for r in donor if r["domain"] == "math"]
    code = [r for r in donor if r["domain"] == "code"]
    assert len(math) + len(code) == len(donor) and len(math) >= 30 and len(code) >= 25
    assert all(r["source"] == "MATH" and r["level"] in {1, 2, 3, 4, 5} and r["deepseek_reasoning"] for r in math)
    assert sum(r["level"] >= 4 for r in math) > len(math) / 2  # mostly hard
    assert all(r["source"] == "taco" and r["level"] is None and r["deepseek_reasoning"] == "" for r in code)
    assert all(r["ground_truth_solution"] for r in donor)


def test_no_pool_problem_is_in_the_donor() -> None:
    pool = {
        norm(r["conversations"][0]["value"].removeprefix(MATH_PREFIX).removeprefix(CODE_PREFIX))
        for r in read("pool.jsonl")
    }
    assert not pool & {norm(r["problem"]) for r in read("donor.jsonl")}


def test_queries() -> None:
    math, code = read("queries/math.jsonl"), read("queries/code.jsonl")
    assert (len(math), len(code)) == (64, 32)
    assert all(set(r) == {"question", "answer"} and "####" in r["answer"] for r in math)
    assert all(set(r) == {"task_id", "text", "code", "test_list"} and 11 <= r["task_id"] <= 510 for r in code)
    assert all(r["test_list"] and all(t.startswith("assert") for t in r["test_list"]) for r in code)


def test_chat_template_renders_a_pool_row() -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    row = read("pool.jsonl")[0]
    roles = {"user": "user", "assistant": "assistant"}
    messages = [{"role": "system", "content": row["system"]}] + [
        {"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\n" + row["system"] + "<|im_end|>\n")
    assert "<|im_start|>assistant\n" + row["conversations"][1]["value"] + "<|im_end|>" in text
    assert "SmolLM" not in text  # our system prompt replaces the default one
