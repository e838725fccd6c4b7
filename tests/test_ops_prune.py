"""prune on the bundled sample pool with synthetic influence columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.cli import main
from curate.data import load_pool, read_manifest
from curate.errors import UsageError
from curate.ops import PruneConfig, prune
from curate.ops.select import apportion
from tests.cli_helpers import cli_error

SAMPLE = Path(__file__).parent.parent / "curate" / "resources" / "sample"


@pytest.fixture(scope="module")
def pool():
    p = load_pool(SAMPLE / "pool.jsonl")
    rng = np.random.default_rng(0)
    n = len(p)
    ds = p.dataset
    ds = ds.add_column("curate_influence_math", [None, *rng.normal(size=n - 1)])
    ds = ds.add_column("curate_influence_correct", list(rng.normal(size=n)))
    ds = ds.add_column("curate_influence_incorrect", list(rng.normal(size=n)))
    for k in range(3):
        ds = ds.add_column(f"curate_influence_incorrect_split{k}", list(rng.normal(size=n)))
    return p.with_dataset(ds)


def frame(p, *cols):
    return pl.DataFrame({c: list(p.dataset[c]) for c in ("curate_id", *cols)})


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.33, 0.01, 1.0])
def test_keeps_exact_count_and_drops_lowest(pool, keep):
    result = prune(pool, PruneConfig(keep=keep, by=("curate_influence_math",)))
    n = int(np.floor(keep * len(pool) + 0.5))
    assert len(result.pool) == n
    assert len(result.manifest) == len(pool) - n
    scores = frame(pool, "curate_influence_math")
    kept = scores.filter(pl.col("curate_id").is_in(list(result.pool.dataset["curate_id"])))
    dropped = scores.filter(~pl.col("curate_id").is_in(list(result.pool.dataset["curate_id"])))
    if len(dropped.drop_nulls()):
        assert kept["curate_influence_math"].min() >= dropped["curate_influence_math"].max()
    if n < len(pool):  # the null score ranks last, so it is the first to go
        null_id = scores.filter(pl.col("curate_influence_math").is_null())["curate_id"][0]
        assert null_id not in set(result.pool.dataset["curate_id"])
        assert any("null score" in e.reason for e in result.manifest)
    assert all("rank" in e.reason for e in result.manifest)
    assert result.pool.dataset.column_names == pool.dataset.column_names


def test_per_domain_total_is_exact(pool):
    result = prune(pool, PruneConfig(keep=0.55, by=("curate_influence_correct",), per_domain=True))
    counts = dict(pl.Series(list(result.pool.dataset["curate_domain"])).value_counts().iter_rows())
    assert len(result.pool) == 44 and counts == {"math": 26, "code": 18}  # 26.4 + 17.6 -> 26 + 18
    assert apportion(5, {"a": 1, "b": 1}) == {"a": 3, "b": 2}


def test_correct_incorrect_drops_high_incorrect(pool):
    result = prune(pool, PruneConfig(keep=0.75, strategy="correct-incorrect", incorrect="curate_influence_incorrect"))
    f = frame(pool, "curate_influence_incorrect")
    dropped = set(f["curate_id"]) - set(result.pool.dataset["curate_id"])
    top = set(f.sort("curate_influence_incorrect", descending=True).head(20)["curate_id"])
    assert len(dropped & top) >= 12  # split damping moves some, but high s_I goes
    low = set(f.sort("curate_influence_incorrect").head(20)["curate_id"])
    assert not dropped & low
    both = prune(pool, PruneConfig(keep=0.5, strategy="correct-incorrect", correct="curate_influence_correct",
                                   incorrect="curate_influence_incorrect"))
    assert len(both.pool) == 40


def test_baselines(pool):
    a = prune(pool, PruneConfig(keep=0.5, strategy="random", seed=1))
    b = prune(pool, PruneConfig(keep=0.5, strategy="random", seed=1))
    c = prune(pool, PruneConfig(keep=0.5, strategy="random", seed=2))
    assert list(a.pool.dataset["curate_id"]) == list(b.pool.dataset["curate_id"]) != list(c.pool.dataset["curate_id"])
    longest = prune(pool, PruneConfig(keep=0.25, strategy="length"))
    assert set(longest.pool.dataset["curate_domain"]) == {"math"}  # code rows have no thought block
    with_nll = pool.with_dataset(pool.dataset.add_column("curate_nll", [float(i) for i in range(len(pool))]))
    mid = prune(with_nll, PruneConfig(keep=0.5, strategy="mid-perplexity"))
    kept = sorted(mid.pool.dataset["curate_nll"])
    assert kept[0] >= 19 and kept[-1] <= 60


def test_config_reports_all_problems_at_once():
    with pytest.raises(UsageError) as err:
        PruneConfig(keep=1.5, strategy="nope", ngram=2)
    assert "keep 1.5" in str(err.value) and "strategy 'nope'" in str(err.value) and "ngram 2" in str(err.value)


@pytest.mark.parametrize("keep", ["0", "1.5"])
def test_cli_bad_keep(tmp_path, capsys, keep):
    msg = cli_error(["prune", str(SAMPLE / "pool.jsonl"), "--keep", keep, "-o", str(tmp_path / "o.parquet")], capsys)
    assert f"--keep {float(keep)}: must be in (0, 1]" in msg  # the flag the user typed, not the field


def test_cli_missing_column_lists_available(tmp_path, pool, capsys):
    path = tmp_path / "scored.parquet"
    pool.dataset.to_parquet(path)
    msg = cli_error(["prune", str(path), "--keep", "0.5", "--by", "curate_influence_code", "-o", str(tmp_path / "o.parquet")], capsys)
    assert "'curate_influence_code'" in msg and "curate_influence_math" in msg


def test_cli_writes_pool_and_manifest(tmp_path, pool, write_jsonl):
    path = tmp_path / "scored.parquet"
    pool.dataset.to_parquet(path)
    robot = "Return your final response within \\boxed{}. " + " ".join(["word"] * 20)
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"problem": pool.dataset[3]["conversations"][0]["value"].split(". ", 1)[1],
                                                    "solution": "s", "level": 1}, {"problem": robot, "solution": "s", "level": 1}])
    out = tmp_path / "out.parquet"
    main(["prune", str(path), "--keep", "0.5", "--by", "curate_influence_math,curate_influence_correct",
          "--per-domain", "--decontaminate", str(bench), "-o", str(out)])
    result = load_pool(out)
    entries = read_manifest(tmp_path / "out.manifest.jsonl")
    assert len(result) == 40  # round(0.5 * 79) after one row is decontaminated
    assert sum(e.reason.startswith("decontam:bench.jsonl") for e in entries) == 1
    assert len(entries) == 80 - 40


# --- embedding (RDS+) on a tiny Llama with the packaged tokenizer --------------------------------



@pytest.fixture
def embed_files(tmp_path, write_jsonl):
    """An 8-row pool (6 math, 2 code) and a query file holding a copy of its row 2."""
    rows = [json.loads(line) for line in (SAMPLE / "pool.jsonl").read_text().splitlines()]
    pool_rows = rows[:6] + rows[48:50]
    return write_jsonl(tmp_path / "pool.jsonl", pool_rows), write_jsonl(tmp_path / "q.jsonl", [pool_rows[2]])


def test_embedding_is_mean_of_last_hidden_states(tiny_model_dir, embed_files):
    import torch

    from curate.influence.embedding import embed_examples
    from curate.influence.tokens import tokenize_example
    from curate.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    examples = list(load_pool(embed_files[0]).examples())
    batched = embed_examples(model, tok, examples, 600, batch_tokens=10_000)  # one padded batch
    single = embed_examples(model, tok, examples, 600, batch_tokens=1)  # one example per batch
    assert batched.shape == (8, 16) and batched.dtype == torch.float32
    lengths = {len(tokenize_example(tok, e, 600).input_ids) for e in examples}
    assert len(lengths) > 3  # 442 to 600 tokens (some cut), so the batched run really pads
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for row, example in enumerate(examples):
            ids = torch.tensor([tokenize_example(tok, example, 600).input_ids])
            by_hand = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(dim=0)
            torch.testing.assert_close(single[row], by_hand, rtol=1e-5, atol=1e-5)


def test_cosine_to_mean_direction_ranks_like_mean_cosine():
    import torch

    from curate.influence.embedding import cosine_scores

    gen = torch.Generator().manual_seed(0)
    pool_emb, queries = torch.randn(50, 8, generator=gen), torch.randn(3, 8, generator=gen)
    scores = cosine_scores(pool_emb, queries)
    mean_cos = torch.nn.functional.cosine_similarity(pool_emb[:, None].double(), queries[None].double(), dim=-1).mean(1)
    ratio = mean_cos / scores
    assert (ratio > 0).all() and torch.allclose(ratio, ratio[0].expand_as(ratio))
    torch.testing.assert_close(cosine_scores(queries[:1], queries[:1]), torch.ones(1, dtype=torch.float64))


def test_embedding_table_reads_the_pool_in_windows(tiny_model_dir, embed_files, monkeypatch):
    """Windows of 3 rows (so the 8-row pool takes three, the last short) give each row the score of
    its own embedding against the query direction, in pool order, as one window does."""
    import torch

    import curate.influence.embedding as embedding
    from curate.influence.config import ScoreConfig
    from curate.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    pool, query = load_pool(embed_files[0]), load_pool(embed_files[1])
    config = ScoreConfig(model=str(tiny_model_dir), method="embedding", max_length=600)
    whole = embedding.embedding_table(pool, {"q": query}, config, model=model, tokenizer=tok)
    monkeypatch.setattr(embedding, "WINDOW_ROWS", 3)
    windows = embedding.embedding_table(pool, {"q": query}, config, model=model, tokenizer=tok)
    assert windows["curate_id"].to_list() == whole["curate_id"].to_list() == pool.columns(["curate_id"])["curate_id"].to_pylist()
    rows = embedding.embed_examples(model, tok, list(pool.examples()), 600, batch_tokens=1)
    direction = embedding.embed_examples(model, tok, list(query.examples()), 600, batch_tokens=1)
    expected = embedding.cosine_scores(rows, direction)
    for table in (whole, windows):
        torch.testing.assert_close(torch.tensor(table["curate_embedding_q"].to_list(), dtype=torch.float64), expected, rtol=1e-5, atol=1e-5)
    assert windows["curate_embedding_q"].arg_max() == 2  # the row the query copies


@pytest.mark.parametrize("keep, n", [("0.1", 1), ("0.3", 2), ("0.5", 4)])
def test_cli_embedding_keeps_query_copies(tiny_model_dir, embed_files, tmp_path, keep, n):
    pool_path, query_path = embed_files
    out = tmp_path / "out.parquet"
    main(["prune", str(pool_path), "--keep", keep, "--strategy", "embedding", "--model", str(tiny_model_dir),
          "--query", str(query_path), "--max-length", "1024", "--batch-tokens", "1024", "--device", "cpu", "-o", str(out)])
    kept = list(load_pool(out).dataset["curate_id"])
    assert len(kept) == n
    assert load_pool(pool_path).dataset[2]["curate_id"] in kept  # the copy of the query has cosine 1
    entries = read_manifest(tmp_path / "out.manifest.jsonl")
    assert len(entries) == 8 - n
    assert all(e.reason.startswith("prune:embedding score ") and ", rank " in e.reason for e in entries)


def test_embedding_scores_are_columns_that_prune_ranks_by(tiny_model_dir, embed_files, tmp_path):
    """`curate score --method embedding`, then `curate prune --strategy embedding` (no model): the
    same rows as the one-command shortcut; the op itself reads columns only."""
    pool_path, query_path = embed_files
    scored = tmp_path / "scored.parquet"
    main(["score", str(pool_path), "--method", "embedding", "--model", str(tiny_model_dir), "--query",
          f"q={query_path}", "--max-length", "1024", "--batch-tokens", "1024", "--device", "cpu", "-o", str(scored)])
    table = load_pool(scored).dataset
    assert "curate_embedding_q" in table.column_names and "curate_influence_q" not in table.column_names
    assert max(table["curate_embedding_q"]) == pytest.approx(1.0)  # the row the query copies
    assert "Embedding scores" in (tmp_path / "scored.README.md").read_text()
    two_steps, shortcut = tmp_path / "a.parquet", tmp_path / "b.parquet"
    main(["prune", str(scored), "--keep", "0.3", "--strategy", "embedding", "-o", str(two_steps)])
    main(["prune", str(pool_path), "--keep", "0.3", "--strategy", "embedding", "--model", str(tiny_model_dir),
          "--query", str(query_path), "--max-length", "1024", "--batch-tokens", "1024", "--device", "cpu",
          "-o", str(shortcut)])
    assert load_pool(two_steps).dataset["curate_id"] == load_pool(shortcut).dataset["curate_id"]


@pytest.mark.parametrize("args, expected", [
    (["--strategy", "embedding", "--query", "q.jsonl"], "only with both --model and --query"),
    (["--strategy", "embedding", "--model", "m"], "only with both --model and --query"),
    (["--strategy", "random", "--model", "m"], "--model/--query score embeddings for --strategy embedding, not random"),
    (["--query", "q.jsonl"], "--model/--query score embeddings for --strategy embedding, not score"),
    (["--strategy", "embedding"], "the pool has no curate_embedding_* columns (run `curate score --method embedding`"),
])
def test_cli_embedding_config_errors(tmp_path, capsys, args, expected):
    msg = cli_error(["prune", str(SAMPLE / "pool.jsonl"), "--keep", "0.5", *args, "-o", str(tmp_path / "o.parquet")], capsys)
    assert expected in msg


def test_embedding_method_refuses_influence_only_settings():
    from curate.influence.config import ScoreConfig

    with pytest.raises(UsageError, match="tokens applies to method ekfac, not embedding"):
        ScoreConfig(model="m", method="embedding", tokens=True)
