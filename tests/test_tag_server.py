"""`curate tag` against a real local OpenAI-compatible server (tests/openai_server.py), no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.data import load_pool
from curate.tagging import BEHAVIORS, TagConfig, tag_pool
from curate.tagging.cache import ResponseCache
from tests.openai_server import FakeOpenAI, Faults, expected

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "curate" / "resources" / "sample" / "pool.jsonl"
SECRET = "sk-curate-test-DO-NOT-LEAK-7f3a9c"


def _small_pool(tmp_path: Path, rows: int = 12, dupes: int = 0) -> Path:
    """The first math and code rows of the sample (plus `dupes` exact copies under new ids)."""
    lines = SAMPLE.read_text().splitlines()
    picked = [json.loads(x) for x in lines[: rows // 2] + lines[48: 48 + rows - rows // 2]]
    for i, row in enumerate(picked):
        row["id"] = f"r{i}"
    picked += [{**picked[i], "id": f"dup{i}"} for i in range(dupes)]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_against_server(out_rows: list[dict], server: FakeOpenAI, unparseable: float = 0.0) -> None:
    """Every row's tags equal what the server answered for that row's request, or are null with a reason."""
    by_kind: dict[str, list] = {}
    for content in server.bodies():
        kind, value = expected(content, unparseable)
        by_kind.setdefault(kind, []).append(value)
    for row in out_rows:
        errors = json.loads(row["curate_tag_errors"]) if row["curate_tag_errors"] else {}
        assert row["curate_difficulty_source"] == "llm"
        if row["curate_difficulty"] is None:
            assert errors["difficulty"]["reason"]
        for b in BEHAVIORS:
            if row[f"curate_behavior_{b}"] is None:
                assert errors[b]["reason"], row
            else:
                assert 0 <= row[f"curate_behavior_{b}"] < 7


def test_cli_reproduces_server_answers_and_never_leaks_the_key(tmp_path):
    pool = _small_pool(tmp_path, rows=10)
    out = tmp_path / "tagged.jsonl"
    env = {**os.environ, "MY_RATER_KEY": SECRET}
    with FakeOpenAI() as server:
        result = CliRunner(env=env).invoke(cli, [
            "tag", str(pool), "-o", str(out), "--base-url", server.url, "--model", "rater-x",
            "--api-key-env", "MY_RATER_KEY", "--concurrency", "4", "--price-in", "1", "--price-out", "2"])
        assert result.exit_code == 0, result.output
    assert {r["authorization"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert {r["body"]["temperature"] for r in server.requests} == {0.0}
    rows = _rows(out)
    # Exact reproduction: recompute each row's requests from the cache inputs and the server's rule.
    answers = {c: expected(c) for c in server.bodies()}
    assert len(answers) == len(server.requests) == 10 * 6  # one difficulty + five behaviours per row
    cache = ResponseCache(str(out) + ".tagcache.sqlite")
    inputs = cache.inputs()
    cache.close()
    assert sorted(inputs) == sorted(answers)
    for row in rows:
        trace_bits = row["conversations"][1]["value"]
        mine = [c for c in answers if _trace_of(row) in c or _problem_of(row) in c]
        ratings = [answers[c][1] for c in mine if answers[c][0] == "rating"]
        assert [row["curate_difficulty"]] == ratings, trace_bits[:80]
        counts = {answers[c][1] for c in mine if answers[c][0] == "count"}
        assert {row[f"curate_behavior_{b}"] for b in BEHAVIORS} <= counts
        assert row["curate_tag_errors"] is None and row["curate_tag_long"] == "full"
    card = out.with_name("tagged.README.md").read_text()
    assert "rater-x" in card and "sha256:" in card and "estimated cost" in card
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.output


def _trace_of(row: dict) -> str:
    value = row["conversations"][1]["value"]
    if "<|end_of_thought|>" in value:
        value = value.split("<|end_of_thought|>")[0].split("<|begin_of_thought|>")[1]
    return value.strip()[:200]


def _problem_of(row: dict) -> str:
    return row["conversations"][0]["value"][:200]


def test_faults_are_retried_counted_and_no_row_is_lost(tmp_path):
    pool = load_pool(str(_small_pool(tmp_path, rows=16)))
    faults = Faults(rate_limit=0.08, server_error=0.08, slow=0.04, slow_seconds=1.0, drop=0.06,
                    malformed=0.06, unparseable=0.08)
    config = TagConfig(base_urls=("placeholder",), model="m", concurrency=6, timeout=0.5, timeout_per_token=0, backoff=0.02,
                       cache=str(tmp_path / "c.sqlite"), tasks="difficulty,behaviors")
    with FakeOpenAI(faults) as server:
        config.base_urls = (server.url,)
        annotations, report = tag_pool(pool, config)
    # A timed-out request is abandoned by the client (its connection closed) while the server
    # still sleeps on it, so the server may see those on top of the client's bound.
    slow = sum(r["fault"] == "slow" for r in server.requests)
    assert server.max_in_flight <= 6 + slow
    retries = sum(c.retries for c in report.tasks.values())
    faulted = sum(r["fault"] is not None for r in server.requests)
    assert faulted > 5 and retries == faulted  # each fault costs exactly one retry (first arrival only)
    assert sum(c.requests for c in report.tasks.values()) == len(server.requests)
    assert sum(c.failures for c in report.tasks.values()) == 0
    errors_seen = {k for c in report.tasks.values() for k in c.errors}
    assert {"429", "500", "timeout", "connection", "malformed"} <= errors_seen
    rows = annotations.to_dicts()
    assert len(rows) == 16
    unparsed = 0
    for row in rows:
        errors = json.loads(row["curate_tag_errors"]) if row["curate_tag_errors"] else {}
        for col, task in [("curate_difficulty", "difficulty"), *((f"curate_behavior_{b}", b) for b in BEHAVIORS)]:
            if row[col] is None:
                unparsed += 1
                assert errors[task]["reason"] and errors[task]["raw"]  # unparsed, never 0
            else:
                assert task not in errors
        # a source only where there is a value: "llm" never labels a row the rater did not answer
        assert (row["curate_difficulty_source"] == "llm") == (row["curate_difficulty"] is not None)
    assert unparsed == sum(report.unparsed.values()) > 0
    assert report.sources.get("llm", 0) == sum(r["curate_difficulty"] is not None for r in rows)


def test_retry_after_is_honoured_and_exhausted_retries_are_failures_not_cached(tmp_path):
    pool = load_pool(str(_small_pool(tmp_path, rows=2)))
    config = TagConfig(base_urls=("x",), model="m", concurrency=4, backoff=0.001, tasks="difficulty",
                       cache=str(tmp_path / "c.sqlite"))
    with FakeOpenAI(Faults(rate_limit=1.0, retry_after="0.4")) as server:
        config.base_urls = (server.url,)
        annotations, report = tag_pool(pool, config)
    assert annotations["curate_difficulty"].null_count() == 0
    first: dict[str, float] = {}
    for r in server.requests:
        if r["raw"] in first:
            assert r["t"] - first[r["raw"]] >= 0.39  # waited Retry-After, not the 1 ms backoff
        else:
            first[r["raw"]] = r["t"]
    assert report.tasks["difficulty"].retries == 2

    config2 = TagConfig(base_urls=("x",), model="m2", max_retries=1, backoff=0.001, tasks="difficulty",
                        cache=str(tmp_path / "c.sqlite"))
    with FakeOpenAI(Faults(server_error=1.0)) as server:  # every body fails on first arrival only
        config2.base_urls = (server.url,)
        config2.max_retries = 0
        annotations, report = tag_pool(pool, config2)
        assert report.tasks["difficulty"].failures == 2
        errs = [json.loads(e)["difficulty"]["reason"] for e in annotations["curate_tag_errors"]]
        assert all("request failed" in e and "500" in e for e in errs)
        annotations, report = tag_pool(pool, config2)  # failures were not cached: sent again, now fine
        assert report.tasks["difficulty"].cache_hits == 0 and annotations["curate_difficulty"].null_count() == 0


def test_requests_in_flight_never_exceed_concurrency(tmp_path):
    pool = load_pool(str(_small_pool(tmp_path, rows=12)))
    with FakeOpenAI(Faults(delay=0.03)) as server:
        tag_pool(pool, TagConfig(base_urls=(server.url,), model="m", concurrency=3, tasks="behaviors"))
        assert server.max_in_flight == 3 and len(server.requests) == 60
    with FakeOpenAI(Faults(delay=0.01)) as a, FakeOpenAI(Faults(delay=0.01)) as b:
        tag_pool(pool, TagConfig(base_urls=(a.url, b.url), model="m", concurrency=5, tasks="behaviors"))
        assert max(a.max_in_flight, b.max_in_flight) <= 5


def test_identical_requests_are_sent_once_and_load_is_shared(tmp_path):
    pool = load_pool(str(_small_pool(tmp_path, rows=6, dupes=6)))  # 12 rows, 6 distinct contents
    with FakeOpenAI(Faults(delay=0.02)) as a, FakeOpenAI(Faults(delay=0.02)) as b:
        config = TagConfig(base_urls=(a.url, b.url), model="m", concurrency=8, cache=None)
        annotations, report = tag_pool(pool, config)
    bodies = a.bodies() + b.bodies()
    assert len(bodies) == len(set(bodies)) == 6 * 6
    assert len(a.requests) > 5 and len(b.requests) > 5
    assert sum(c.deduped for c in report.tasks.values()) == 6 * 6
    frame = annotations.to_dicts()
    for i in range(6):  # copies get the same tags as their originals
        original = next(r for r in frame if r["curate_id"].endswith(f":r{i}"))
        copy = next(r for r in frame if r["curate_id"].endswith(f":dup{i}"))
        assert {k: v for k, v in original.items() if k != "curate_id"} == {k: v for k, v in copy.items() if k != "curate_id"}


def test_split_policy_sums_windows_and_cache_rerun_sends_nothing(tmp_path):
    pool = load_pool(str(_small_pool(tmp_path, rows=2)))
    with FakeOpenAI() as server:
        config = TagConfig(base_urls=(server.url,), model="m", max_chars=400, long="split",
                           tasks="behaviors", cache=str(tmp_path / "c.sqlite"))
        annotations, _ = tag_pool(pool, config)
        sent = len(server.requests)
        again, report = tag_pool(pool, config)
        assert len(server.requests) == sent and sum(c.cache_hits for c in report.tasks.values()) == sent
    assert again.equals(annotations)
    labels = annotations["curate_tag_long"].to_list()
    assert all(lab.startswith("split:") for lab in labels)
    windows = sum(int(lab.split(":")[1]) for lab in labels)
    assert sent == windows * len(BEHAVIORS)
    by_content = {c: expected(c)[1] for c in server.bodies()}
    verification = [c for c in by_content if "# Question: verification" in c]
    assert sum(annotations["curate_behavior_verification"].to_list()) == sum(by_content[c] for c in verification)


def test_dry_run_sends_nothing(tmp_path):
    pool = _small_pool(tmp_path, rows=4)
    with FakeOpenAI() as server:
        result = CliRunner().invoke(cli, ["tag", str(pool), "-o", str(tmp_path / "o.jsonl"), "--base-url",
                                          server.url, "--model", "m", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert server.requests == [] and "24 requests (0 already cached)" in result.output
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_run_resumes_without_resending_completed_requests(tmp_path):
    pool = _small_pool(tmp_path, rows=16)
    out, fresh = tmp_path / "out.jsonl", tmp_path / "fresh.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(ROOT)}
    concurrency = 4
    with FakeOpenAI(Faults(delay=0.03)) as server:
        cmd = [sys.executable, "-m", "curate", "tag", str(pool), "-o", str(out), "--base-url", server.url,
               "--model", "m", "--concurrency", str(concurrency)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while len(server.requests) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = len(server.requests)
        assert 40 <= first < 96 and not out.exists()
        cache = ResponseCache(str(out) + ".tagcache.sqlite")
        completed = set(cache.inputs())
        cache.close()
        assert len(completed) >= first - concurrency
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr
        second = server.bodies()[first:]
        assert not completed & set(second)  # nothing completed before the kill was sent again
        everything = server.bodies()
        assert len(everything) - len(set(everything)) <= concurrency  # only the in-flight ones, if any
        assert set(everything) == completed | set(second)
        fresh_run = CliRunner(env=env).invoke(cli, [*cmd[3:6], str(fresh), *cmd[7:]])
        assert fresh_run.exit_code == 0, fresh_run.output
    assert out.read_text() == fresh.read_text()
    _check_against_server(_rows(out), server)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_domain_fills_only_unknown_rows_then_picks_the_difficulty_prompt(tmp_path):
    rows = [{"id": "u1", "messages": [{"role": "user", "content": "Write a program that reverses a list."},
                                      {"role": "assistant", "content": "Use def rev(xs): return xs[::-1]"}]},
            {"id": "u2", "messages": [{"role": "user", "content": "How many apples are left?"},
                                      {"role": "assistant", "content": "Three apples are left."}]},
            {"id": "k1", "messages": [{"role": "user", "content": "Return your final response within \\boxed{}. 1+1?"},
                                      {"role": "assistant", "content": "\\boxed{2}"}]}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = load_pool(str(path))
    assert pool.dataset["curate_domain"] == ["unknown", "unknown", "math"]
    with FakeOpenAI() as server:
        annotations, report = tag_pool(pool, TagConfig(base_urls=(server.url,), model="m", tasks="domain,difficulty"))
    assert annotations["curate_domain"].to_list() == ["code", "math", None]
    assert annotations["curate_domain_source"].to_list() == ["llm", "llm", None]
    assert report.tasks["domain"].requests == 2
    prompts = [b.split("\n")[0] for b in server.bodies()[2:]]
    assert sorted(prompts) == sorted(["Below is a programming problem and a reference solution. A question about "
                                      "the problem comes after them.", *["Below is a mathematics problem and a "
                                      "reference solution. A question about the problem comes after them."] * 2])


def test_failed_requests_fail_the_run_unless_allowed(tmp_path, capsys):
    """Every first request gets a 500 and no retry is allowed: every row lacks its value, the output
    is still written, the run exits 3 naming the cause; with --allow-failures 1 it exits 0."""
    from curate.cli import main

    pool = _small_pool(tmp_path, rows=3)
    base = ["tag", str(pool), "--model", "m", "--tasks", "difficulty", "--max-retries", "0"]
    with FakeOpenAI(Faults(server_error=1.0)) as server, pytest.raises(SystemExit) as exc:
        main([*base, "--base-url", server.url, "-o", str(tmp_path / "a.jsonl")])
    err = capsys.readouterr().err
    assert exc.value.code == 3, err
    assert "failed requests: 3 x 500" in err
    assert err.strip().splitlines()[-1].startswith("error: 3 of 3 rows lack a value because requests failed (500)")
    assert len(_rows(tmp_path / "a.jsonl")) == 3  # written all the same
    with FakeOpenAI(Faults(server_error=1.0)) as server:
        allowed = CliRunner().invoke(cli, [*base, "--base-url", server.url, "-o", str(tmp_path / "b.jsonl"),
                                           "--allow-failures", "1"])
    assert allowed.exit_code == 0, allowed.output
    assert "failed requests: 3 x 500" in allowed.output
