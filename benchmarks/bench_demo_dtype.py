# Run: .venv/bin/python benchmarks/bench_demo_dtype.py [--per-domain 18]
"""What `curate demo`'s bfloat16 compute changes: its scores against float32 on the same work.

The demo's own setting (`curate.demo`): the recipe output of `recipes/sample.yaml`, its
--per-domain shortest math and code rows, every bundled query answer (64 GSM8K, 32 MBPP, each set
also in 2 disjoint splits), SmolLM2-135M-Instruct with the MLPs of its last 4 blocks tracked, the
empirical Fisher. Scored twice, float32 then bfloat16 (factors are float64 in both), with the
threads `curate.cpu` picks. Printed: the wall time of each and their ratio, then per query function
the Pearson and Spearman correlation of the two runs' scores and each run's stability verdict.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-domain", type=int, default=18)
    args = parser.parse_args()

    import polars as pl

    from curate.cpu import configure_threads
    from curate.data import load_pool
    from curate.demo import MAX_LENGTH, QUERY_SETS, RECIPE, DemoConfig, demo_subset
    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool
    from curate.influence.tokens import tokenize_all
    from curate.models import load_model
    from curate.recipes import run_recipe

    demo = DemoConfig()
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-dtype-"))
    try:
        pool = load_pool(run_recipe(RECIPE, output=tmp / "recipe" / "sample.parquet").output)
        queries = {q: list(load_pool(p, source=f"query-{q}").examples()) for q, p in QUERY_SETS.items()}
        results, seconds = {}, {}
        for dtype in ("float32", "bfloat16"):
            model, tok = load_model("smollm2-135m", dtype=dtype)
            lengths = {z.id: z.full_length for z in tokenize_all(tok, pool.examples(), MAX_LENGTH)}
            keep, _ = demo_subset(pool, args.per_domain, lengths)
            rows = list(pool.with_dataset(pool.dataset.select(keep)).examples())
            config = ScoreConfig(model="smollm2-135m", max_length=MAX_LENGTH, fit_max_length=MAX_LENGTH,
                                 modules=demo.modules, fisher=demo.fisher, dtype=dtype, query_splits=2)
            start = time.perf_counter()
            results[dtype] = score_pool(rows, queries, config, tmp / dtype, model=model, tokenizer=tok)
            seconds[dtype] = time.perf_counter() - start
        print(f"threads {configure_threads()}; rows {len(rows)}; queries " + ", ".join(f"{q}={len(v)}" for q, v in queries.items()))
        print(f"wall: float32 {seconds['float32']:.0f} s, bfloat16 {seconds['bfloat16']:.0f} s, "
              f"ratio bfloat16/float32 {seconds['bfloat16'] / seconds['float32']:.2f}")
        a, b = results["float32"].table, results["bfloat16"].table
        joined = a.join(b, on="curate_id", suffix="_bf16")
        print(f"{'function':<14} {'pearson':>8} {'spearman':>8}  stable fp32 / bf16")
        for c in results["float32"].columns:
            p = joined.select(pl.corr(c, c + "_bf16")).item()
            s = joined.select(pl.corr(c, c + "_bf16", method="spearman")).item()
            q = c.removeprefix("curate_influence_")
            verdict = ""
            if "_split" not in q:
                verdict = " / ".join("unstable" if r.stability[q].unstable else f"stable ({r.stability[q].rho_full:.3f})"
                                     for r in results.values())
            print(f"{q:<14} {p:8.4f} {s:8.4f}  {verdict}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
