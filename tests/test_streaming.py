"""Pools read a batch at a time give the same ids, rows, order and manifests as the same pool held
in memory: loading (every format, batches that disagree on types, nested conversations, duplicates,
gzip), every row-changing operation and every output format, with batches of 3 rows so each path
crosses many batch boundaries."""

from __future__ import annotations

import gzip
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.data import load_pool, write_pool
from curate.data.load import _open_text
from curate.data.pool import ExampleSequence, build_pool
from curate.data.rows import DatasetRows, FileRows, SpillWriter, SpliceRows
from curate.data.shapes import resolve_shape
from curate.errors import DataError
from curate.ops import (
    FlipConfig,
    PruneConfig,
    ReweightConfig,
    StripConfig,
    decontaminate,
    flip,
    prune,
    reweight,
    strip,
)
from curate.tagging.config import TagConfig
from curate.tagging.offline import BEHAVIOR_MARKERS, behavior_counts
from curate.tagging.tagger import tag_pool
from tests.test_ops_flip import SCALE, with_difficulty
from tests.test_ops_strip import PLAIN, SKY

SAMPLE = Path(__file__).parent.parent / "curate" / "resources" / "sample"
FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 3 rows everywhere (reading, converting, writing)."""
    monkeypatch.setattr("curate.data.rows.BATCH_ROWS", 3)
    monkeypatch.setattr("curate.data.load.BATCH_ROWS", 3)
    monkeypatch.setattr("curate.data.write.ROW_GROUP_ROWS", 3)


def in_memory(pool):
    """The same pool, every row held in one in-memory `datasets.Dataset`."""
    return pool.with_dataset(pool.dataset)


def whole_file_reference(path: Path):
    """The pool as the whole-file loader built it: every row parsed, one table inferred over all."""
    rows = [json.loads(line) for line in _open_text(path) if line.strip()]
    names = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.table({n: pa.array([r.get(n) for r in rows]) for n in names})
    dataset = datasets.Dataset(table)
    shape = resolve_shape(dataset.column_names, rows[:5], None, where=str(path))
    return build_pool(dataset, shape, None, str(path))


def rows_of(path: Path) -> list[dict]:
    if path.is_dir():
        return datasets.load_from_disk(str(path)).to_list()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return pq.read_table(path).to_pylist()


def written(pool, out: Path, **kw) -> tuple[list[dict], str]:
    path = write_pool(pool, out, **kw)
    manifest = (path / "manifest.jsonl") if path.is_dir() else path.with_name(path.name.split(".")[0] + ".manifest.jsonl")
    return rows_of(path), manifest.read_text(encoding="utf-8")


def mixed_rows(n: int = 20) -> list[dict]:
    """Rows whose batches disagree: `score` int then float, `note` null then text, turns gaining a
    `weight` key late, an `extra` key first seen at row 11, duplicated rows, nested conversations."""
    rows = []
    for i in range(n):
        turns = [{"from": "human", "value": f"Return your final response within \\boxed{{}}. What is {i % 7} + 1?"},
                 {"from": "gpt", "value": f"<|begin_of_thought|>\n\nWait, {i % 7} + 1. Let me check.\n\n"
                                          f"<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{{{i % 7 + 1}}}"
                                          "\n\n<|end_of_solution|>"}]
        if i >= 13:
            turns[1]["weight"] = 1.0
        row = {"conversations": turns, "score": i if i < 8 else i + 0.5, "note": None if i < 10 else f"n{i}"}
        if i >= 11:
            row["extra"] = {"k": i}
        rows.append(row)
    return rows


def test_loading_in_batches_equals_the_whole_file_loader(tmp_path, small_batches):
    path = tmp_path / "mixed.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in mixed_rows())
    streamed, reference = load_pool(path), whole_file_reference(path)
    assert len(streamed.rows.parent.files) == 7  # 20 rows converted in parts of 3, read from disk
    assert streamed.column_names == reference.dataset.column_names
    assert streamed.rows.schema.field("score").type == pa.float64()
    assert streamed.dataset.to_list() == reference.dataset.to_list()
    ids = streamed.dataset["curate_id"]
    assert len(set(ids)) == 20 and sum("#" in i for i in ids) == 13  # 7 distinct problems, repeats numbered


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.jsonl")
                                        if p.name not in ("malformed.jsonl", "no_assistant.jsonl")))
def test_every_fixture_loads_the_same_in_batches(name, small_batches):
    streamed, reference = load_pool(FIXTURES / name), whole_file_reference(FIXTURES / name)
    assert streamed.dataset.to_list() == reference.dataset.to_list()
    assert [e.messages for e in streamed.examples()] == [e.messages for e in reference.examples()]


@pytest.mark.parametrize("kind", ["json", "parquet", "parquet.gz", "csv"])
def test_other_formats_in_batches(tmp_path, kind, small_batches):
    rows = [{"id": f"r{i}", "prompt": f"What is {i}+1?", "response": f"It is {i + 1}.", "level": i % 5} for i in range(10)]
    path = tmp_path / f"pool.{kind}"
    if kind == "json":
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]", encoding="utf-8")
    elif kind == "csv":
        path.write_text("id,prompt,response,level\n" + "".join(f"{r['id']},{r['prompt']},{r['response']},{r['level']}\n"
                                                             for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet", row_group_size=4)
        if kind == "parquet.gz":
            path.write_bytes(gzip.compress((tmp_path / "pool.parquet").read_bytes()))
    pool = load_pool(path)
    got = pool.dataset.to_list()
    assert [r["curate_id"] for r in got] == [f"id:r{i}" for i in range(10)]
    assert [{k: r[k] for k in rows[0]} for r in got] == rows


class Counting:
    """Opens text files (in place of `curate.data.load._open_text`) and counts the characters
    read from them, by `read` or by lines."""

    def __init__(self) -> None:
        self.chars = 0

    def open(self, path):
        outer = self

        class Reader:
            def __init__(self):
                self.inner = open(path, encoding="utf-8")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.inner.close()

            def read(self, n=-1):
                text = self.inner.read(n)
                outer.chars += len(text)
                return text

            def __iter__(self):
                for line in self.inner:
                    outer.chars += len(line)
                    yield line

        return Reader()


def test_a_bad_line_far_into_a_file_is_reported_without_reading_the_rest(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    good = json.dumps({"prompt": "p" * 200, "response": "r" * 200}) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(good * 3999 + "{not json\n" + good * 20000)
    counting = Counting()
    monkeypatch.setattr("curate.data.load._open_text", counting.open)
    with pytest.raises(DataError, match=r"big\.jsonl:4000: invalid JSON"):
        load_pool(path)
    assert counting.chars < path.stat().st_size / 4  # stopped near line 4000 of 24000


def test_a_bad_item_in_a_json_list_names_its_line(tmp_path, small_batches):
    path = tmp_path / "list.json"
    items = [json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) for i in range(50)]
    items[40] = '{"prompt": "q40", "response": }'
    path.write_text("[\n" + ",\n".join(items) + "\n]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"list\.json:42: invalid JSON"):
        load_pool(path)
    path.write_text("[\n" + ",\n".join(items[:40]) + "\n]\n", encoding="utf-8")
    assert len(load_pool(path)) == 40


def test_values_of_two_kinds_across_batches_are_refused(tmp_path, small_batches):
    path = tmp_path / "kinds.jsonl"
    rows = [{"prompt": "q", "response": "a", "n": i} for i in range(5)] + [{"prompt": "q", "response": "a", "n": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"kinds\.jsonl: column 'n' mixes value types \(int, str\)"):
        load_pool(path)


@pytest.fixture
def sample(tmp_path_factory):
    """The bundled sample pool and donor with difficulties, as parquet files (read in place)."""
    folder = tmp_path_factory.mktemp("sample")
    out = {}
    for name, path in (("pool", SAMPLE / "pool.jsonl"), ("donor", SAMPLE / "donor.jsonl")):
        write_pool(with_difficulty(load_pool(path)), folder / f"{name}.parquet")
        out[name] = folder / f"{name}.parquet"
    return out


def both(path: Path):
    streamed = load_pool(path)
    assert isinstance(streamed.rows, FileRows)  # a pool curate wrote: ids read, nothing converted
    return streamed, in_memory(streamed)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "disk"])
def test_prune_and_flip_streamed_equal_in_memory(tmp_path, sample, small_batches, fmt):
    pool, held = both(sample["pool"])
    donor, donor_held = both(sample["donor"])
    suffix = {"disk": "", "parquet": ".parquet", "jsonl": ".jsonl"}[fmt]
    for name, run in (
        ("prune", lambda p, d: prune(p, PruneConfig(keep=0.6, strategy="length", per_domain=True))),
        ("flip", lambda p, d: flip(p, d, FlipConfig(**SCALE))),
        ("reweight", lambda p, d: reweight(_weighted(p), ReweightConfig(by="w", seed=1))),
    ):
        a, b = run(pool, donor), run(held, donor_held)
        assert a.manifest == b.manifest and a.report.counts == b.report.counts
        assert not isinstance(a.pool.rows, DatasetRows)
        rows_a, manifest_a = written(a.pool, tmp_path / f"{name}-s{suffix}", manifest=a.manifest)
        rows_b, manifest_b = written(b.pool, tmp_path / f"{name}-m{suffix}", manifest=b.manifest)
        assert rows_a == rows_b and manifest_a == manifest_b, name
        assert len(rows_a) == len(a.pool)
    # flip really replaced rows in place: the donor's rows sit where the pool's were
    result = flip(pool, donor, FlipConfig(**SCALE))
    out_ids = result.pool.columns(["curate_id"]).column("curate_id").to_pylist()
    pool_ids = pool.columns(["curate_id"]).column("curate_id").to_pylist()
    swapped = {e.curate_id: e.replaced_by for e in result.manifest if e.action == "replaced"}
    assert len(swapped) > 5
    assert out_ids == [swapped.get(i, i) for i in pool_ids]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _weighted(pool):
    from curate.data.rows import ColumnRows

    return pool.with_rows(ColumnRows(pool.rows, pa.table({"w": [float(i % 3) for i in range(len(pool))]})))


def test_strip_tag_and_decontaminate_streamed_equal_in_memory(tmp_path, sample, small_batches):
    traces = [{"id": f"r{i}", "conversations": [{"from": "user", "value": f"Solve 2x + 2 = 8 ({i})."},
                                                 {"from": "assistant", "value": SKY if i % 3 else PLAIN}]}
              for i in range(10)]
    write_pool(load_pool(_jsonl(tmp_path / "traces.jsonl", traces)), tmp_path / "traces.parquet")
    pool, held = both(tmp_path / "traces.parquet")
    a, b = strip(pool, StripConfig()), strip(held, StripConfig())
    assert a.manifest == b.manifest and len(a.manifest) == 6 and a.report.counts == b.report.counts
    assert written(a.pool, tmp_path / "s.parquet", manifest=a.manifest) == \
        written(b.pool, tmp_path / "m.parquet", manifest=b.manifest)
    pool, held = both(sample["pool"])
    config = TagConfig(offline=True, tasks=("difficulty", "behaviors"))
    (tags_a, _), (tags_b, _) = tag_pool(pool, config), tag_pool(held, config)
    behaviors = [c for c in tags_a.columns if c.startswith("curate_behavior_") and c != "curate_behavior_source"]
    assert tags_a.equals(tags_b) and sum(tags_a[c].sum() for c in behaviors) > 0
    assert tags_a["curate_difficulty"].null_count() < len(tags_a)
    assert written(pool, tmp_path / "t.jsonl", annotations=tags_a) == written(held, tmp_path / "u.jsonl", annotations=tags_b)
    bench = tmp_path / "bench.jsonl"
    problems = [r for r in load_pool(SAMPLE / "pool.jsonl").examples()][:4]
    bench.write_text("".join(json.dumps({"problem": e.messages[-2]["content"], "solution": "1", "answer": "1"}) + "\n" for e in problems))
    c, d = decontaminate(pool, [bench]), decontaminate(held, [bench])
    assert c.manifest == d.manifest and len(c.manifest) >= 4
    assert written(c.pool, tmp_path / "c.parquet", manifest=c.manifest) == \
        written(d.pool, tmp_path / "d.parquet", manifest=d.manifest)


def test_messages_emit_and_disk_shards(tmp_path, sample, small_batches, monkeypatch):
    pool, held = both(sample["pool"])
    assert written(pool, tmp_path / "a.jsonl", emit="messages") == written(held, tmp_path / "b.jsonl", emit="messages")
    monkeypatch.setattr("curate.data.write.SHARD_BYTES", 20_000)
    out = write_pool(pool, tmp_path / "sharded")
    shards = sorted(p.name for p in out.glob("data-*.arrow"))
    assert len(shards) > 3 and shards[-1].endswith(f"-of-{len(shards):05d}.arrow")
    assert datasets.load_from_disk(str(out)).to_list() == held.dataset.to_list()


def test_splice_and_spill_put_rows_in_output_order(tmp_path, small_batches):
    rng = np.random.default_rng(0)
    base = DatasetRows(datasets.Dataset.from_dict({"x": list(range(50))}))
    keep = np.sort(rng.choice(50, size=40, replace=False))
    at = np.sort(rng.choice(40, size=15, replace=False))
    writer = SpillWriter(base.schema, span=4)
    writer.BUFFER_BYTES, writer.GROUPS_PER_FILE = 1, 1  # a flush per add; a file per row group
    order = rng.permutation(15)  # the replacements arrive in any order
    for part in np.array_split(order, 15):
        writer.add(pa.table({"x": [1000 + int(at[k]) for k in part]}), at[part])
    spill = writer.close()
    assert len([f for f in spill.files if f]) > 3 and max(len(f) for f in spill.files) > 1
    got = pa.concat_tables(SpliceRows(base, keep, at, spill).batches()).column("x").to_pylist()
    expected = [int(v) for v in keep]
    for k in at:
        expected[k] = 1000 + int(k)
    assert got == expected


def test_example_sequence_reads_in_order_and_restarts(small_batches):
    pool = load_pool(SAMPLE / "pool.jsonl")
    seq, ids = ExampleSequence(pool), pool.dataset["curate_id"]
    assert len(seq) == len(ids) and [e.id for e in seq] == ids
    assert [seq[i].id for i in (0, 5, 5, 9, 2, 79, -1)] == [ids[i] for i in (0, 5, 5, 9, 2, 79, -1)]
    assert [e.id for e in seq[10:20]] == ids[10:20]
    with pytest.raises(IndexError):
        seq[80]


def test_behavior_markers_count_as_the_case_insensitive_patterns():
    reference = {n: re.compile("|".join(f"(?:{p})" for p in pats), re.I) for n, pats in BEHAVIOR_MARKERS.items()}
    texts = [e.response for e in load_pool(SAMPLE / "pool.jsonl").examples()]
    texts += ["Wait. WAIT, await swait wait!", "Step 3, step3, Case 2: first, we; First we; firstly, we",
              "Then we need to show that x. then I need", "Scratch that. unscratch that", "Working backwards; LET ME CHECK"]
    for text in texts:
        assert behavior_counts(text) == {n: len(p.findall(text)) for n, p in reference.items()}
    assert sum(sum(behavior_counts(t).values()) for t in texts) > 20


def test_csv_types_are_those_of_a_whole_file_read(tmp_path):
    import pyarrow.csv as pcsv

    path = tmp_path / "late.csv"
    rows = "".join(f"{i},,{i},q{i},a{i}\n" for i in range(60_000))  # past pyarrow's first block
    path.write_text("n,late,x,prompt,response\n" + rows + "hello,3,1.5,q,a\n", encoding="utf-8")
    pool = load_pool(path)
    whole = pcsv.read_csv(path)
    assert [pool.rows.schema.field(c).type for c in whole.column_names] == [f.type for f in whole.schema]
    assert pool.columns(["n", "late", "x"]).slice(59_999).to_pylist() == \
        whole.select(["n", "late", "x"]).slice(59_999).to_pylist()


def test_a_json_list_broken_early_is_not_read_to_the_end(tmp_path, monkeypatch):
    path = tmp_path / "early.json"
    item = json.dumps({"prompt": "p" * 200, "response": "r" * 200})
    path.write_text("[\n" + item + ",\n{oops},\n" + ",\n".join([item] * 20_000) + "\n]", encoding="utf-8")
    counting = Counting()
    monkeypatch.setattr("curate.data.load._open_text", counting.open)
    with pytest.raises(DataError, match=r"early\.json:3: invalid JSON"):
        load_pool(path)
    assert counting.chars < path.stat().st_size / 4


def test_outputs_keep_annotations_features_and_row_groups(tmp_path, small_batches):
    import polars as pl

    rows = [{"id": f"r{i}", "prompt": f"q{i}", "response": f"a{i}", "label": i % 2} for i in range(20)]
    features = datasets.Features({"id": datasets.Value("string"), "prompt": datasets.Value("string"),
                                  "response": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "in"))
    write_pool(load_pool(tmp_path / "in"), tmp_path / "in.parquet")
    pool = load_pool(tmp_path / "in.parquet")
    assert isinstance(pool.features["label"], datasets.ClassLabel)
    stripped = strip(pool, StripConfig())  # nothing to strip: the same rows, the same features
    assert isinstance(stripped.pool.features["label"], datasets.ClassLabel)
    kept = pool.take([1, 4, 5, 9, 12, 13, 19])  # batches of 1-2 rows after the take
    path = write_pool(kept, tmp_path / "kept.parquet")
    assert [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(3)] == [3, 3, 1]
    none = pool.take([])
    scores = pl.DataFrame({"curate_id": [], "curate_score": []}, schema={"curate_id": pl.String, "curate_score": pl.Float64})
    empty = write_pool(none, tmp_path / "none.parquet", annotations=scores)
    assert pq.read_schema(empty).names[-1] == "curate_score" and pq.read_metadata(empty).num_rows == 0


class RowCounter:
    """A progress sink that sums every `advance`."""

    def __init__(self) -> None:
        self.advanced = 0

    @contextmanager
    def task(self, description, total, unit="it"):
        def advance(n=1):
            self.advanced += n
        yield advance

    def note(self, message):
        pass


def test_rater_windows_give_the_same_tags_requests_and_accounting(tmp_path, monkeypatch):
    """The rater reads `WINDOW_ROWS` rows at a time: windows of 3 rows over batches of 3 give the
    same annotations, requests and accounting as one window, with unknown domains answered first,
    unparseable replies, failed requests, split traces and over-long prompts resent shrunk; the
    progress counts every row once."""
    from tests.openai_server import FakeOpenAI, Faults
    from tests.test_tag_server import _small_pool

    path = _small_pool(tmp_path, rows=14)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows += [{**rows[0], "id": f"u{i}", "conversations": [{"from": "user", "value": q}, {"from": "assistant", "value": a}]}
             for i, (q, a) in enumerate([("Write a program that reverses a list.", "def rev(xs): return xs[::-1]"),
                                         ("How many apples are left?", "Three apples are left."),
                                         ("Is the sky blue?", "Yes, it is, mostly.")])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(window: int, batch: int):
        monkeypatch.setattr("curate.tagging.tagger.WINDOW_ROWS", window)
        monkeypatch.setattr("curate.data.rows.BATCH_ROWS", batch)
        pool = load_pool(str(path))
        progress = RowCounter()
        with FakeOpenAI(Faults(unparseable=0.15, server_error=0.1, context=400)) as server:
            server.advertise = False
            config = TagConfig(base_urls=(server.url,), model="m", max_retries=0, long="split", max_chars=800, max_tokens=64,
                               concurrency=4)
            frame, report = tag_pool(pool, config, progress)
            bodies = sorted(server.bodies())
        return pool, frame, report, bodies, progress.advanced

    pool, whole, one, bodies, advanced = run(10_000, 1024)
    _, windowed, many, bodies_w, advanced_w = run(3, 3)
    assert windowed.equals(whole)
    assert bodies_w == bodies and advanced == advanced_w == len(pool) == 17
    assert many.tasks == one.tasks and many.failed == one.failed and many.unparsed == one.unparsed
    assert (many.sources, many.fitted, many.shrunk) == (one.sources, one.fitted, one.shrunk)
    # the run exercised what it claims: unknown domains, failures, unparsed replies, split traces, resends
    assert whole["curate_domain_source"].to_list().count("llm") >= 2
    assert sum(one.failed.values()) and sum(one.unparsed.values()) and one.shrunk
    assert whole["curate_tag_long"].str.starts_with("split").any()


def test_a_killed_process_leaves_a_folder_the_next_one_removes(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import tempfile

    from curate.data.rows import TempFolder, sweep_orphans

    code = ("import os, signal; from curate.data.rows import TempFolder; t = TempFolder(); "
            "print(t.path, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == -signal.SIGKILL
    orphan = Path(proc.stdout.strip())
    assert orphan.parent == tmp_path and orphan.is_dir()  # no finalizer ran
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(TempFolder, "_swept", False)
    live = TempFolder()  # this process's first: sweeps the killed one's, keeps its own
    assert not orphan.exists() and live.path.is_dir()
    assert sweep_orphans(tmp_path) == [] and live.path.is_dir()
    other = tmp_path / "curate-sandbox-x"  # not a TempFolder: left alone
    other.mkdir()
    assert sweep_orphans(tmp_path) == [] and other.is_dir()
