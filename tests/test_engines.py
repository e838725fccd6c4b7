"""Generation through an inference server: `curate query --engine server` against a real HTTP
server on 127.0.0.1 whose replies the tiny test model generates with transformers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.cli import main
from curate.errors import UsageError
from curate.evaluation import (
    EvalConfig,
    HFEngine,
    ServerEngine,
    ServerSettings,
    evaluate,
    load_benchmark,
)
from tests.openai_server import Faults, generating_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from curate.models import load_model

    return load_model(str(tiny_model_dir))


def test_server_engine_gives_the_same_answers_and_grades_as_hf(tiny, tmp_path):
    model, tokenizer = tiny
    problems = load_benchmark("gsm8k", limit=4) + load_benchmark("mbpp", limit=2)
    config = EvalConfig(max_new_tokens=12, temperature=0.0)
    local = evaluate(HFEngine(model, tokenizer, batch_size=1), problems, config)
    with generating_server(model, tokenizer) as server:
        served = evaluate(ServerEngine(ServerSettings(server.url, "tiny", cache=str(tmp_path / "g.sqlite"))),
                          problems, config)
        sent = len(server.requests)
    assert [r.completions for r in served.records] == [r.completions for r in local.records]
    assert [r.correct for r in served.records] == [r.correct for r in local.records]
    assert [r.status for r in served.records] == [r.status for r in local.records]
    assert sent == len(problems) and all(b["body"]["temperature"] == 0.0 for b in server.requests)


def test_a_server_serving_another_model_is_refused(tiny, tmp_path):
    with generating_server(*tiny) as server:
        server.models = ["someone-else"]
        engine = ServerEngine(ServerSettings(server.url, "tiny"))
        with pytest.raises(UsageError, match="serves someone-else, not 'tiny': refusing"):
            evaluate(engine, load_benchmark("gsm8k", limit=1), EvalConfig(max_new_tokens=4, temperature=0.0))
        assert server.requests == []


def test_an_over_long_prompt_is_a_counted_error_not_a_crash(tiny, tmp_path):
    problems = load_benchmark("gsm8k", limit=4)
    longest = max(len(p.prompt) for p in problems)
    with generating_server(*tiny, faults=Faults(context=(longest // 4) + 8 - 1)) as server:
        result = evaluate(ServerEngine(ServerSettings(server.url, "tiny", max_retries=0)), problems,
                          EvalConfig(max_new_tokens=8, temperature=0.0))
    errors = [s for r in result.records for s in r.status if s.startswith("error: ")]
    assert len(errors) >= 1 and all("context: 400" in e for e in errors)
    assert result.summary()["gsm8k"]["errors"] == len(errors) and len(result.records) == 4


def test_killed_query_resumes_without_regenerating_finished_answers(tiny, tmp_path):
    out = tmp_path / "q"
    args = ["query", "--engine", "server", "--model", "tiny", "--bench", "gsm8k", "--limit", "6",
            "--max-new-tokens", "6", "--concurrency", "1", "-o", str(out)]
    env = {**os.environ, "CURATE_THREADS": "1"}
    with generating_server(*tiny, delay=0.4) as server:
        cmd = [sys.executable, "-m", "curate", *args, "--base-url", server.url]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(server.requests) < 4 and time.monotonic() < deadline:  # three answered, the fourth in flight
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = [r["raw"] for r in server.requests]
        assert 4 <= len(first) < 6
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        second = [r["raw"] for r in server.requests[len(first):]]
    assert not set(second) & set(first[:3])  # nothing answered before the kill is generated again
    assert len(set(first) | set(second)) == 6
    graded = [json.loads(x) for x in (out / "graded.jsonl").read_text().splitlines()]
    assert len(graded) == 6


def test_engine_options_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["query", "--engine", "server", "--model", "m", "--bench", "gsm8k", "-o", "x"])
    assert "--engine server needs --base-url" in capsys.readouterr().err


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A `vllm` executable on PATH that records its command line and serves, through
    tests/openai_server.py, the model it was given (greedy generation with transformers)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "vllm-argv.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "vllm"
    script.write_text(f"""#!{sys.executable}
import json, sys, os
args = sys.argv[1:]
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
model, port, name = args[1], args[args.index("--port") + 1], args[args.index("--served-model-name") + 1]
ids = [name]
if "--lora-modules" in args:  # as vLLM does, list each module as a model (this fake serves the base for all)
    ids += [m.split("=")[0] for m in args[args.index("--lora-modules") + 1:] if not m.startswith("--")]
serve = ["--generate", model] if os.path.isdir(model) else []  # no model folder: the canned answers
os.execv({sys.executable!r}, [{sys.executable!r}, {str(ROOT / "tests" / "openai_server.py")!r}, port,
                              *serve, *[x for i in ids for x in ("--model-id", i)]])
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_vllm_engine_starts_the_server_evaluates_through_it_and_stops_it(tiny, tiny_model_dir, tmp_path, fake_vllm):
    from curate.evaluation import build_query_sets
    from curate.evaluation.vllm import VLLMLaunch, command

    out = tmp_path / "q"
    summary = build_query_sets(str(tiny_model_dir), "gsm8k", out, limit=3, max_new_tokens=6, engine="vllm")
    argv = [json.loads(x) for x in fake_vllm.read_text().splitlines()]
    assert len(argv) == 1 and argv[0][:2] == ["serve", str(tiny_model_dir)]
    assert argv[0][argv[0].index("--served-model-name") + 1] == str(tiny_model_dir)
    local = evaluate(HFEngine(*tiny, batch_size=1), load_benchmark("gsm8k", limit=3), EvalConfig(max_new_tokens=6, temperature=0.0))
    graded = [json.loads(x) for x in (out / "graded.jsonl").read_text().splitlines()]
    assert [g["completions"] for g in graded] == [r.completions for r in local.records]
    assert summary["graded"] == 3
    port = int(argv[0][argv[0].index("--port") + 1])
    with pytest.raises(OSError):  # shut down after the run
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    assert command(VLLMLaunch("base", "ft", lora={"ft": "/adapters/ft"}), 8000) == [
        "vllm", "serve", "base", "--host", "127.0.0.1", "--port", "8000", "--served-model-name", "ft",
        "--enable-lora", "--lora-modules", "ft=/adapters/ft"]


def test_vllm_server_is_stopped_when_the_evaluation_fails(tmp_path, fake_vllm):
    import urllib.request

    from curate.evaluation.vllm import VLLMLaunch, serving

    with pytest.raises(RuntimeError, match="boom"), serving(VLLMLaunch("no-model-folder", "tiny")) as url:
        port = int(url.split(":")[2].split("/")[0])
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        raise RuntimeError("boom")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def _validate_args(model, pool, out, *extra):
    return ["validate", "--model", str(model), f"clean={pool}", "--eval", "gsm8k", "--limit", "2",
            "--max-new-tokens", "6", "--temperature", "0", "--max-steps", "2", "--batch-size", "2", "--max-length", "256",
            "--no-gradient-checkpointing", "-o", str(out), *extra]


@pytest.fixture
def clean_pool(tmp_path, write_jsonl):
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."}]}
            for a, b in ((2, 3), (4, 5))]
    return write_jsonl(tmp_path / "clean.jsonl", rows)


def test_validate_through_a_server_that_serves_each_model_by_name(tiny, tiny_model_dir, clean_pool, tmp_path, capsys):
    out = tmp_path / "run"
    with generating_server(*tiny, model_ids=("base",)) as server:
        with pytest.raises(SystemExit):  # it serves the base only: the variant is refused, with the fix
            main(_validate_args(tiny_model_dir, clean_pool, out, "--engine", "server", "--base-url", server.url))
        err = capsys.readouterr().err
        assert "serves base, not 'clean': refusing" in err and "--served-model-name base --enable-lora" in err
        server.models = ["base", "clean"]
        main(_validate_args(tiny_model_dir, clean_pool, out, "--engine", "server", "--base-url", server.url))
    results = json.loads((out / "results.json").read_text())
    assert results["eval_config"]["engine"] == "server" and set(results["variants"]) == {"clean"}
    local = tmp_path / "local"  # the same run with transformers: the base model's answers and grades agree
    main(_validate_args(tiny_model_dir, clean_pool, local, "--engine", "hf", "--eval-batch-size", "1"))
    rows = [[json.loads(x) for x in (run / "base" / "generations.jsonl").read_text().splitlines()] for run in (out, local)]
    assert [(r["completions"], r["correct"]) for r in rows[0]] == [(r["completions"], r["correct"]) for r in rows[1]]
    assert {r["body"]["model"] for r in server.requests} == {"base", "clean"}
    assert (out / "clean" / "generations.sqlite").is_file() and (out / "base" / "generations.sqlite").is_file()
    assert "clean: trained already" in capsys.readouterr().err  # the second run skipped the training


def test_validate_with_vllm_serves_lora_variants_as_modules_and_stops(tiny_model_dir, clean_pool, tmp_path,
                                                                      fake_vllm):
    pytest.importorskip("peft")
    out = tmp_path / "run"
    main(_validate_args(tiny_model_dir, clean_pool, out, "--engine", "vllm", "--lora-r", "2"))
    argv = [json.loads(x) for x in fake_vllm.read_text().splitlines()]
    assert len(argv) == 1  # one server for the base and the LoRA variant
    cmd = argv[0]
    assert cmd[:2] == ["serve", str(tiny_model_dir)] and cmd[cmd.index("--served-model-name") + 1] == "base"
    assert cmd[cmd.index("--lora-modules") + 1] == f"clean={out / 'clean' / 'model'}"
    results = json.loads((out / "results.json").read_text())
    assert results["eval_config"]["engine"] == "vllm" and results["base"]["eval"]["gsm8k"]["n"] == 2
