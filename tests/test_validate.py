"""`curate validate` end to end on CPU: two variants of a tiny Llama, a packaged benchmark slice."""

from __future__ import annotations

import json

import pytest

from curate.cli import main
from curate.evaluation.benchmarks import MATH_INSTRUCTION, load_benchmark
from tests.cli_helpers import cli_error

SUMS = [(1, 2), (3, 4), (5, 6)]


def row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def variants(tmp_path, write_jsonl):
    """`clean` (2 rows) and `dirty` (2 rows, one an evaluated GSM8K problem, as in the --limit 3 subset)."""
    problem = load_benchmark("gsm8k", limit=3, seed=0)[0]
    sums = [row(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.") for a, b in SUMS]
    leaked = row(problem.prompt.replace(MATH_INSTRUCTION, "").strip(), "Some worked solution. \\boxed{1}")
    return write_jsonl(tmp_path / "clean.jsonl", sums[:2]), write_jsonl(tmp_path / "dirty.jsonl", [sums[2], leaked])


def args(model, clean, dirty, out, *extra):
    return ["validate", "--model", str(model), f"clean={clean}", f"dirty={dirty}", "--eval", "gsm8k",
            "--limit", "3", "--max-new-tokens", "8", "--max-steps", "4", "--batch-size", "2", "--lr", "1e-2",
            "--max-length", "256", "--no-gradient-checkpointing", "-o", str(out), *extra]


def test_validate_trains_evaluates_compares_and_resumes(tiny_model_dir, variants, tmp_path, capsys):
    clean, dirty = variants
    out = tmp_path / "run"
    main(args(tiny_model_dir, clean, dirty, out, "--allow-contamination"))
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "results.json")
    assert "CONTAMINATED" in captured.err and "baseline" in captured.err

    results = json.loads((out / "results.json").read_text())
    assert results["baseline"] == "clean" and results["allow_contamination"] is True
    assert results["contamination"] == {"dirty": {"gsm8k exact": 1}}
    for name in ("clean", "dirty"):
        train = results["variants"][name]["train"]
        assert train["steps"] == 4 and train["examples_seen"] == 8 and train["tokens_seen"] > 0
        curve = train["loss_curve"]
        assert [s for s, _ in curve] == [1, 2, 3, 4]
        assert curve[-1][1] < curve[0][1]  # the same two rows every step
        assert (out / name / "checkpoint-4").is_dir() and (out / name / "log.jsonl").is_file()
    for name in ("base", "clean", "dirty"):
        rows = [json.loads(line) for line in (out / name / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all(r["source"] == "gsm8k" and len(r["correct"]) == 1 for r in rows)
    assert results["base"]["eval"]["gsm8k"]["n"] == 3
    comparison = {(r["benchmark"], r["model"]): r for r in results["comparison"]}
    assert set(comparison) == {("gsm8k", m) for m in ("base", "clean", "dirty")}
    assert comparison["gsm8k", "clean"]["delta"] is None
    assert comparison["gsm8k", "dirty"]["delta_ci95"] is not None
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun skips everything; changed settings are refused.
    stamp = (out / "clean" / "train.json").stat().st_mtime_ns
    main(args(tiny_model_dir, clean, dirty, out, "--allow-contamination"))
    err = capsys.readouterr().err
    assert "clean: trained already" in err and "dirty: evaluated already" in err
    assert (out / "clean" / "train.json").stat().st_mtime_ns == stamp
    error = cli_error([*args(tiny_model_dir, clean, dirty, out, "--allow-contamination"), "--max-steps", "5"], capsys)
    assert "made from other inputs" in error and "--overwrite" in error


def test_contaminated_variant_is_refused(tiny_model_dir, variants, tmp_path, capsys):
    clean, dirty = variants
    error = cli_error(args(tiny_model_dir, clean, dirty, tmp_path / "run"), capsys)
    assert "'dirty'" in error and "gsm8k exact: 1" in error and "--allow-contamination" in error
    assert not (tmp_path / "run" / "clean").exists()  # refused before any training


def test_bad_variant_arguments(tiny_model_dir, tmp_path, capsys):
    assert "NAME=DATASET" in cli_error(["validate", "--model", str(tiny_model_dir), "nodataset", "-o", str(tmp_path)],
                                       capsys)
    assert "base" in cli_error(["validate", "--model", str(tiny_model_dir), "base=x.jsonl", "-o", str(tmp_path)], capsys)
