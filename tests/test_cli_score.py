"""`curate score` end to end on a tiny Llama saved to disk, with the packaged tokenizer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from curate.cli import main

SAMPLE = Path(__file__).parents[1] / "curate" / "resources" / "sample"


@pytest.fixture
def pool_file(tmp_path) -> Path:
    rows = [json.loads(line) for line in (SAMPLE / "pool.jsonl").read_text().splitlines()]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:4] + rows[48:52]))
    return path


@pytest.fixture
def query_file(tmp_path) -> Path:
    rows = (SAMPLE / "queries" / "math.jsonl").read_text().splitlines()[:4]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_score_writes_input_schema_plus_scores_and_resumes(tiny_model_dir, pool_file, query_file, tmp_path, capsys):
    out = tmp_path / "scored.parquet"
    args = ["score", str(pool_file), "-o", str(out), "--model", str(tiny_model_dir), "--query", f"math={query_file}",
            "--query-splits", "2", "--max-length", "300", "--fit-max-length", "300", "--chunk-size", "3",
            "--batch-tokens", "1024", "--tokens"]
    assert run(args) == 0
    table = pl.read_parquet(out)
    assert table.height == 8
    assert {"system", "conversations", "level"} <= set(table.columns)
    cols = ["curate_influence_math", "curate_influence_math_split0", "curate_influence_math_split1"]
    assert all(c in table.columns for c in cols)
    # rows cut at 300 tokens are flagged; a row whose prompt fills the bound has no response token
    # to score: it keeps its place with null scores, never dropped
    assert table["curate_truncated"].sum() > 0
    scorable = table["curate_tokens"] > 0
    assert scorable.sum() >= 3
    assert (table["curate_influence_math"].is_null() == ~scorable).all()
    assert (table.filter(scorable)["curate_nll"] > 0).all()
    tokens = pl.read_parquet(tmp_path / "scored.tokens.parquet")
    joined = tokens.join(table, on="curate_id")
    assert joined.height == int(scorable_count := (table["curate_tokens"] > 0).sum()) and scorable_count > 0
    for row in joined.iter_rows(named=True):  # per-token scores sum to the instance score
        assert len(row["token_ids"]) == len(row["token_influence_math"]) == row["curate_tokens"]
        assert abs(sum(row["token_influence_math"]) - row["curate_influence_math"]) <= 1e-3 * abs(row["curate_influence_math"]) + 1e-6
    card = (tmp_path / "scored.README.md").read_text()
    assert "Positive = up-weighting" in card and "query answers: reference" in card

    # a rerun reuses every stage and gives identical scores; a lost chunk is recomputed identically
    chunks = sorted((tmp_path / "scored.parquet.work" / "scores").glob("chunk-?????.parquet"))
    assert len(chunks) == 3
    kept_mtime = chunks[0].stat().st_mtime_ns
    chunks[-1].unlink()
    assert run(args) == 0
    assert chunks[0].stat().st_mtime_ns == kept_mtime
    again = pl.read_parquet(out)
    assert again.select(cols).equals(table.select(cols))

    # other settings on the same work dir are refused, with a one-line message
    capsys.readouterr()
    assert run([*args, "--fisher", "empirical"]) == 1
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("error:") and "--overwrite" in last and "Traceback" not in err


def test_killed_run_resumes_to_identical_scores(tiny_model_dir, query_file, tmp_path):
    """Only the run that is killed is a process of its own (SIGKILL, mid-way through the chunks);
    the reference and the resume run in this one (each process start costs seconds of imports).
    One row per chunk: six math rows, five with a response to score inside the bound (tens of ms
    each), then two code rows with none (null scores, fast): the kill after two chunks lands with
    three scorable chunks to go."""
    rows = (SAMPLE / "pool.jsonl").read_text().splitlines(keepends=True)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(rows[:6] + rows[48:50]))

    def args(out):
        return ["score", str(pool), "-o", str(out), "--model", str(tiny_model_dir), "--query",
                f"math={query_file}", "--max-length", "300", "--fit-max-length", "300", "--chunk-size", "1"]

    reference = tmp_path / "ref.parquet"
    assert run(args(reference)) == 0

    out = tmp_path / "killed.parquet"
    proc = subprocess.Popen([sys.executable, "-m", "curate", *args(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    chunk_dir = tmp_path / "killed.parquet.work" / "scores"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(chunk_dir.glob("chunk-*.parquet"))) < 2:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(chunk_dir.glob("chunk-*.parquet")))
    assert 2 <= done < 8, "the run should have been killed mid-way"
    assert not out.exists()
    assert run(args(out)) == 0
    assert len(list(chunk_dir.glob("chunk-*.parquet"))) == 8
    a, b = pl.read_parquet(reference), pl.read_parquet(out)
    assert a["curate_influence_math"].null_count() == 3
    assert a.select("curate_id", "curate_influence_math").equals(b.select("curate_id", "curate_influence_math"))


@pytest.mark.parametrize("bad,message", [
    (["--query", "nonsense"], "expected NAME=PATH"),
    (["--query", "math=missing.jsonl"], "missing.jsonl"),
    (["--query", "a=x", "--query-splits", "1"], "--query-splits 1: must be 0 (none) or >= 2"),
])
def test_bad_options_give_one_line_errors(tiny_model_dir, pool_file, tmp_path, capsys, bad, message):
    code = run(["score", str(pool_file), "-o", str(tmp_path / "o.parquet"), "--model", str(tiny_model_dir), *bad])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1


def test_missing_query_fails_before_anything_loads(pool_file, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import curate.models
    from curate.cli import cli

    def no_loading(*args, **kwargs):
        raise AssertionError("nothing may be loaded before the arguments are checked")

    monkeypatch.setattr(curate.models, "load_model", no_loading)
    monkeypatch.setattr(curate.models, "check_model", no_loading)
    result = CliRunner().invoke(cli, ["score", str(pool_file), "-o", str(tmp_path / "out"),
                                      "--model", str(tmp_path / "nonexistent")])
    assert result.exit_code == 2 and "Missing option '--query'" in result.output
    assert "nonexistent" not in result.output and not (tmp_path / "out.work").exists()


def test_mistyped_model_fails_at_once_before_the_pool_loads(pool_file, query_file, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    import curate.data

    def no_loading(*args, **kwargs):
        raise AssertionError("the pool was loaded before the model name was checked")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on a machine without network
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(curate.data, "load_pool", no_loading)
    code = run(["score", str(pool_file), "-o", str(tmp_path / "o.parquet"), "--model", "smollm2-135",
                "--query", f"math={query_file}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("error: model 'smollm2-135' not found: no folder ")
    assert "not in the Hugging Face cache" in err and "did you mean 'smollm2-135m'?" in err


def test_shard_jobs_and_merge_through_the_cli(tiny_model_dir, pool_file, query_file, tmp_path, capsys):
    out = tmp_path / "scored.parquet"
    args = ["score", str(pool_file), "-o", str(out), "--model", str(tiny_model_dir), "--query", f"math={query_file}",
            "--max-length", "300", "--fit-max-length", "300", "--chunk-size", "3", "--batch-tokens", "1024"]
    work = f"{out}.work"
    steps = []
    for _ in range(3):  # covariances, eigenvalue corrections, scores
        for i in range(2):
            assert run([*args, "--shard", f"{i}/2"]) == 0
            steps.append(capsys.readouterr().err.strip().splitlines()[-1])
        assert not out.exists()
        assert run(["merge", work]) == 0
        steps.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert "covariance part 1/2" in steps[1] and "eigenbases" in steps[2]
    assert "factors complete" in steps[5] and "all 3 chunks written" in steps[8]
    assert run(args) == 0  # without --shard: everything is on disk, the output is written
    assert pl.read_parquet(out)["curate_influence_math"].drop_nulls().len() >= 3
    assert run(["merge", str(tmp_path)]) != 0
    assert "no factors stage" in capsys.readouterr().err


def test_card_query_answers_is_a_documented_value():
    from types import SimpleNamespace

    from curate.cli.operation import operation_command
    from curate.errors import UsageError
    from curate.influence.config import QUERY_ANSWERS, ScoreConfig
    from curate.influence.output import score_card

    option = next(p for p in operation_command("score").params if p.name == "query_answers")
    assert tuple(option.type.choices) == QUERY_ANSWERS == ("reference", "model")
    for answers in QUERY_ANSWERS:
        result = SimpleNamespace(config=ScoreConfig(model="m", query_answers=answers),
                                 plan=SimpleNamespace(render=lambda: "plan"), stability={},
                                 checkpoints=None)
        settings = score_card(result, {})["Influence settings"]
        assert f"- query answers: {answers}" in settings and "query_answers" not in settings
    with pytest.raises(UsageError, match="query_answers .correct.: choose from reference, model"):
        ScoreConfig(model="m", query_answers="correct")
