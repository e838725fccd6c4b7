"""`curate validate` end to end on CPU: two variants of a tiny Llama, a packaged benchmark slice."""

from __future__ import annotations

import json

import pytest

from curate.cli import main
from curate.evaluation.benchmarks import MATH_INSTRUCTION, load_benchmark
from curate.evaluation.compare import comparison
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
    (tmp_path / "clean.README.md").write_text("# clean\n")  # the card curate writes beside a pool
    return write_jsonl(tmp_path / "clean.jsonl", sums[:2]), write_jsonl(tmp_path / "dirty.jsonl", [sums[2], leaked])


def args(model, clean, dirty, out, *extra):
    return ["validate", "--model", str(model), f"clean={clean}", f"dirty={dirty}", "--eval", "gsm8k",
            "--limit", "3", "--max-new-tokens", "8", "--temperature", "0", "--max-steps", "4", "--batch-size", "2", "--lr", "1e-2",
            "--max-length", "256", "--no-gradient-checkpointing", "-o", str(out), *extra]


def test_validate_trains_evaluates_compares_and_resumes(tiny_model_dir, variants, tmp_path, capsys):
    clean, dirty = variants
    out = tmp_path / "run"
    main(args(tiny_model_dir, clean, dirty, out, "--allow-contamination"))
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "results.json")
    assert "CONTAMINATED" in captured.err and "baseline" in captured.err
    squeezed = "".join(captured.err.split())  # rich wraps long paths at any width
    assert "(card:" in squeezed and "clean.README.md" in squeezed

    results = json.loads((out / "results.json").read_text())
    assert results["baseline"] == "clean" and results["allow_contamination"] is True
    assert results["contamination"] == {"dirty": {"gsm8k exact": 1}}
    assert results["variants"]["clean"]["card"] == str(tmp_path / "clean.README.md")
    assert results["variants"]["dirty"]["card"] is None
    for name in ("clean", "dirty"):
        train = results["variants"][name]["train"]
        assert train["steps"] == 4 and train["examples_seen"] == 8 and train["tokens_seen"] > 0
        curve = train["loss_curve"]
        assert [s for s, _ in curve] == [1, 2, 3, 4]
        assert curve[-1][1] < curve[0][1]  # the same two rows every step
        logged = [json.loads(line) for line in (out / name / "log.jsonl").read_text().splitlines()]
        assert [[e["step"], e["loss"]] for e in logged if "loss" in e] == curve
        assert (out / name / "checkpoint-4").is_dir()
    # Both variants see the same number of examples but not the same tokens (their rows differ).
    assert results["variants"]["clean"]["train"]["tokens_seen"] != results["variants"]["dirty"]["train"]["tokens_seen"]
    ids = {p.id for p in load_benchmark("gsm8k", limit=3, seed=0)}
    for name in ("base", "clean", "dirty"):
        rows = [json.loads(line) for line in (out / name / "generations.jsonl").read_text().splitlines()]
        assert {r["id"] for r in rows} == ids and all(r["source"] == "gsm8k" and len(r["correct"]) == 1 for r in rows)
        scores = json.loads((out / name / "eval.json").read_text())["scores"]
        assert set(scores) == ids and all(s in (0.0, 1.0) for s in scores.values())  # every problem scored
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


def test_bad_arguments_are_one_line_errors(tiny_model_dir, variants, tmp_path, capsys):
    assert "NAME=DATASET" in cli_error(["validate", "--model", str(tiny_model_dir), "nodataset", "-o", str(tmp_path)],
                                       capsys)
    assert "base" in cli_error(["validate", "--model", str(tiny_model_dir), "base=x.jsonl", "-o", str(tmp_path)], capsys)
    clean, dirty = variants
    out = tmp_path / "run"
    error = cli_error([*args(tiny_model_dir, clean, dirty, out), "--eval", "gsm8k,mbqq"], capsys)
    assert "unknown benchmark 'mbqq'" in error
    assert "samples > 1 needs temperature > 0" in cli_error([*args(tiny_model_dir, clean, dirty, out), "--samples", "2"],
                                                            capsys)
    assert "max_steps must be >= 1" in cli_error([*args(tiny_model_dir, clean, dirty, out), "--max-steps", "0"], capsys)
    assert not out.exists()


def test_comparison_intervals_on_known_scores():
    """Paired bootstrap: a variant right on 6 more of 10 problems than the baseline is +0.6 with an
    interval that excludes 0; the baseline's own row has no delta."""
    ids = [f"b/{i}" for i in range(10)]
    base = {i: float(k < 2) for k, i in enumerate(ids)}
    better = {i: float(k < 8) for k, i in enumerate(ids)}

    def ev(scores):
        mean = sum(scores.values()) / len(scores)
        return {"summary": {"b": {"n": 10, "pass@1": mean, "ci95": [mean, mean], "truncated": 0.0}},
                "scores": scores, "sources": dict.fromkeys(scores, "b")}

    rows = {r["model"]: r for r in comparison({"pool": ev(base), "flip": ev(better)}, "pool")}
    assert rows["pool"]["delta"] is None and rows["pool"]["delta_ci95"] is None
    assert rows["flip"]["delta"] == pytest.approx(0.6)
    low, high = rows["flip"]["delta_ci95"]
    assert 0 < low < 0.6 < high <= 1


def test_recipe_validate_section_resolves_and_checks_benchmarks(tmp_path, write_jsonl):
    """A recipe's benchmark files are relative to the recipe; a mistyped name fails the dry run."""
    from curate.recipes.check import parse_recipe

    write_jsonl(tmp_path / "pool.jsonl", [row("What is 1 + 2?", "3")])
    write_jsonl(tmp_path / "mine.jsonl", [{"question": "What is 2 + 2?", "answer": "4"}])
    recipe = tmp_path / "r.yaml"
    text = ("inputs:\n  pool: pool.jsonl\nsteps:\n  - op: prune\n    strategy: length\n    keep: 0.5\n"
            "output: out.jsonl\nvalidate:\n  model: m\n  eval: [gsm8k, mine.jsonl, org/bench, {}]\n")
    recipe.write_text(text.format("gsm8kk"))
    _, errors = parse_recipe(recipe, check_files=False)
    assert errors == [f"{recipe}:10: validate: eval: unknown benchmark 'gsm8kk': expected one of gsm8k, math500, "
                      "humaneval, mbpp, a local file or folder, or a Hub id (owner/name)"]
    recipe.write_text(text.format("math500"))
    parsed, errors = parse_recipe(recipe, check_files=False)
    assert errors == [] and parsed.validate.config.evals == ("gsm8k", str(tmp_path / "mine.jsonl"), "org/bench", "math500")


def test_atomic_writes_honour_the_umask(tmp_path):
    import os
    import stat

    from curate.stages import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "results.json", b"{}")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644  # as open(path, "w") gives
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    assert (tmp_path / "results.json").read_bytes() == b"{}" and not list(tmp_path.glob(".*.tmp"))


def test_mistyped_model_fails_before_any_data_loads(variants, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    import curate.data

    def no_loading(*args, **kwargs):
        raise AssertionError("a variant was loaded before the model name was checked")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(curate.data, "load_pool", no_loading)
    clean, dirty = variants
    error = cli_error(args("smollm2-135", clean, dirty, tmp_path / "run"), capsys)
    assert "model 'smollm2-135' not found" in error and "did you mean 'smollm2-135m'?" in error
    assert not (tmp_path / "run").exists()
