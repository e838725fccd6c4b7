"""write_pool: the input's own schema back, annotations joined by id, manifest, card, atomicity."""

from __future__ import annotations

import json

import datasets
import polars as pl
import pytest

from curate.data import ManifestEntry, load_pool, read_manifest, write_pool
from curate.data.card import redact_command
from curate.errors import DataError, UsageError


def _read(path, fmt):
    if fmt == "disk":
        return datasets.load_from_disk(str(path))
    if fmt == "parquet":
        return datasets.Dataset.from_parquet(str(path))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "disk"])
@pytest.mark.parametrize("name", ["bespoke_stratos.jsonl", "math500.jsonl", "mbpp.jsonl"])
def test_round_trip_preserves_every_column_and_row(tmp_path, fixtures, fmt, name):
    source_rows = [json.loads(line) for line in (fixtures / name).read_text().splitlines()]
    pool = load_pool(fixtures / name)
    out = {"parquet": "out.parquet", "jsonl": "out.jsonl", "disk": "out"}[fmt]
    path = write_pool(pool, tmp_path / out)
    written = _read(path, fmt)
    rows = list(written) if fmt != "jsonl" else written
    columns = list(rows[0])
    assert columns == [*source_rows[0], "curate_id", "curate_domain", "curate_domain_source"]
    assert [{k: r[k] for k in source_rows[0]} for r in rows] == source_rows
    assert [r["curate_id"] for r in rows] == pool.dataset["curate_id"]


def test_output_layout(tmp_path, fixtures):
    pool = load_pool(fixtures / "gsm8k.jsonl")
    write_pool(pool, tmp_path / "folder")
    assert {p.name for p in (tmp_path / "folder").iterdir()} >= {"manifest.jsonl", "README.md", "state.json"}
    write_pool(pool, tmp_path / "pool.parquet")
    write_pool(pool, tmp_path / "pool.jsonl")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"pool.parquet", "pool.jsonl", "pool.manifest.jsonl", "pool.README.md"} <= names
    assert not [n for n in names if ".tmp-" in n]
    assert (tmp_path / "pool.manifest.jsonl").read_text() == ""  # empty manifest, still written
    write_pool(pool, tmp_path / "noext", fmt="jsonl")
    assert (tmp_path / "noext.manifest.jsonl").exists()
    with pytest.raises(UsageError, match=r"\.csv"):
        write_pool(pool, tmp_path / "pool.csv")


def test_overwriting_a_folder_is_atomic_swap(tmp_path, fixtures):
    pool = load_pool(fixtures / "gsm8k.jsonl")
    write_pool(pool, tmp_path / "out")
    write_pool(pool.with_dataset(pool.dataset.select([0])), tmp_path / "out")
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_annotations_join_by_id_not_position(tmp_path, fixtures):
    pool = load_pool(fixtures / "bespoke_stratos.jsonl")
    ids = pool.dataset["curate_id"]
    scores = {ids[0]: 0.5, ids[1]: -1.0, ids[3]: 2.0}  # ids[2] has no score
    frame = pl.DataFrame({"curate_id": list(scores), "curate_score": list(scores.values())})
    frame = frame.sample(fraction=1.0, shuffle=True, seed=3).reverse()
    path = write_pool(pool, tmp_path / "out.parquet", annotations=frame)
    written = datasets.Dataset.from_parquet(str(path))
    assert written["curate_score"] == [0.5, -1.0, None, 2.0]
    assert written["curate_id"] == ids


def test_annotations_fill_existing_columns(tmp_path, fixtures):
    pool = load_pool(fixtures / "bespoke_stratos.jsonl")
    unknown = pool.dataset["curate_id"][2]
    frame = pl.DataFrame({"curate_id": [unknown], "curate_domain": ["other"]})
    path = write_pool(pool, tmp_path / "out.jsonl", annotations=frame)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["curate_domain"] for r in rows] == ["math", "code", "other", "math"]


def test_annotation_errors(tmp_path, fixtures):
    pool = load_pool(fixtures / "gsm8k.jsonl")
    with pytest.raises(DataError, match="not in the pool, e.g. 'elsewhere:1'"):
        write_pool(pool, tmp_path / "o.jsonl", annotations=pl.DataFrame({"curate_id": ["elsewhere:1"], "curate_x": [1]}))
    with pytest.raises(DataError, match="no curate_id column"):
        write_pool(pool, tmp_path / "o.jsonl", annotations=pl.DataFrame({"id": ["x"]}))
    with pytest.raises(DataError, match="must be named curate_\\*: score"):
        write_pool(pool, tmp_path / "o.jsonl", annotations=pl.DataFrame({"curate_id": pool.dataset["curate_id"][:1], "score": [1]}))
    dup = pool.dataset["curate_id"][0]
    with pytest.raises(DataError, match="repeat curate_id"):
        write_pool(pool, tmp_path / "o.jsonl", annotations=pl.DataFrame({"curate_id": [dup, dup], "curate_x": [1, 2]}))
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_emit_messages_folds_the_system_prompt(tmp_path, fixtures):
    pool = load_pool(fixtures / "bespoke_stratos.jsonl")
    path = write_pool(pool, tmp_path / "trl", emit="messages")
    written = datasets.load_from_disk(str(path))
    assert written.column_names == ["messages", "curate_id", "curate_domain", "curate_domain_source"]
    first = written[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[0]["content"] == pool.dataset[0]["system"]
    assert first[2]["content"] == pool.dataset[0]["conversations"][1]["value"]


def test_manifest_and_card(tmp_path, fixtures, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secretsecretsecretsecret")
    pool = load_pool(fixtures / "gsm8k.jsonl")
    ids = pool.dataset["curate_id"]
    kept = pool.with_dataset(pool.dataset.select([1, 2, 3]))
    entries = [
        ManifestEntry(ids[0], "removed", "influence_bottom"),
        ManifestEntry("donor:7", "replaced", "flip_harder", replaced_by=ids[1]),
        ManifestEntry(ids[2], "added", "flip_donor"),
    ]
    argv = ["curate", "prune", "gsm8k.jsonl", "--api-key", "sk-secretsecretsecretsecret", "--token=hf_abc"]
    path = write_pool(kept, tmp_path / "out.parquet", manifest=entries, command=argv,
                      extra_card={"Influence": "Scores from EK-FAC."})
    assert read_manifest(tmp_path / "out.manifest.jsonl") == entries
    card = (tmp_path / "out.README.md").read_text()
    assert "secret" not in card and "hf_abc" not in card
    assert "curate prune gsm8k.jsonl --api-key '***' '--token=***'" in card
    assert "| 3 | 3 | 1 | 1 | 1 |" in card  # rows in, out, removed, added, replaced
    assert "`gsm8k`" in card and "| removed | influence_bottom | 1 |" in card
    for package in ("curate", "datasets", "transformers", "torch"):
        assert f"| {package} |" in card
    assert "## Influence\n\nScores from EK-FAC." in card
    assert path.exists()


def test_manifest_checks(tmp_path, fixtures):
    pool = load_pool(fixtures / "gsm8k.jsonl")
    with pytest.raises(DataError, match="action 'dropped'"):
        ManifestEntry("x", "dropped", "r")
    with pytest.raises(DataError, match="replaced_by"):
        ManifestEntry("x", "replaced", "r")
    with pytest.raises(DataError, match="listed as added but is not in the output"):
        write_pool(pool, tmp_path / "o.jsonl", manifest=[ManifestEntry("nope:1", "added", "r")])
    with pytest.raises(DataError, match="listed as removed but is in the output"):
        write_pool(pool, tmp_path / "o.jsonl", manifest=[ManifestEntry(pool.dataset["curate_id"][0], "removed", "r")])


def test_redact_command():
    assert redact_command("curate tag --openai-key abc --model m") == "curate tag --openai-key '***' --model m"
    assert redact_command(["x", "--password=hunter2"]) == "x '--password=***'"
    assert redact_command(["x", "--note", "ghp_" + "a" * 30]) == "x --note '***'"


def test_push_to_hub_uploads_data_card_and_manifest(tmp_path, monkeypatch, fixtures):
    """No network here: record what would be sent through the datasets / huggingface_hub calls."""
    import datasets
    import huggingface_hub

    from curate.data import load_pool, write_pool

    calls = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo, **kw: calls.append(("data", repo, self.num_rows)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file",
                        lambda self, **kw: calls.append(("file", kw["repo_id"], kw["path_in_repo"])))
    pool = load_pool(fixtures / "gsm8k.jsonl")
    write_pool(pool, tmp_path / "out.parquet", push_to_hub="me/pool")
    assert calls == [("data", "me/pool", len(pool)), ("file", "me/pool", "README.md"),
                     ("file", "me/pool", "manifest.jsonl")]
    assert (tmp_path / "out.parquet").exists()
