"""Rater quality you can see: calibration against native labels, structured answers with a
fallback, and sources only where a value is (tests/openai_server.py answering as planted)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.data import load_pool
from curate.tagging import TagConfig, tag_pool
from tests import openai_server
from tests.openai_server import FakeOpenAI, Faults

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "curate" / "resources" / "sample" / "pool.jsonl"
SERVER_REPLY = openai_server.reply_text  # the server's own answers, for everything but ratings


def _levels() -> dict[str, int]:
    """Problem text (its first 80 characters) -> MATH level, for the sample's math rows."""
    rows = [json.loads(x) for x in SAMPLE.read_text().splitlines()]
    return {r["conversations"][0]["value"][:80]: int(str(r["level"]).split()[-1]) for r in rows if r.get("level")}


def _planted(noise: bool):
    """A rater whose difficulty is the native level + 1 (the documented mapping), off by one for
    a third of the problems when `noise`; or uniformly random (`noise is None`)."""
    levels = _levels()

    def reply(content: str, unparseable: float = 0.0) -> str:
        if "[[" not in content:
            return SERVER_REPLY(content, unparseable)
        h = int(hashlib.sha256(content.encode()).hexdigest()[:8], 16)
        if noise is None:
            return f"[[{h % 10 + 1}]]"
        level = next(v for k, v in levels.items() if k in content)
        return f"[[{min(10, max(1, level + 1 + ((h % 3) - 1 if noise else 0)))}]]"
    return reply


@pytest.fixture
def rater(monkeypatch):
    return lambda noise: monkeypatch.setattr(openai_server, "reply_text", _planted(noise))


def _calibrate(tmp_path, extra=()) -> tuple[object, str]:
    out = tmp_path / "out.jsonl"
    with FakeOpenAI() as server:
        result = CliRunner().invoke(cli, ["tag", str(SAMPLE), "-o", str(out), "--base-url", server.url, "--model", "m",
                                          "--tasks", "difficulty", "--calibrate", "30", *extra])
    assert result.exit_code == 0, result.output
    return result, (tmp_path / "out.README.md").read_text()


def test_calibration_reports_high_agreement_for_a_rater_that_agrees(tmp_path, rater):
    rater(noise=True)
    result, card = _calibrate(tmp_path)
    row = re.search(r"\| math \| (\d+) \| ([\d.-]+) \| ([\d.-]+) \|", card)
    assert row and int(row.group(1)) >= 15 and float(row.group(2)) > 0.8 and float(row.group(3)) > 0.8
    assert "reference (rows) by rater (columns)" in card and "Parse rate: difficulty 100%" in card
    assert "stopped after calibration" in result.output
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    manifest = (tmp_path / "out.manifest.jsonl").read_text().splitlines()
    assert len(out) == 30 and len(out) + len(manifest) == len(SAMPLE.read_text().splitlines())


def test_calibration_reports_near_zero_agreement_for_random_answers(tmp_path, rater):
    rater(noise=None)
    _, card = _calibrate(tmp_path, ["--then-all"])
    row = re.search(r"\| math \| (\d+) \| ([\d.-]+) \| ([\d.-]+) \|", card)
    assert row and abs(float(row.group(2))) < 0.4 and abs(float(row.group(3))) < 0.4
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == len(SAMPLE.read_text().splitlines())


def test_without_native_labels_two_samples_are_compared(tmp_path):
    rows = [json.loads(x) for x in SAMPLE.read_text().splitlines()[:12]]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "level"}) + "\n" for r in rows))
    from curate.tagging.calibrate import calibrate

    with FakeOpenAI() as server:
        _, _, _, calibration = calibrate(load_pool(str(path)), TagConfig(base_urls=(server.url,), model="m",
                                                                         tasks="difficulty", calibrate=8))
        bodies = [r["body"] for r in server.requests]
    assert "second sample" in calibration.reference and calibration.rows == 8
    assert sorted({(b["temperature"], b["seed"]) for b in bodies}) == [(0.7, 1), (0.7, 2)]
    assert calibration.agreement["all"].kappa == 1.0  # this server answers the same text the same way


def test_structured_json_answers_are_asked_for_and_read(tmp_path):
    pool = load_pool(str(SAMPLE))
    pool = pool.with_dataset(pool.dataset.select(range(4)))
    with FakeOpenAI() as server:
        server.structured = "json"
        annotations, report = tag_pool(pool, TagConfig(base_urls=(server.url,), model="m"))
        bodies = [r["body"] for r in server.requests]
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    assert {b["response_format"]["json_schema"]["name"] for b in bodies} == {"rating", "count"}
    rows = annotations.to_dicts()
    assert all(r["curate_difficulty"] is not None and r["curate_behavior_exploration"] is not None for r in rows)
    assert report.unconstrained is None and "structured answers: auto" in report.card()["Tagging"]


def test_structured_auto_falls_back_when_the_server_refuses_and_says_so(tmp_path):
    out = tmp_path / "out.jsonl"
    with FakeOpenAI() as server:
        server.structured = "refuse"
        pool = tmp_path / "pool.jsonl"
        pool.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:4]))
        result = CliRunner().invoke(cli, ["tag", str(pool), "-o", str(out), "--base-url", server.url, "--model", "m",
                                          "--concurrency", "1"])
        bodies = [r["body"] for r in server.requests]
    assert result.exit_code == 0, result.output
    assert "response_format" in bodies[0] and all("response_format" not in b for b in bodies[2:])
    assert "server refused" in result.output and "response_format is not supported" in result.output
    assert "the server refused the constraint" in (tmp_path / "out.README.md").read_text()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(r["curate_difficulty"] is not None for r in rows)


def test_sources_only_where_a_value_is(tmp_path):
    pool = load_pool(str(SAMPLE))
    pool = pool.with_dataset(pool.dataset.select(range(6)))
    with FakeOpenAI(Faults(unparseable=1.0)) as server:
        annotations, report = tag_pool(pool, TagConfig(base_urls=(server.url,), model="m", structured="off"))
    rows = annotations.to_dicts()
    assert all(r["curate_difficulty"] is None and r["curate_difficulty_source"] is None for r in rows)
    assert all(r["curate_behavior_source"] is None for r in rows)
    assert report.sources == {} and report.unparsed["difficulty"] == 6 and report.failed["difficulty"] == 0
