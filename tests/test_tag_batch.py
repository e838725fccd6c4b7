"""OpenAI Batch JSONL round trip: export requests, answer them with the local test server in the
Batch output format, import, and get the online run's tags with no online request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.data import load_pool
from curate.errors import DataError
from curate.tagging import TagConfig, export_batch, import_batch, tag_pool
from curate.tagging.cache import ResponseCache
from curate.tagging.tagger import NOT_CACHED
from tests.cli_helpers import cli_error
from tests.openai_server import FakeOpenAI, answer_batch
from tests.test_tag_server import _rows, _small_pool

UNKNOWN = [{"id": "u1", "conversations": [{"from": "user", "value": "Write a program that reverses a list."},
                                          {"from": "assistant", "value": "Use def rev(xs): return xs[::-1]"}]},
           {"id": "u2", "conversations": [{"from": "user", "value": "How many apples are left?"},
                                          {"from": "assistant", "value": "Three apples are left."}]}]


def _pool(tmp_path: Path) -> Path:
    """Six sample rows (math and code) plus two rows of unknown domain."""
    path = _small_pool(tmp_path, rows=6)
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in UNKNOWN)
    return path


def _tag(*args: str) -> str:
    result = CliRunner().invoke(cli, ["tag", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_batch_round_trip_equals_the_online_run_with_no_online_request(tmp_path):
    pool = str(_pool(tmp_path))
    online, batched = tmp_path / "online.jsonl", tmp_path / "batched.jsonl"
    with FakeOpenAI() as server:
        _tag(pool, "-o", str(online), "--base-url", server.url, "--model", "m")
        online_bodies = sorted(json.dumps(r["body"], sort_keys=True) for r in server.requests)
        # Round 1: everything but the difficulty of the two unknown-domain rows.
        out = _tag(pool, "-o", str(batched), "--model", "m", "--export-batch", str(tmp_path / "r1.jsonl"))
        assert "2 rows wait for their domain answer" in out
        lines = [json.loads(x) for x in (tmp_path / "r1.jsonl").read_text().splitlines()]
        assert {(x["method"], x["url"]) for x in lines} == {("POST", "/v1/chat/completions")}
        assert len({x["custom_id"] for x in lines}) == len(lines) == 8 * 5 + 2 + 6  # behaviours, domains, difficulty
        answer_batch(server.url, tmp_path / "r1.jsonl", tmp_path / "o1.jsonl")
        # Round 2: import round 1, export the two difficulty requests now known.
        _tag(pool, "-o", str(batched), "--model", "m", "--import-batch", str(tmp_path / "o1.jsonl"),
             "--export-batch", str(tmp_path / "r2.jsonl"))
        lines += [json.loads(x) for x in (tmp_path / "r2.jsonl").read_text().splitlines()]
        assert len(lines) == 8 * 5 + 2 + 8
        # Exported bodies are exactly what the online client sent (model, messages, sampling).
        assert sorted(json.dumps(x["body"], sort_keys=True) for x in lines) == online_bodies
        answer_batch(server.url, tmp_path / "r2.jsonl", tmp_path / "o2.jsonl")
        before = len(server.requests)
        out = _tag(pool, "-o", str(batched), "--base-url", server.url, "--model", "m",
                   "--import-batch", str(tmp_path / "o2.jsonl"))
        assert len(server.requests) == before  # the import run sent nothing
        assert "2 results, 2 stored, 0 already cached, 0 failed" in out
    assert _rows(batched) == _rows(online)
    assert "Batch import" in (tmp_path / "batched.README.md").read_text()
    again = _tag(pool, "-o", str(batched), "--model", "m", "--export-batch", str(tmp_path / "r3.jsonl"))
    assert (tmp_path / "r3.jsonl").read_text() == "" and "0 requests written (50 already cached)" in again


def test_results_of_another_model_or_setting_are_refused_naming_the_line(tmp_path, capsys):
    pool = str(_small_pool(tmp_path, rows=2))
    with FakeOpenAI() as server:
        _tag(pool, "--model", "other", "--tasks", "difficulty", "--export-batch", str(tmp_path / "r.jsonl"))
        answer_batch(server.url, tmp_path / "r.jsonl", tmp_path / "o.jsonl")
    base = ["tag", pool, "-o", str(tmp_path / "t.jsonl"), "--tasks", "difficulty", "--import-batch",
            str(tmp_path / "o.jsonl")]
    message = cli_error([*base, "--model", "m"], capsys)
    assert "o.jsonl line 1: custom_id 'difficulty-" in message and "matches no request of this run" in message
    # Same model, another max_tokens: other cache keys, also refused.
    assert "o.jsonl line 1: custom_id" in cli_error([*base, "--model", "other", "--max-tokens", "100"], capsys)
    assert not (tmp_path / "t.jsonl").exists()
    cache = ResponseCache(tmp_path / "t.jsonl.tagcache.sqlite")
    assert cache.inputs() == []  # refused before anything was stored
    cache.close()
    (tmp_path / "bad.jsonl").write_text('{"custom_id": "x", "response": null, "error": "gone"}\nnot json\n')
    config = TagConfig(model="other", tasks="difficulty", cache=str(tmp_path / "c.sqlite"), cache_only=True)
    with pytest.raises(DataError, match="bad.jsonl line 2: not JSON"):
        import_batch(load_pool(pool), config, tmp_path / "bad.jsonl")


def test_failed_lines_are_reported_and_exported_again(tmp_path):
    pool = load_pool(str(_small_pool(tmp_path, rows=4)))
    config = TagConfig(model="m", tasks="difficulty,behaviors", cache=str(tmp_path / "c.sqlite"), cache_only=True)
    done = export_batch(pool, config, tmp_path / "r.jsonl")
    assert (done.requests, done.cached, done.deferred) == (24, 0, 0)
    ids = [json.loads(x)["custom_id"] for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    with FakeOpenAI() as server:
        answer_batch(server.url, tmp_path / "r.jsonl", tmp_path / "o.jsonl", fail={ids[0], ids[5]})
        result = import_batch(pool, config, tmp_path / "o.jsonl")
        assert (result.lines, result.stored, len(result.failed)) == (24, 22, 2)
        assert result.failed[0].startswith(f"line 1 ({ids[0]}): error: This request could not")
        annotations, report = tag_pool(pool, config)  # cache only: the two stay null, with the reason
        assert report.not_cached == 2
        reasons = [r for e in annotations["curate_tag_errors"].drop_nulls() for r in json.loads(e).values()]
        assert [r["reason"] for r in reasons] == [NOT_CACHED] * 2
        again = export_batch(pool, config, tmp_path / "r2.jsonl")
        assert again.requests == 2 and again.cached == 22
        assert [json.loads(x)["custom_id"] for x in (tmp_path / "r2.jsonl").read_text().splitlines()] == [ids[0], ids[5]]
        answer_batch(server.url, tmp_path / "r2.jsonl", tmp_path / "o2.jsonl")
        assert import_batch(pool, config, tmp_path / "o2.jsonl").stored == 2
    annotations, report = tag_pool(pool, config)
    assert report.not_cached == 0 and annotations["curate_tag_errors"].null_count() == 4
