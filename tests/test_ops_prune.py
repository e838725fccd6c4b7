"""prune on the bundled sample pool with synthetic influence columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.cli import main
from curate.data import load_pool, read_manifest
from curate.errors import UsageError
from curate.ops import PruneConfig, prune
from curate.ops.select import apportion

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
    assert "keep=1.5" in str(err.value) and "strategy='nope'" in str(err.value) and "ngram=2" in str(err.value)


def cli_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:")
    return last


@pytest.mark.parametrize("keep", ["0", "1.5"])
def test_cli_bad_keep(tmp_path, capsys, keep):
    msg = cli_error(["prune", str(SAMPLE / "pool.jsonl"), "--keep", keep, "-o", str(tmp_path / "o.parquet")], capsys)
    assert "keep=" in msg


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
