"""Tagging pieces without a server: answer parsing, prompt templates, long-text policy, config."""

from __future__ import annotations

import pytest

from curate.errors import UsageError
from curate.tagging import BEHAVIORS, TagConfig, load_prompts
from curate.tagging.cache import ResponseCache, request_key
from curate.tagging.offline import native_difficulty, rule_difficulty
from curate.tagging.parse import parse_count, parse_domain, parse_rating
from curate.tagging.prompts import PromptError, default_prompt_dir, parse_prompt
from curate.tagging.tagger import clip, windows


@pytest.mark.parametrize("text, value", [
    ("<count>3</count>", 3),
    ("blah <count> 2 </count> then\n<COUNT>\n 5\n</count > trailing", 5),
    ("## Number <count>[4]</count>", 4),
    ("<count>0</count>", 0),
])
def test_count_takes_the_last_tag(text, value):
    assert parse_count(text) == (value, None)


@pytest.mark.parametrize("text", [None, "", "no tag here", "<count>many</count>", "<count>-1</count>"])
def test_unparseable_count_is_none_with_a_reason_never_zero(text):
    value, reason = parse_count(text)
    assert value is None and reason


def test_rating_and_domain():
    assert parse_rating("maybe [[2]] but really [[ 7 ]].") == (7, None)
    assert parse_rating("[[6.6]]") == (7, None)
    assert parse_rating("[[11]]")[0] is None
    assert parse_rating("rated 7/10")[0] is None
    assert parse_domain("<domain>Code</domain> no, <domain> math </domain>") == ("math", None)
    assert parse_domain("<domain>biology</domain>")[0] is None


def test_shipped_prompts_load_and_share_the_trace_prefix():
    names = ["domain", "difficulty_math", "difficulty_code", *(f"behavior_{b}" for b in BEHAVIORS)]
    prompts = load_prompts(names)
    assert {p.version for p in prompts.values()} == {"1"}
    rendered = [prompts[f"behavior_{b}"].render(trace="TRACE TEXT") for b in BEHAVIORS]
    prefix = rendered[0][: rendered[0].index("</trace>") + len("</trace>")]
    assert "TRACE TEXT" in prefix and all(r.startswith(prefix) for r in rendered)
    assert all(r.rstrip().endswith(".") and "<count>" in r.split("</trace>")[1] for r in rendered)
    assert "[[" in prompts["difficulty_math"].render(problem="p", solution="s")


def test_prompts_refuse_unknown_and_missing_variables(tmp_path):
    with pytest.raises(PromptError, match=r"unknown variable.*\$answer"):
        parse_prompt("Rate $trace and $answer", "behavior_verification")
    with pytest.raises(PromptError, match="lone"):
        parse_prompt("costs $ 5 for $trace", "behavior_verification")
    prompt = parse_prompt("---\nversion: 3\n---\n$$5 and $trace", "behavior_verification")
    assert prompt.version == "3" and prompt.render(trace="x") == "$5 and x"
    with pytest.raises(PromptError, match="no value"):
        prompt.render()
    with pytest.raises(PromptError, match="does not use"):
        prompt.render(trace="x", problem="y")
    # A user folder overrides one prompt; the others come from the project, hashes differ.
    (tmp_path / "behavior_verification.md").write_text("Check: $trace <count>N</count>")
    mine = load_prompts(["behavior_verification", "domain"], tmp_path)
    ours = load_prompts(["behavior_verification", "domain"])
    assert mine["behavior_verification"].hash != ours["behavior_verification"].hash
    assert mine["domain"].hash == ours["domain"].hash
    assert (default_prompt_dir() / "domain.md").is_file()


def test_long_text_policies():
    text = "a" * 100 + "MIDDLE" + "z" * 100
    clipped, cut = clip(text, 50)
    assert cut and clipped.startswith("a" * 25) and clipped.endswith("z" * 25) and "omitted" in clipped
    assert "MIDDLE" not in clipped
    assert clip("short", 50) == ("short", False)
    assert "".join(windows(text, 50)) == text and len(windows(text, 50)) == 5


def test_native_table_and_rules():
    table = {"5": 6, "easy": 2}
    assert native_difficulty(5, table) == 6 and native_difficulty(5.0, table) == 6
    assert native_difficulty("EASY", table) == 2 and native_difficulty("UNKNOWN_DIFFICULTY", table) is None
    assert native_difficulty(None, table) is None
    easy, _ = rule_difficulty("code", "print n", "print(input())")
    hard, raw = rule_difficulty("code", "1 <= n <= 10^9", "import heapq\n" + "x = 1\n" * 50)
    assert 1 <= easy < hard <= 10 and "max_bound=10^9" in raw


def test_config_reports_every_error_at_once():
    with pytest.raises(UsageError) as err:
        TagConfig(tasks="difficulty,colour", concurrency=0, long="fold")
    message = str(err.value)
    assert "colour" in message and "concurrency" in message and "fold" in message and "give base_urls" in message
    assert TagConfig(offline=True, tasks="behaviors").tasks == ("behaviors",)


def test_cache_keys_cover_model_prompt_input_and_params(tmp_path):
    base = request_key("m", "h", "text", {"temperature": 0})
    assert len({base, request_key("m2", "h", "text", {"temperature": 0}),
                request_key("m", "h2", "text", {"temperature": 0}),
                request_key("m", "h", "text2", {"temperature": 0}),
                request_key("m", "h", "text", {"temperature": 0.7})}) == 5
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put(base, model="m", prompt="p", prompt_hash="h", params={}, rendered="text", content="<count>1</count>",
              tokens_in=3, tokens_out=2, base_url="u")
    cache.close()
    again = ResponseCache(tmp_path / "c.sqlite")  # migrations are not re-applied
    assert again.lookup([base, "nope"])[base].content == "<count>1</count>" and again.inputs() == ["text"]
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_quadratic_kappa_against_known_values():
    from curate.tagging.calibrate import quadratic_kappa

    assert quadratic_kappa([(1, 1), (5, 5), (9, 9)]) == 1.0
    # Two raters, categories 1-3 of 1-10 used: hand-computed kappa_w (observed/expected weighted).
    pairs = [(1, 1), (1, 2), (2, 2), (3, 3), (3, 1)]
    n = len(pairs)
    w = lambda i, j: (i - j) ** 2 / 81  # noqa: E731
    num = sum(w(r, t) for r, t in pairs) / n
    den = sum(w(r, t) for r, _ in pairs for _, t in pairs) / n**2
    assert quadratic_kappa(pairs) == pytest.approx(1 - num / den)
