"""`curate query` on a tiny random model: correct and incorrect sets partition the graded problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate.cli import main
from curate.data import load_pool
from curate.errors import UsageError
from curate.evaluation import EvalConfig, HFEngine, evaluate, generate, load_benchmark
from curate.evaluation.benchmarks import MATH_INSTRUCTION
from tests.cli_helpers import cli_error

QUESTIONS = [f"Tom has {a} apples and buys {b} more. How many apples does he have?"
             for a, b in [(3, 4), (10, 5), (7, 8), (12, 1), (6, 6), (2, 9)]]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_partition(out: Path, expected_graded: int) -> tuple[list[dict], list[dict], dict]:
    summary = json.loads((out / "summary.json").read_text())
    correct, incorrect = read_rows(out / "correct.jsonl"), read_rows(out / "incorrect.jsonl")
    graded = [r["id"] for r in read_rows(out / "graded.jsonl")]
    assert summary["graded"] == len(graded) == expected_graded
    ids_c, ids_i = {r["id"] for r in correct}, {r["id"] for r in incorrect}
    assert not ids_c & ids_i
    assert summary["counts"]["correct"] + summary["counts"]["incorrect"] == expected_graded
    if summary["sampled"] == summary["counts"]:  # nothing sampled away: the two sets are all graded problems
        assert ids_c | ids_i == set(graded)
    assert summary["accuracy"] == pytest.approx(summary["counts"]["correct"] / expected_graded)
    for row in correct + incorrect:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and row["domain"] in ("math", "code")
    return correct, incorrect, summary


def test_query_on_packaged_benchmarks(tiny_model_dir, tmp_path):
    out = tmp_path / "gsm8k"
    main(["query", "--model", str(tiny_model_dir), "--bench", "gsm8k", "-o", str(out),
          "--max-new-tokens", "16", "--limit", "4", "--device", "cpu"])
    correct, incorrect, summary = check_partition(out, 4)
    assert summary["model"] == str(tiny_model_dir) and summary["bench"] == "gsm8k"
    assert len(incorrect) == 4 and summary["accuracy"] == 0.0  # a random model answers nothing right
    out = tmp_path / "mbpp"
    main(["query", "--model", str(tiny_model_dir), "--bench", "mbpp", "-o", str(out),
          "--max-new-tokens", "16", "--limit", "2", "--device", "cpu"])
    _, incorrect, summary = check_partition(out, 2)
    assert summary["isolation"] and summary["by_source"]["mbpp"]["truncated"] == 1.0
    assert len(load_pool(out / "incorrect.jsonl")) == 2


def test_query_partition_with_correct_answers(tiny_model_dir, tmp_path, write_jsonl):
    """Gold answers set to what the tiny model greedily says for some problems: those are correct."""
    from curate.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir))
    prompts = [f"{q}\n{MATH_INSTRUCTION}" for q in QUESTIONS]
    said = [g[0].text.strip() for g in generate(model, tokenizer, prompts, max_new_tokens=16, batch_size=8)]
    assert all(said)
    right = {0, 2, 3}
    rows = [{"id": f"q{i}", "question": q, "answer": said[i] if i in right else "-987654321.5"}
            for i, q in enumerate(QUESTIONS)]
    bench = write_jsonl(tmp_path / "echo.jsonl", rows)

    out = tmp_path / "model"
    main(["query", "--model", str(tiny_model_dir), "--bench", str(bench), "-o", str(out),
          "--max-new-tokens", "16", "--device", "cpu"])
    correct, incorrect, summary = check_partition(out, len(QUESTIONS))
    assert {r["id"] for r in correct} == {f"echo/q{i}" for i in right}
    assert summary["accuracy"] == pytest.approx(len(right) / len(QUESTIONS))
    assert all(r["messages"][1]["content"].strip() == said[int(r["id"][-1])] for r in correct)
    pool = load_pool(out / "correct.jsonl")  # what `curate score --query NAME=...` reads
    assert pool.shape.name == "messages" and len(pool) == len(right)
    assert [e.response for e in pool.examples()] == [r["messages"][1]["content"] for r in correct]

    out = tmp_path / "reference"
    main(["query", "--model", str(tiny_model_dir), "--bench", str(bench), "-o", str(out),
          "--max-new-tokens", "16", "--device", "cpu", "--answers", "reference", "--n", "2", "--seed", "1"])
    correct, incorrect, summary = check_partition(out, len(QUESTIONS))
    assert summary["counts"] == {"correct": 3, "incorrect": 3} and summary["sampled"] == {"correct": 2, "incorrect": 2}
    assert {r["id"] for r in correct} <= {f"echo/q{i}" for i in right}
    assert set(summary["ids"]["correct"]) == {r["id"] for r in correct}
    assert all(r["messages"][1]["content"].startswith("The answer is $\\boxed{") for r in correct)


def test_evaluate_summary_avg_at_k(tiny_model_dir):
    from curate.models import load_model

    model, tokenizer = load_model(str(tiny_model_dir))
    problems = load_benchmark("gsm8k", limit=3)
    config = EvalConfig(max_new_tokens=8, samples=2, temperature=1.0, seed=3)
    result = evaluate(HFEngine(model, tokenizer, config.batch_size), problems, config)
    again = evaluate(HFEngine(model, tokenizer, config.batch_size), problems, config)
    assert [r.completions for r in result.records] == [r.completions for r in again.records]  # seeded
    summary = result.summary()["gsm8k"]
    assert summary["n"] == 3 and summary["samples"] == 2 and summary["pass@1"] == 0.0
    assert summary["ci95"] == [0.0, 0.0] and summary["truncated"] == 1.0
    rows = result.to_rows()
    json.dumps(rows)
    assert len(rows) == 3 and all(len(r["completions"]) == 2 == len(r["correct"]) for r in rows)


@pytest.mark.parametrize(("bad", "option"), [({"samples": 4, "temperature": 0.0}, "temperature > 0"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0}, "top_p"),
                                             ({"timeout_s": 0}, "timeout_s"), ({"batch_size": 0}, "batch_size")])
def test_eval_config_is_range_checked(bad, option):
    with pytest.raises(UsageError, match=option):
        EvalConfig(**bad)


def test_query_bad_bench_is_one_line_error(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["query", "--model", str(tiny_model_dir), "--bench", str(tmp_path / "nope.jsonl"),
              "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope.jsonl" in err and len(err.splitlines()) == 1


def test_query_bad_options_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    base = ["query", "--model", str(tiny_model_dir), "-o", str(tmp_path / "out"), "--device", "cpu"]
    error = cli_error([*base, "--bench", "gsm8kk"], capsys)
    assert "unknown benchmark 'gsm8kk'" in error and "gsm8k, math500, humaneval, mbpp" in error
    assert "max_new_tokens must be >= 1" in cli_error([*base, "--bench", "gsm8k", "--max-new-tokens", "0"], capsys)
    assert "limit must be >= 1" in cli_error([*base, "--bench", "gsm8k", "--limit", "0"], capsys)
    assert "n must be >= 1" in cli_error([*base, "--bench", "gsm8k", "--n", "0"], capsys)
    assert not (tmp_path / "out").exists()


def test_query_mistyped_model_fails_before_the_benchmark_loads(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    import curate.evaluation.query

    def no_loading(*args, **kwargs):
        raise AssertionError("the benchmark was loaded before the model name was checked")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(curate.evaluation.query, "load_benchmark", no_loading)
    error = cli_error(["query", "--model", "not/a-model", "--bench", "gsm8k", "-o", str(tmp_path / "out")], capsys)
    assert "model 'not/a-model' not found" in error and "HF_HUB_OFFLINE" in error
    assert not (tmp_path / "out").exists()


def test_benchmark_defaults_pass_at_k_and_settings_in_the_summary():
    from curate.evaluation.evaluate import EvalResult, ProblemRecord, pass_at_k

    config = EvalConfig()
    math500, greedy = config.sampling("math500"), EvalConfig(temperature=0.0).sampling("gsm8k")
    assert (math500.max_new_tokens, math500.temperature, math500.top_p, math500.samples) == (32768, 0.6, 0.95, 4)
    assert greedy.samples == 1 and greedy.max_new_tokens == 8192  # greedy: one answer is all there is
    assert EvalConfig(max_new_tokens=64, samples=2).sampling("mbpp").max_new_tokens == 64
    records = [ProblemRecord("a", "math", "math500", "p", ["x"] * 4, [True, False, False, False], [False] * 4, ["s"] * 4),
               ProblemRecord("b", "math", "math500", "p", ["x"] * 4, [False] * 4, [True, False, False, False], ["s"] * 4)]
    assert pass_at_k(records, 1) == pytest.approx((0.25 + 0) / 2)
    assert pass_at_k(records, 2) == pytest.approx((1 - 3 / 6 + 0) / 2)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(records, 4) == pytest.approx(0.5)
    summary = EvalResult(records, config).summary()["math500"]
    assert summary["pass@k"] == {1: pytest.approx(0.125), 2: pytest.approx(0.25), 4: pytest.approx(0.5)}
    assert (summary["max_new_tokens"], summary["temperature"], summary["top_p"], summary["samples"]) == (32768, 0.6, 0.95, 4)
    assert summary["truncated"] == 1 / 8
