"""Shape detection, the canonical view of each shape, domain labels and `--map`."""

from __future__ import annotations

import pytest

from curate.data import load_pool, parse_mapping
from curate.data.canonical import split_response
from curate.data.domain import rule_domain
from curate.data.shapes import detect_shape
from curate.errors import DataError, UsageError

# fixture file -> (shape, domains in row order, domain sources)
SHAPES = {
    "bespoke_stratos.jsonl": ("sharegpt", ["math", "code", "unknown", "math"], ["prefix", "prefix", "rule", "prefix"]),
    "messages.jsonl": ("messages", ["unknown", "math", "unknown"], ["rule"] * 3),
    "openthoughts_metadata.jsonl": ("openthoughts", ["math", "code", "other"], ["native"] * 3),
    "alpaca.jsonl": ("pair", ["unknown", "code", "unknown"], ["rule"] * 3),
    "pairs.csv": ("pair", ["math", "code", "unknown"], ["rule"] * 3),
    "math500.jsonl": ("math", ["math"] * 4, ["native"] * 4),
    "gsm8k.jsonl": ("gsm8k", ["math"] * 4, ["native"] * 4),
    "metamath.jsonl": ("metamath", ["math"] * 2, ["native"] * 2),
    "metamath_gsm8k_backward.jsonl": ("metamath", ["math"] * 3, ["native"] * 3),
    "mbpp.jsonl": ("mbpp", ["code"] * 3, ["native"] * 3),
    "humaneval.jsonl": ("humaneval", ["code"] * 3, ["native"] * 3),
    "taco.json": ("taco", ["code"] * 3, ["native"] * 3),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_and_domains(fixtures, name):
    shape, domains, sources = SHAPES[name]
    pool = load_pool(fixtures / name)
    assert pool.shape.name == shape
    assert pool.dataset["curate_domain"] == domains
    assert pool.dataset["curate_domain_source"] == sources
    for example in pool.examples():
        assert example.messages[-1]["role"] == "assistant"
        assert example.messages[-2]["role"] == "user"
        assert example.response.strip()


def test_bespoke_stratos_folds_system_and_splits_the_trace(fixtures):
    pool = load_pool(fixtures / "bespoke_stratos.jsonl")
    first = next(pool.examples())
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant"]
    assert first.messages[0]["content"].startswith("Your role as an assistant")
    assert first.messages[1]["content"].startswith("Return your final response within \\boxed{}.")
    assert first.thought == "Adding 2 and 3 gives 5. Let me double-check: 2+3=5."
    assert first.solution == "$2+3=\\boxed{5}$"
    assert first.domain == "math"


def test_openthoughts_builds_the_r1_response(fixtures):
    first = next(load_pool(fixtures / "openthoughts_metadata.jsonl").examples())
    assert first.response == "<think>\n7*6 = 42.\n</think>\n\nThe answer is $\\boxed{42}$."
    assert (first.thought, first.solution) == ("7*6 = 42.", "The answer is $\\boxed{42}$.")


def test_messages_keep_their_own_system_and_turns(fixtures):
    examples = list(load_pool(fixtures / "messages.jsonl").examples())
    assert examples[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert (examples[1].thought, examples[1].solution) == ("3*3 is 9.", "$3^2 = \\boxed{9}$")
    assert [m["role"] for m in examples[2].messages] == ["user", "assistant", "user", "assistant"]
    assert examples[2].thought is None


def test_alpaca_input_joins_the_prompt(fixtures):
    first = next(load_pool(fixtures / "alpaca.jsonl").examples())
    assert first.messages[0]["content"] == "Reverse the word.\n\nstressed"


def test_benchmark_roles(fixtures):
    humaneval = next(load_pool(fixtures / "humaneval.jsonl").examples())
    assert humaneval.messages[0]["content"].lstrip().startswith("def ") or "def " in humaneval.messages[0]["content"]
    taco = load_pool(fixtures / "taco.json")
    first = next(taco.examples())
    assert first.response == taco.dataset[0]["output"][0]  # the first of the solutions
    math = load_pool(fixtures / "math500.jsonl")
    assert math.shape.columns["difficulty"] == "level"
    assert math.dataset["curate_id"][0].startswith("unique_id:test/")


def test_apps_style_json_encoded_solutions(tmp_path, write_jsonl):
    rows = [{"problem_id": 7, "question": "Read n; print n+1.", "solutions": '["print(int(input())+1)"]',
             "difficulty": "interview"}]
    pool = load_pool(write_jsonl(tmp_path / "apps.jsonl", rows))
    assert pool.shape.name == "taco"
    assert next(pool.examples()).response == "print(int(input())+1)"
    assert pool.dataset["curate_id"] == ["problem_id:7"]


def test_no_assistant_turn_names_the_row(fixtures):
    with pytest.raises(DataError, match=r"no_assistant\.jsonl: row 1: the conversation has no assistant turn"):
        load_pool(fixtures / "no_assistant.jsonl")


def test_conversation_ending_on_user_names_the_row(tmp_path, write_jsonl):
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}]}]
    with pytest.raises(DataError, match=r"row 0: the conversation ends with a 'user' turn"):
        load_pool(write_jsonl(tmp_path / "x.jsonl", rows))


UNDETECTED = [
    {"q": "What is $2^3$?", "a": "8", "lvl": "Level 2", "topic": "Mathematics", "key": "k1"},
    {"q": "Sort a list in Python.", "a": "sorted(xs)", "lvl": "Level 1", "topic": "coding", "key": "k2"},
]


def test_undetected_shape_asks_for_a_map(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "odd.jsonl", UNDETECTED)
    with pytest.raises(DataError, match=r"odd\.jsonl: cannot tell .*--map prompt=COLUMN"):
        load_pool(path)


def test_map_describes_a_pool(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "odd.jsonl", UNDETECTED)
    mapping = parse_mapping(["prompt=q", "response=a", "difficulty=lvl", "domain=topic", "id=key"])
    pool = load_pool(path, mapping=mapping)
    assert pool.shape.name == "mapped"
    assert pool.shape.mapped == {"prompt", "response", "difficulty", "domain", "id"}
    assert pool.dataset["curate_id"] == ["key:k1", "key:k2"]
    assert pool.dataset["curate_domain"] == ["math", "code"]
    assert pool.dataset["curate_domain_source"] == ["column", "column"]


def test_map_overrides_detection(fixtures):
    # MetaMath rows say math natively; the user's column wins.
    pool = load_pool(fixtures / "metamath.jsonl", mapping={"domain": "type"})
    assert pool.shape.name == "metamath"
    assert pool.dataset["curate_domain"] == ["math", "other"]  # MATH_SV, GSM_Rephrased
    assert pool.dataset["curate_domain_source"] == ["column", "column"]
    swapped = load_pool(fixtures / "gsm8k.jsonl", mapping={"prompt": "answer", "response": "question"})
    first = next(swapped.examples())
    assert first.response == swapped.dataset[0]["question"]


def test_map_chat_column_replaces_pair_roles(tmp_path, write_jsonl):
    rows = [{"prompt": "unused", "response": "unused", "chat": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    pool = load_pool(write_jsonl(tmp_path / "x.jsonl", rows), mapping={"messages": "chat"})
    assert pool.shape.name == "mapped" and set(pool.shape.columns) == {"messages"}
    assert next(pool.examples()).response == "hello"


def test_map_errors_name_the_key(fixtures):
    with pytest.raises(UsageError, match="unknown role 'answer'"):
        load_pool(fixtures / "gsm8k.jsonl", mapping={"answer": "answer"})
    with pytest.raises(DataError, match="--map prompt=nope: .*no column 'nope'"):
        load_pool(fixtures / "gsm8k.jsonl", mapping={"prompt": "nope"})
    with pytest.raises(UsageError, match="expected ROLE=COLUMN"):
        parse_mapping(["prompt"])
    with pytest.raises(UsageError, match="unknown role 'colour'"):
        parse_mapping(["colour=red"])


def test_detection_by_columns():
    assert detect_shape(["query", "response", "type"], []).name == "metamath"
    assert detect_shape(["question", "answer"], [{"answer": "So 3.\n#### 3"}]).name == "gsm8k"
    assert detect_shape(["question", "answer"], [{"answer": "Paris"}]).name == "pair"
    assert detect_shape(["prompt", "output"], [{"output": "text"}]).name == "pair"
    assert detect_shape(["prompt", "output"], [{"output": ["a", "b"]}]).name == "taco"
    assert detect_shape(["problem", "solution"], []).name == "pair"
    assert detect_shape(["problem", "solution", "level", "type"], []).name == "math"
    assert detect_shape(["a", "b"], []) is None


def test_split_response():
    sky = "<|begin_of_thought|>\n\nthink\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\nsol\n\n<|end_of_solution|>"
    assert split_response(sky) == ("think", "sol")
    assert split_response("<think>\nA\n</think>\n\nB") == ("A", "B")
    assert split_response("A\n</think>\nB") == ("A", "B")  # R1 with the opening tag in the prompt
    assert split_response("plain answer") == (None, None)


def test_content_rules():
    assert rule_domain("```python\nprint(1)\n```") == "code"
    assert rule_domain("def f(x):\n    return x") == "code"
    assert rule_domain("so $x = 2$ and the answer is \\boxed{2}") == "math"
    assert rule_domain("It costs $5 and $6 in total.") is None  # prices, not inline math
    assert rule_domain("Hence $x^2$ is even.") == "math"
    assert rule_domain("Carbon dioxide.") is None
