"""Reading every input kind: files of each format, save_to_disk folders, data folders, Hub ids."""

from __future__ import annotations

import gzip
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.data import load_pool
from curate.errors import DataError, UsageError

ROWS = [
    {"id": "a", "prompt": "What is 1+1?", "response": "$1+1=2$", "level": 1},
    {"id": "b", "prompt": "Print hi in Python.", "response": "```python\nprint('hi')\n```", "level": 2},
    {"id": "c", "prompt": "Capital of France?", "response": "Paris.", "level": 3},
]


def _csv(rows) -> str:
    lines = ["id,prompt,response,level"]
    for r in rows:
        cells = [r["id"], r["prompt"], r["response"], str(r["level"])]
        lines.append(",".join('"' + c.replace('"', '""') + '"' for c in cells))
    return "\n".join(lines) + "\n"


def make_file(tmp_path, kind: str):
    """Write ROWS in format `kind` under tmp_path; return the path."""
    if kind == "jsonl":
        path = tmp_path / "pool.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
        return path
    if kind == "jsonl.gz":
        path = tmp_path / "pool.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in ROWS)
        return path
    if kind == "json":
        path = tmp_path / "pool.json"
        path.write_text(json.dumps(ROWS), encoding="utf-8")
        return path
    if kind == "parquet":
        path = tmp_path / "pool.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
        return path
    if kind == "csv":
        path = tmp_path / "pool.csv"
        path.write_text(_csv(ROWS), encoding="utf-8")
        return path
    if kind == "csv.gz":
        path = tmp_path / "pool.csv.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(_csv(ROWS))
        return path
    if kind == "disk":
        path = tmp_path / "pool"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "parquet", "csv", "csv.gz", "disk"])
def test_every_format_loads_the_same_rows(tmp_path, kind):
    pool = load_pool(make_file(tmp_path, kind))
    assert len(pool) == 3
    assert pool.source == "" and pool.name.startswith("pool")
    assert pool.shape.name == "pair"
    assert pool.dataset.column_names == [
        "id", "prompt", "response", "level", "curate_id", "curate_domain", "curate_domain_source"]
    assert pool.dataset["curate_id"] == ["id:a", "id:b", "id:c"]
    assert pool.dataset["response"] == [r["response"] for r in ROWS]
    assert pool.dataset["curate_domain"] == ["math", "code", "unknown"]
    assert [e.response for e in pool.examples()] == [r["response"] for r in ROWS]


def test_save_to_disk_dataset_dict_and_split(tmp_path):
    path = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(ROWS),
        "test": datasets.Dataset.from_list(ROWS[:1]),
    }).save_to_disk(str(path))
    assert len(load_pool(path)) == 3  # default: train
    test = load_pool(path, split="test")
    assert len(test) == 1 and test.split == "test" and test.name == "dd"
    with pytest.raises(DataError, match="no split 'dev'.*train, test"):
        load_pool(path, split="dev")


def test_dataset_dict_without_train_needs_split(tmp_path):
    path = tmp_path / "dd"
    datasets.DatasetDict({
        "a": datasets.Dataset.from_list(ROWS), "b": datasets.Dataset.from_list(ROWS),
    }).save_to_disk(str(path))
    with pytest.raises(DataError, match="several splits .*pass --split"):
        load_pool(path)
    assert len(load_pool(path, split="b")) == 3


def test_data_folder_goes_through_load_dataset(tmp_path, monkeypatch, write_jsonl):
    # A script-free folder of data files: the same datasets.load_dataset path a Hub id takes.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "hubish"
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(folder / "test.jsonl", ROWS[:2])
    assert len(load_pool(folder)) == 3
    test = load_pool(folder, split="test")
    assert (len(test), test.split) == (2, "test")


def test_hub_id_calls_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pool = load_pool("someone/some-pool")
    assert calls == [("someone/some-pool", None)]
    assert pool.origin == "someone/some-pool" and pool.split == "train"
    assert pool.dataset["curate_id"][0] == "id:a"  # the same id as from a local copy


def test_hub_failure_is_one_line(monkeypatch):
    def failing(name, split=None):
        raise ConnectionError("Couldn't reach the Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match="^someone/x: not a local path.*Couldn't reach the Hub$"):
        load_pool("someone/x")


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert len(load_pool(path)) == 3


def test_line_separator_characters_inside_strings(tmp_path):
    # str.splitlines would cut these rows apart at U+2028/U+2029.
    rows = [{"prompt": "a\u2028b", "response": "c\u2029d"}, {"prompt": "x", "response": "y"}]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert load_pool(path).dataset["prompt"] == ["a\u2028b", "x"]


def test_taco_json_list(fixtures):
    pool = load_pool(fixtures / "taco.json")
    assert pool.shape.name == "taco" and len(pool) == 3
    assert pool.dataset["curate_id"][0] == "task_id:839"


def test_missing_keys_become_null(tmp_path, write_jsonl):
    rows = [{"prompt": "p", "response": "r"}, {"prompt": "q", "response": "s", "extra": 1}]
    pool = load_pool(write_jsonl(tmp_path / "x.jsonl", rows))
    assert pool.dataset["extra"] == [None, 1]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"prompt": "a", "response": "b"}\n\n{"prompt": 1,,}\n', r"bad\.jsonl:3: invalid JSON"),
        ("list.jsonl", '[1, 2]\n', r"list\.jsonl:1: expected a JSON object"),
        ("obj.json", '{"data": [{"prompt": "a"}]}', r"obj\.json: expected a list of row objects.*keys: data"),
        ("bad.json", '[{"prompt": "a",\n "response": }]', r"bad\.json:2: invalid JSON"),
        ("empty.jsonl", "", r"empty\.jsonl: empty pool \(0 rows\)"),
        ("notes.txt", "hello", r"notes\.txt: unknown format '\.txt'"),
        ("mixed.jsonl", '{"prompt": "a", "response": "b", "n": 1}\n{"prompt": "a", "response": "b", "n": "x"}\n',
         r"mixed\.jsonl: column 'n' mixes value types \(int, str\)"),
        ("nogz.jsonl.gz", "not gzip", r"nogz\.jsonl\.gz: cannot read"),
    ],
)
def test_unreadable_files_name_the_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_pool(path)


def test_malformed_fixture_names_its_line(fixtures):
    with pytest.raises(DataError, match=r"malformed\.jsonl:3: invalid JSON"):
        load_pool(fixtures / "malformed.jsonl")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_pool(tmp_path / "nope.jsonl")


def test_split_on_a_file_is_a_usage_error(fixtures):
    with pytest.raises(UsageError, match="--split"):
        load_pool(fixtures / "gsm8k.jsonl", split="test")
