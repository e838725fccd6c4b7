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
from tests.openai_server import FakeOpenAI, Faults

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from curate.models import load_model

    return load_model(str(tiny_model_dir))


def generating_server(model, tokenizer, delay: float = 0.0, **kwargs) -> FakeOpenAI:
    """The test server answering with `model` (greedy, one prompt at a time), listed as "tiny"."""
    import threading

    from curate.evaluation.generate import generate

    lock = threading.Lock()  # one generation at a time: the handler threads share the model

    def respond(body: dict) -> tuple[str, int, str]:
        time.sleep(delay)
        with lock:
            g = generate(model, tokenizer, [body["messages"][-1]["content"]], max_new_tokens=body["max_tokens"],
                         batch_size=1)[0][0]
        return g.text, g.n_tokens, "length" if g.truncated else "stop"

    server = FakeOpenAI(**kwargs)
    server.respond, server.models = respond, ["tiny"]
    return server


def test_server_engine_gives_the_same_answers_and_grades_as_hf(tiny, tmp_path):
    model, tokenizer = tiny
    problems = load_benchmark("gsm8k", limit=4) + load_benchmark("mbpp", limit=2)
    config = EvalConfig(max_new_tokens=12)
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
            evaluate(engine, load_benchmark("gsm8k", limit=1), EvalConfig(max_new_tokens=4))
        assert server.requests == []


def test_an_over_long_prompt_is_a_counted_error_not_a_crash(tiny, tmp_path):
    problems = load_benchmark("gsm8k", limit=4)
    longest = max(len(p.prompt) for p in problems)
    with generating_server(*tiny, faults=Faults(context=(longest // 4) + 8 - 1)) as server:
        result = evaluate(ServerEngine(ServerSettings(server.url, "tiny", max_retries=0)), problems,
                          EvalConfig(max_new_tokens=8))
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
