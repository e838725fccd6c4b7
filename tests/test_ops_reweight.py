"""reweight: repeats and drops rows by weight, every change in the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.data import load_pool, write_pool
from curate.errors import DataError
from curate.ops import ReweightConfig, reweight

SAMPLE = Path(__file__).parents[1] / "curate" / "resources" / "sample" / "pool.jsonl"


def weighted(weights):
    pool = load_pool(SAMPLE)
    ds = pool.dataset.select(range(len(weights))).add_column("w", weights)
    return pool.with_dataset(ds)


def test_integer_weights_repeat_and_drop_rows(tmp_path):
    pool = weighted([2.0, 0.0, 1.0, 3.0])
    result = reweight(pool, ReweightConfig(by="w"))
    ids = pool.dataset["curate_id"]
    assert result.pool.dataset["curate_id"] == [ids[0], f"{ids[0]}#w2", ids[2], ids[3], f"{ids[3]}#w2", f"{ids[3]}#w3"]
    assert result.pool.dataset["conversations"][1] == pool.dataset["conversations"][0]
    actions = sorted((e.action, e.curate_id) for e in result.manifest)
    assert actions == sorted([("added", f"{ids[0]}#w2"), ("removed", ids[1]), ("added", f"{ids[3]}#w2"),
                              ("added", f"{ids[3]}#w3")])
    out = write_pool(result.pool, tmp_path / "out.jsonl", manifest=result.manifest)  # the manifest checks hold
    assert out.exists()


def test_fractional_weights_are_seeded_and_keep_size_rescales():
    pool = weighted([0.5] * 40)
    a = reweight(pool, ReweightConfig(by="w", seed=1)).pool.dataset["curate_id"]
    b = reweight(pool, ReweightConfig(by="w", seed=1)).pool.dataset["curate_id"]
    assert a == b and 5 < len(a) < 35
    sized = reweight(pool, ReweightConfig(by="w", keep_size=True)).pool
    assert len(sized) == 40  # every weight becomes exactly 1


@pytest.mark.parametrize("bad", [[1.0, -1.0], [1.0, None], [0.0, 0.0]])
def test_bad_weights_are_one_line_errors(bad):
    with pytest.raises(DataError) as err:
        reweight(weighted(bad), ReweightConfig(by="w"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no column"):
        reweight(weighted([1.0, 1.0]), ReweightConfig(by="nope"))


def test_cli_reweight_writes_copies_and_manifest(tmp_path):
    import json

    from curate.cli import main

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:3]]
    for row, w in zip(rows, [0, 1, 2], strict=True):
        row["w"] = w
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["reweight", str(src), "--by", "w", "-o", str(tmp_path / "out.jsonl")])  # returns on success
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["w"] for r in out] == [1, 2, 2]
    manifest = [json.loads(line) for line in (tmp_path / "out.manifest.jsonl").read_text().splitlines()]
    assert sorted(e["action"] for e in manifest) == ["added", "removed"]


def test_cli_reweight_shows_no_datasets_progress_bar(tmp_path, capfd):
    import json

    import datasets

    from curate.cli import main

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:3]]
    for row, w in zip(rows, [0, 1, 2], strict=True):
        row["w"] = w
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.enable_progress_bars()
    capfd.readouterr()
    main(["reweight", str(src), "--by", "w", "--emit", "messages", "-o", str(tmp_path / "out.jsonl")])
    err = capfd.readouterr().err
    assert "Flattening the indices" not in err and "rows in: 3, rows out: 3" in err
    assert not datasets.are_progress_bars_disabled()  # hidden for that step only


def test_write_path_decontaminates_and_lists_dropped_rows(tmp_path):
    import json

    from curate.cli import main

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:4]]
    for row in rows:
        row["w"] = 1
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problem = rows[1]["conversations"][0]["value"].removeprefix("Return your final response within \\boxed{}. ")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"problem": problem, "solution": "s", "answer": "1", "level": 1}) + "\n")
    main(["reweight", str(src), "--by", "w", "-o", str(tmp_path / "out.jsonl"), "--decontaminate", str(bench)])
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == 3 and all(r["conversations"] != rows[1]["conversations"] for r in out)
    manifest = [json.loads(line) for line in (tmp_path / "out.manifest.jsonl").read_text().splitlines()]
    assert [e["action"] for e in manifest] == ["removed"] and manifest[0]["reason"].startswith("decontam:bench.jsonl")
