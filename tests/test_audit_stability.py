"""Stability of influence rankings across disjoint query splits (`curate.influence.stability`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.audit import UNSTABLE_BELOW, spearman_brown, stability, stability_all
from curate.errors import DataError, UsageError

ROOT = Path(__file__).parents[1]
TOKENIZER = ROOT / "curate" / "resources" / "smollm2_tokenizer"
MATH = ROOT / "curate" / "resources" / "sample" / "queries" / "math.jsonl"


def synthetic_table(query_size: int, splits: int, *, rows: int = 2000, noise: float = 8.0, seed: int = 0,
                    signal=None, name: str = "m") -> pl.DataFrame:
    """Scores as a query sample would give them: each split's score = the row's true effect plus
    noise whose variance falls as 1 / (query examples in the split), as a mean over a split's
    per-query gradients would."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=rows) if signal is None else signal
    size = query_size / splits
    data = {"curate_id": [f"r{i}" for i in range(rows)]}
    for k in range(splits):
        data[f"curate_influence_{name}_split{k}"] = true + rng.normal(scale=np.sqrt(noise / size), size=rows)
    return pl.DataFrame(data)


def spearman(a, b) -> float:
    ra, rb = pl.Series(a).rank(), pl.Series(b).rank()
    return float(np.corrcoef(ra.to_numpy(), rb.to_numpy())[0, 1])


def test_stability_shrinks_as_the_query_set_shrinks():
    reports = [stability(synthetic_table(n, 2), "m", 2, n) for n in (8, 32, 128)]
    rhos = [r.spearman_mean for r in reports]
    assert rhos[0] < rhos[1] < rhos[2]
    assert [r.rho_full for r in reports] == sorted(r.rho_full for r in reports)
    assert reports[0].top_k_overlap < reports[1].top_k_overlap < reports[2].top_k_overlap
    assert [r.split_size for r in reports] == [4, 16, 64]
    # noise 8 / split size s against unit signal: the population Pearson is 1 / (1 + 8 / s)
    assert rhos == pytest.approx([1 / 3, 2 / 3, 8 / 9], abs=0.05)
    assert reports[0].unstable and reports[0].warning and "add query examples" in reports[0].warning
    assert not reports[2].unstable and reports[2].warning is None
    assert "UNSTABLE" in reports[0].render() and "4 queries each" in reports[0].render()


@pytest.mark.parametrize("splits", [2, 4])
def test_spearman_brown_matches_the_formula_and_a_replicate_of_the_full_set(splits):
    n = 16
    report = stability(synthetic_table(n, splits), "m", splits, n)
    rho = report.spearman_mean
    assert len(report.spearman_pairs) == splits * (splits - 1) // 2
    assert report.spearman_min <= rho
    assert report.rho_full == pytest.approx(splits * rho / (1 + (splits - 1) * rho))
    assert spearman_brown(rho, splits) == report.rho_full and spearman_brown(-0.2, splits) == -0.2
    # The extrapolation predicts how two independent query sets of the full size agree: the
    # full-set score is the mean of its splits' scores.
    true = np.random.default_rng(5).normal(size=2000)
    full = [synthetic_table(n, splits, seed=s, signal=true).drop("curate_id").mean_horizontal() for s in (1, 2)]
    assert spearman(*full) == pytest.approx(report.rho_full, abs=0.04)
    # queries_needed: the Spearman-Brown length at which the extrapolation reaches 0.9
    needed = report.queries_needed
    assert needed is not None and spearman_brown(rho, needed / report.split_size) >= 0.9 - 1e-9
    assert spearman_brown(rho, (needed - 1) / report.split_size) < 0.9


def test_stability_all_finds_split_columns_and_skips_nulls():
    a = synthetic_table(64, 2, rows=200, name="math")
    b = synthetic_table(8, 3, rows=200, name="code", seed=1).drop("curate_id")
    table = pl.concat([a, b], how="horizontal").with_columns(curate_influence_math=pl.lit(0.0))
    table = table.with_columns(pl.when(pl.col("curate_id") == "r0").then(None)
                               .otherwise(pl.col("curate_influence_code_split1")).alias("curate_influence_code_split1"))
    reports = stability_all(table, query_sizes={"math": 64})
    assert set(reports) == {"math", "code"}
    assert reports["math"].splits == 2 and reports["math"].split_size == 32 and reports["math"].rows == 200
    assert reports["code"].splits == 3 and reports["code"].query_size is None and reports["code"].rows == 199
    assert reports["code"].queries_needed is None and "size unknown" in reports["code"].render()
    d = reports["math"].to_dict()
    assert d["threshold"] == UNSTABLE_BELOW and set(d) >= {"spearman_mean", "top_k_overlap", "rho_full", "unstable"}
    with pytest.raises(DataError, match="query-splits 4"):
        stability(table, "math", 4, 64)
    with pytest.raises(UsageError, match="at least 2"):
        stability(table, "math", 1, 64)


def test_engine_splits_agree_more_with_a_larger_query_set(tmp_path):
    """The real engine on a tiny model (float32, the engine's default; float64 doubles the cost of
    the 49k-way logits and moves no statistic here by 1e-3): 2 disjoint splits of 16 GSM8K
    queries rank the pool more alike than 2 splits of 4.

    Why it holds on a random model: every score is a sum over the split's queries of
    g_query^T H^-1 g_train, so a split's ranking is its queries' mean direction plus the
    idiosyncrasy of the few queries drawn; with 8 queries per split that idiosyncrasy averages
    down, with 2 it dominates. The pool holds other GSM8K rows, so the shared "GSM8K answer"
    direction is a real signal for the splits to agree on.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from curate.data import load_pool
    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)).eval()
    gsm = list(load_pool(MATH, source="gsm").examples())
    pool = gsm[:16]
    queries = {"small": gsm[16:20], "large": gsm[16:32]}
    config = ScoreConfig(model="tiny", fisher="empirical", dtype="float32", query_splits=2, max_length=256)
    result = score_pool(pool, queries, config, tmp_path / "w", model=model, tokenizer=tok)
    reports = stability_all(result.table, query_sizes={q: len(v) for q, v in queries.items()})
    small, large = reports["small"], reports["large"]
    assert (small.split_size, large.split_size) == (2, 8)
    print(small.render(), large.render(), sep="\n")
    assert large.spearman_mean > small.spearman_mean
    assert large.rho_full > small.rho_full
