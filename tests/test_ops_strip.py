"""`curate strip`: post-answer exploration removed by whole segments, final answers untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli, main
from curate.data import load_pool, read_manifest
from curate.data.canonical import split_response
from curate.data.traces import find_trace
from curate.errors import UsageError
from curate.ops import StripConfig, strip
from curate.ops.strip import apply_deletions, last_boxed
from curate.tagging.exploration import SPANS_COLUMN, parse_delete

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "curate" / "resources" / "sample" / "pool.jsonl"

ANSWER = "So \\(x = 3\\) and the answer is \\(\\boxed{3}\\).\n\n"
EXPLORE = ("Alternatively, maybe there's another way to approach the problem. Subtract 2 from both sides "
           "first: \\(2x = 6\\).\n\n"
           "Dividing by 2 gives \\(x = 3\\) again, the same result.\n\n")
FINAL = "**Final Answer**\nThe value is \\(\\boxed{3}\\).\n\n"
SKY = ("<|begin_of_thought|>\n\nWe need to solve \\(2x + 2 = 8\\).\n\nSubtracting, \\(2x = 6\\), so \\(x = 3\\).\n\n"
       + ANSWER + EXPLORE + FINAL + "<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\(2x = 6\\), so "
       "\\(\\boxed{3}\\).\n\n<|end_of_solution|>")
CODE_EXPLORE = ("Let me try a different approach to double-check: a loop.\n\n"
                "```python\ndef add(a, b):\n    total = a\n    total += b\n    return total\n```\n\n"
                "Both agree.\n\n")
THINK = ("<think>\nWe need a function that adds two numbers.\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
         "That is the solution.\n\n" + CODE_EXPLORE + "</think>\n\n```python\ndef add(a, b):\n    return a + b\n```")
PLAIN = ("<|begin_of_thought|>\n\nCompute \\(1 + 1\\).\n\nThat is \\(\\boxed{2}\\).\n\n<|end_of_thought|>\n\n"
         "<|begin_of_solution|>\n\n\\(\\boxed{2}\\)\n\n<|end_of_solution|>")


def _pool(tmp_path: Path) -> Path:
    rows = [
        {"id": "sky", "conversations": [{"from": "user", "value": "Solve 2x + 2 = 8."},
                                        {"from": "assistant", "value": SKY}]},
        {"id": "think", "conversations": [{"from": "user", "value": "Write add(a, b) in Python."},
                                          {"from": "assistant", "value": THINK}]},
        {"id": "plain", "conversations": [{"from": "user", "value": "Compute 1 + 1."},
                                          {"from": "assistant", "value": PLAIN}]},
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _texts(pool) -> dict[str, str]:
    return {e.id: e.response for e in pool.examples()}


def _is_deletion(new: str, old: str) -> bool:
    it = iter(old)
    return all(ch in it for ch in new)


def test_offline_removes_exploration_and_keeps_everything_else(tmp_path):
    pool = load_pool(str(_pool(tmp_path)))
    result = strip(pool, StripConfig())
    out = _texts(result.pool)
    sky = next(v for k, v in out.items() if k.endswith("sky~strip"))
    think = next(v for k, v in out.items() if k.endswith("think~strip"))
    plain = next(v for k, v in out.items() if k.endswith(":plain"))
    assert sky == SKY.replace(EXPLORE, "")
    assert think == THINK.replace(CODE_EXPLORE, "")
    assert plain == PLAIN  # no exploration: unchanged, same id
    for new, old in ((sky, SKY), (think, THINK)):
        assert _is_deletion(new, old)
        assert split_response(new)[1] == split_response(old)[1]  # solution part untouched
        assert last_boxed(new) == last_boxed(old)
    assert "Alternatively" not in sky and "Final Answer" in sky and ANSWER in sky
    entries = {e.curate_id.split(":")[-1]: e for e in result.manifest}
    assert set(entries) == {"sky", "think"}
    assert all(e.action == "replaced" and e.replaced_by == e.curate_id + "~strip" for e in entries.values())
    assert entries["sky"].reason.startswith(f"strip:exploration -{len(EXPLORE)} chars")
    c = result.report.counts
    assert (c["stripped"], c["unchanged"], c["refused"]) == (2, 1, 0)
    assert c["chars removed"] == len(EXPLORE) + len(CODE_EXPLORE)
    assert c["tokens removed"] == round(len(EXPLORE) / 4) + round(len(CODE_EXPLORE) / 4)


def test_refused_when_deletion_would_remove_the_final_answer():
    trace = find_trace(SKY, False, "steps")
    texts = [SKY[a:b] for a, b in trace.spans]
    answer = next(k for k, t in enumerate(texts) if "\\boxed{3}" in t)
    final = len(texts) - 1
    new, why = apply_deletions(trace, [answer])  # an LLM answer naming the answer segment
    assert new is None and "answer" in why
    new, why = apply_deletions(trace, [final])  # the closing restatement boxes the same value: allowed
    assert new is not None
    other = SKY.replace(FINAL, FINAL.replace("{3}", "{x = 3}"))
    new, why = apply_deletions(find_trace(other, False, "steps"), [final])  # the last boxed answer would change
    assert new is None and "boxed" in why
    new, why = apply_deletions(trace, [answer + 1, answer + 2])
    assert new == SKY.replace(EXPLORE, "") and why == ""


def test_parse_delete():
    assert parse_delete("first <delete>1</delete> then <delete> 3, 5-6 </delete>", 8) == ([2, 4, 5], "")
    assert parse_delete("<delete>none</delete>", 3) == ([], "")
    assert parse_delete("no tag", 3)[0] is None
    assert parse_delete("<delete>2-9</delete>", 3)[0] is None


def test_sample_pool_round_trip(tmp_path):
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["strip", str(SAMPLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    before, after = SAMPLE.read_text().splitlines(), out.read_text().splitlines()
    assert len(after) == len(before)
    pool = load_pool(str(out))
    assert all(k.startswith("sha:") or "~strip" in k for k in _texts(pool))
    assert read_manifest(tmp_path / "out.manifest.jsonl") == []  # the sample has no post-answer exploration
    assert "Exploration stripping" in (tmp_path / "out.README.md").read_text()


def test_cli_writes_input_schema_and_manifest(tmp_path):
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["strip", str(_pool(tmp_path)), "--behavior", "exploration", "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert set(rows[0]) == {"id", "conversations", "curate_id", "curate_domain", "curate_domain_source"}
    assert rows[0]["conversations"][0]["value"] == "Solve 2x + 2 = 8."
    assert rows[0]["conversations"][1]["value"] == SKY.replace(EXPLORE, "")
    assert rows[0]["id"] == "sky" and rows[0]["curate_id"].endswith("sky~strip")
    assert [e.action for e in read_manifest(tmp_path / "out.manifest.jsonl")] == ["replaced", "replaced"]


def _rater(content: str, unparseable: float = 0.0) -> str:
    if "Solve" not in content and "2x + 2" in content:  # the Sky-T1 row: delete its exploration
        return "The answer is reached in segment 3; 4-5 explore. <delete>4-5</delete>"
    if "adds two numbers" in content:  # the code row: a reply that would delete the answer
        return "<delete>2</delete>"
    return "Nothing after the answer. <delete>none</delete>"


def test_rater_spans_are_a_tagging_task_that_strip_applies(tmp_path, monkeypatch):
    """The rater marks segments as `curate tag --tasks exploration_spans`; `strip` (which calls no
    server) applies them, checked; a rerun of the tagging is served from the cache."""
    from curate.results import OpReport, OpResult
    from curate.tagging import TagConfig, tag_pool
    from tests import openai_server
    from tests.openai_server import FakeOpenAI

    monkeypatch.setattr(openai_server, "reply_text", _rater)
    pool = load_pool(str(_pool(tmp_path)))
    cache = tmp_path / "c.sqlite"
    with FakeOpenAI() as server:
        config = TagConfig(tasks=("exploration_spans",), base_urls=(server.url,), model="rater-x", cache=str(cache),
                           max_retries=0)
        annotations, _ = tag_pool(pool, config)
        sent = server.bodies()
    assert len(sent) == 3 and all("<delete>" in b and "[1] " in b for b in sent)
    assert sent[0].index("[1] ") < sent[0].index("# Question")  # trace first, instructions after
    cells = dict(zip(annotations["curate_id"], annotations[SPANS_COLUMN], strict=True))
    assert [json.loads(c)["delete"] for c in cells.values()] == [[4, 5], [2], []]
    tagged = OpResult(pool, [], OpReport(), annotations=annotations).annotated()
    result = strip(tagged, StripConfig())
    out = _texts(result.pool)
    assert next(v for k, v in out.items() if k.endswith("sky~strip")) == SKY.replace(EXPLORE, "")
    assert next(v for k, v in out.items() if k.endswith(":think")) == THINK  # refused: kept original
    c = result.report.counts
    assert (c["stripped"], c["unchanged"], c["refused"]) == (1, 1, 1)
    assert any("think" in n and "kept original" in n for n in result.report.notes)
    refusal = next(why for cid, why in result.report.data["refused"].items() if cid.endswith(":think"))
    assert "(rater: '<delete>2</delete>')" in refusal  # the rater's reply beside the reason
    assert "chosen by: `curate_exploration_spans` (llm 3)" in result.report.card["Exploration stripping"]
    # A rerun is served from the SQLite cache: no request reaches a server.
    again, _ = tag_pool(pool, TagConfig(tasks=("exploration_spans",), base_urls=("http://127.0.0.1:9/v1",),
                                        model="rater-x", cache=str(cache), max_retries=0))
    assert again[SPANS_COLUMN].to_list() == annotations[SPANS_COLUMN].to_list()


def test_offline_spans_equal_the_rule_and_stale_spans_are_refused(tmp_path):
    from curate.results import OpReport, OpResult
    from curate.tagging import TagConfig, tag_pool

    pool = load_pool(str(_pool(tmp_path)))
    annotations, _ = tag_pool(pool, TagConfig(tasks=("exploration_spans",), offline=True))
    tagged = OpResult(pool, [], OpReport(), annotations=annotations).annotated()
    by_spans, by_rule = strip(tagged, StripConfig()), strip(pool, StripConfig())
    assert _texts(by_spans.pool) == _texts(by_rule.pool) and by_spans.manifest == by_rule.manifest
    other_unit = strip(tagged, StripConfig(unit="sentences"))
    assert other_unit.report.counts["refused"] == 3 and "counts steps segments, not sentences" in str(
        other_unit.report.data["refused"])
    edited = tagged.with_dataset(tagged.dataset.map(
        lambda row: {"conversations": [row["conversations"][0],
                                       {**row["conversations"][1], "value": row["conversations"][1]["value"].replace("We need", "We must")}]}))
    changed = strip(edited, StripConfig())
    assert changed.report.counts["refused"] == 2  # the two thoughts edited after they were tagged
    assert "made for another text" in str(changed.report.data["refused"])


def test_cli_rater_shortcut_tags_then_strips(tmp_path, monkeypatch):
    from tests import openai_server
    from tests.openai_server import FakeOpenAI

    monkeypatch.setattr(openai_server, "reply_text", _rater)
    out = tmp_path / "out.jsonl"
    with FakeOpenAI() as server:
        result = CliRunner().invoke(cli, ["strip", str(_pool(tmp_path)), "--base-url", server.url, "--model",
                                          "rater-x", "--max-retries", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.jsonl.stripcache.sqlite").exists()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["conversations"][1]["value"] == SKY.replace(EXPLORE, "")
    assert rows[0][SPANS_COLUMN] is None and json.loads(rows[1][SPANS_COLUMN])["delete"] == [2]  # stale when stripped
    card = (tmp_path / "out.README.md").read_text()
    assert "Tagging accounting" in card and "rater-x" in card


@pytest.mark.parametrize(("args", "message"), [
    (["--behavior", "verbosity"], "behavior 'verbosity' is unknown"),
    (["--behavior", "verification"], "stripping it is not built"),
    (["--model", "m", "--timeout", "3"], "--model, --timeout: rater settings apply with --base-url"),
    (["--base-url", "http://localhost:1/v1"], "give --model"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["strip", str(_pool(tmp_path)), "-o", str(tmp_path / "o.jsonl"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_config_reports_all_problems_at_once():
    with pytest.raises(UsageError) as info:
        StripConfig(behavior="x", unit="words", markers=("(",))
    assert all(s in str(info.value) for s in ("behavior", "unit", "not a regex"))


def test_unit_is_a_choice_of_the_config_units(tmp_path):
    from curate.cli.operation import operation_command
    from curate.ops.strip import UNITS

    command = operation_command("strip")
    option = next(p for p in command.params if p.name == "unit")
    assert tuple(option.type.choices) == UNITS
    result = CliRunner().invoke(cli, ["strip", str(_pool(tmp_path)), "-o", str(tmp_path / "o.jsonl"),
                                      "--unit", "words"])
    assert result.exit_code == 2 and "'words' is not one of 'steps', 'sentences'" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_mistyped_tokenizer_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import curate.data

    def no_loading(*args, **kwargs):
        raise AssertionError("the pool was loaded before --tokenizer was checked")

    monkeypatch.setattr(curate.data, "load_pool", no_loading)
    with pytest.raises(SystemExit) as exit_info:
        main(["strip", str(_pool(tmp_path)), "-o", str(tmp_path / "o.jsonl"), "--tokenizer", str(tmp_path / "no-tok")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model") and "no-tok" in err and "does not exist" in err and "\n" not in err
