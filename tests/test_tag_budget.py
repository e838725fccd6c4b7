"""Tagging against slow, small-context servers (tests/openai_server.py made slow and small):
token-aware budgets, prompts shrunk to fit, timeouts that grow with the prompt and are retried
once, failures that fail, and a dry-run estimate that counts as the server does."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli, main
from curate.data import load_pool
from curate.models import load_tokenizer
from curate.tagging import TagConfig, tag_pool
from curate.tagging.budget import Budget
from curate.tagging.tagger import over_context
from tests.openai_server import FakeOpenAI, Faults

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "curate" / "resources" / "sample" / "pool.jsonl"
TOKENIZER = ROOT / "curate" / "resources" / "smollm2_tokenizer"


def _pool(tmp_path: Path, long: int = 3, short: int = 5) -> Path:
    """Math rows of the sample as plain responses (no thought block, so the difficulty prompt
    carries the whole response): `short` as they are (~0.6-2k characters), `long` repeated to
    ~10k characters."""
    rows = [json.loads(x) for x in SAMPLE.read_text().splitlines()[:48]]
    out = []
    for i, row in enumerate(rows[: long + short]):
        problem, answer = (turn["value"] for turn in row["conversations"])
        answer = answer.replace("<|begin_of_thought|>", "").replace("<|end_of_thought|>", "")
        answer = answer.replace("<|begin_of_solution|>", "").replace("<|end_of_solution|>", "")
        if i < long:
            answer = (answer + "\n\n") * (10_000 // len(answer) + 1)
        out.append({"id": f"r{i}", "conversations": [{"from": "user", "value": problem},
                                                     {"from": "assistant", "value": answer}]})
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


@pytest.fixture(scope="module")
def count():
    tokenizer = load_tokenizer(str(TOKENIZER))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _errors(row) -> dict:
    return json.loads(row["curate_tag_errors"]) if row["curate_tag_errors"] else {}


def test_a_small_context_server_gets_prompts_that_fit(tmp_path, count):
    """Told its context (GET /v1/models), the tagger clips prompts to fit before sending: no 400."""
    pool = load_pool(str(_pool(tmp_path)))
    with FakeOpenAI(Faults(context=1536), count_tokens=count) as server:
        config = TagConfig(base_urls=(server.url,), model="m", tasks="difficulty", max_retries=0,
                           tokenizer=str(TOKENIZER), cache=str(tmp_path / "c.sqlite"))
        annotations, report = tag_pool(pool, config)
        bodies = [r["body"]["messages"][-1]["content"] for r in server.requests]
        _, again = tag_pool(pool, config)  # a rerun: every answer from the cache
    assert report.failed == {"difficulty": 0} and report.shrunk == 0 and report.fitted == 3
    assert "context: 1536 tokens" in report.budget and "tokenizer" in report.budget
    assert all(row["curate_difficulty"] is not None for row in annotations.to_dicts())
    assert len(bodies) == len(pool) and all(count(b) + 512 <= 1536 for b in bodies)  # none refused
    assert again.tasks["difficulty"].cache_hits == len(pool) and again.runs == 2


def test_over_long_prompts_succeed_after_one_shrink(tmp_path, count):
    """A server that does not say its context answers 400 with OpenAI's message; each over-long
    request is re-rendered smaller from the numbers in that message and succeeds, once."""
    pool = load_pool(str(_pool(tmp_path)))
    with FakeOpenAI(Faults(context=1536), count_tokens=count) as server:
        server.advertise = False
        config = TagConfig(base_urls=(server.url,), model="m", tasks="difficulty", max_retries=0)
        annotations, report = tag_pool(pool, config)
        bodies = [r["body"]["messages"][-1]["content"] for r in server.requests]
    long_rows = sum(count(b) + 512 > 1536 for b in bodies[: len(pool)])
    assert report.shrunk == long_rows and len(bodies) == len(pool) + long_rows  # one resend each, no more
    assert all(count(b) + 512 <= 1536 for b in bodies[len(pool):])
    assert long_rows == 3 and report.tasks["difficulty"].errors == {"context": long_rows}
    rows = annotations.to_dicts()
    assert all(r["curate_difficulty"] is not None and not _errors(r) for r in rows)


def test_over_context_reads_openai_wording():
    message = ("request failed after 1 attempt(s): context: 400: This model's maximum context length is 8192 "
               "tokens. However, you requested 33239 tokens (32727 in the messages, 512 in the completion).")
    assert over_context(message, 512) == (32727, 7680)
    assert over_context("context: 400: prompt too long", 512) == (None, None)


def test_slow_server_timeouts_grow_with_the_prompt_are_retried_once_and_fail_the_run(tmp_path, capsys):
    """Prefill time grows with the prompt; the long rows still time out. Each timed-out request
    is tried twice at most, every row ends with a value or a recorded cause, and the run exits 3."""
    pool = _pool(tmp_path, long=2, short=3)
    out = tmp_path / "out.jsonl"
    # The server counts len // 4 tokens and takes 1 ms each: ~0.6 s for a short prompt (~2.4k
    # characters, timeout 1 s + 0.1 ms x 1.2k estimated tokens = 1.1 s), ~3 s for a long one
    # (~11.5k characters, timeout ~1.6 s).
    with FakeOpenAI(Faults(delay_per_token=0.001)) as server, pytest.raises(SystemExit) as exit_info:
        main(["tag", str(pool), "-o", str(out), "--model", "m", "--tasks", "difficulty", "--timeout", "1",
              "--timeout-per-token", "0.0001", "--base-url", server.url])
    attempts = Counter(r["raw"] for r in server.requests)
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "failed requests: 2 x timeout" in err
    # Printed to a file (not a terminal), the summary keeps its full names.
    assert "difficulty" in err and "cache hits" in err and "unparsed" in err and "…" not in err
    assert sorted(attempts.values()) == [1, 1, 1, 2, 2]  # the slow ones twice, the rest once
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["curate_difficulty"] is None for r in rows] == [True, True, False, False, False]
    assert all("timeout" in _errors(r)["difficulty"]["reason"] for r in rows[:2])
    card = (tmp_path / "out.README.md").read_text()
    assert "retries (by cause)" in card and "| 7 | 2 (timeout 2) | 2 | timeout 4 |" in card


@pytest.mark.parametrize("how", ["tokenizer", "server"])
def test_dry_run_estimate_is_within_15_percent_of_the_servers_count(tmp_path, count, how):
    pool = _pool(tmp_path)
    out = tmp_path / "out.jsonl"
    with FakeOpenAI(count_tokens=count) as server:
        server.tokenize = how == "server"
        base = ["tag", str(pool), "-o", str(out), "--base-url", server.url, "--model", "m"]
        extra = ["--tokenizer", str(TOKENIZER)] if how == "tokenizer" else []
        dry = CliRunner().invoke(cli, [*base, *extra, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        estimated = int(dry.output.split("~")[1].split(" input tokens")[0])
        assert ("tokenizer" if how == "tokenizer" else "/tokenize") in dry.output
        _, report = tag_pool(load_pool(str(pool)), TagConfig(base_urls=(server.url,), model="m", **(
            {"tokenizer": str(TOKENIZER)} if how == "tokenizer" else {})))
    served = sum(c.tokens_in for c in report.tasks.values())
    assert abs(estimated - served) / served < 0.15, (estimated, served)


def test_the_estimate_errs_long_on_reasoning_text(count):
    text = "".join(json.loads(x)["conversations"][1]["value"] for x in SAMPLE.read_text().splitlines()[:20])
    assert Budget.estimate(text) >= count(text)


def test_timeouts_shrink_the_requests_in_flight_and_successes_grow_them(tmp_path):
    """The adaptive limit: after a burst of timeouts the client sends one request at a time, then
    opens up again as replies come back; it never exceeds --concurrency."""
    import asyncio
    import time

    from curate.tagging.cache import ResponseCache
    from curate.tagging.client import Counters, Rater
    from curate.tagging.prompts import load_prompts

    prompt = load_prompts(["domain"])["domain"]
    with FakeOpenAI(Faults(slow=1.0, slow_seconds=0.6)) as server:
        async def run() -> tuple[float, float]:
            rater = Rater(base_urls=[server.url], api_key="x", model="m", params={}, concurrency=8, timeout=0.2,
                          max_retries=0, backoff=0.01, max_backoff=0.01, cache=ResponseCache(tmp_path / "c.sqlite"),
                          timeout_retries=0)
            counters = Counters()
            await asyncio.gather(*[rater.complete(f"slow{i}", f"slow {i}", prompt, counters) for i in range(8)])
            after_timeouts = rater.window
            await asyncio.sleep(0.7)  # the server finishes the abandoned requests
            server.max_in_flight = 0
            # Second arrivals of the same bodies are fast (faults hit first arrivals only).
            await asyncio.gather(*[rater.complete(f"fast{i}", f"slow {i}", prompt, counters) for i in range(8)])
            await rater.close()
            return after_timeouts, rater.window

        started = time.monotonic()
        after_timeouts, after_successes = asyncio.run(run())
    assert after_timeouts == 1.0  # halved per timeout, floored at one request
    assert server.max_in_flight <= 3 < 8  # the second burst was paced, not sent all at once
    assert 1.0 < after_successes <= 8 and time.monotonic() - started < 10
