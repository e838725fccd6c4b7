# Run: .venv/bin/python benchmarks/bench_ops.py [--rows 114000] [--trace-kb 20]
"""Time `prune` and `flip` on an OpenThoughts-sized synthetic pool (Bespoke-Stratos shape).

The pool and a donor of the same size are generated once into a temp dir as parquet. Reported per
op: load (data layer), the op itself, write_pool, and peak RSS (ru_maxrss) of the process so far.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("let us consider the value of x and check whether the sum is even so the answer follows "
         "wait maybe I made a mistake in the previous step let me recompute carefully").split()


def make(path: Path, rows: int, trace_kb: int, seed: int, donor: bool) -> None:
    rng = np.random.default_rng(seed)
    base = " ".join(rng.choice(WORDS, size=trace_kb * 250))[: trace_kb * 1024]
    math = rng.random(rows) < 0.6
    level = rng.integers(1, 6, size=rows)
    problems = [f"Problem {seed}-{i}: compute {i} plus {i * 7} and explain." for i in range(rows)]
    traces = [f"<|begin_of_thought|>\n\n{i} {base}\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{{{i}}}\n\n<|end_of_solution|>"
              for i in range(rows)]
    prefix = np.where(math, "Return your final response within \\boxed{}. ", "Generate an executable Python function generated from the given prompt. ")
    convs = [[{"from": "user", "value": f"{p}{q}"}, {"from": "assistant", "value": t}] for p, q, t in zip(prefix, problems, traces, strict=True)]
    table = pa.table({
        "system": ["You are a careful reasoner."] * rows,
        "conversations": convs,
        "curate_id": [f"{'donor' if donor else 'pool'}:{i}" for i in range(rows)],
        "curate_domain": np.where(math, "math", "code").tolist(),
        "curate_domain_source": ["prefix"] * rows,
        "curate_difficulty": (level * 2).astype(float).tolist(),
        "curate_difficulty_source": ["llm"] * rows,
        "curate_influence_math": rng.normal(size=rows).tolist(),
        "curate_nll": rng.random(rows).tolist(),
        "curate_tokens": rng.integers(100, 8000, size=rows).tolist(),
    })
    pq.write_table(table, path, row_group_size=8192)  # one >2 GB nested chunk does not read back


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=114_000)
    ap.add_argument("--trace-kb", type=int, default=20)
    ap.add_argument("--op", choices=["prune", "flip", "both"], default="both")
    args = ap.parse_args()
    from curate.data import load_pool, write_pool
    from curate.ops import FlipConfig, PruneConfig, flip, load_donor, prune

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make(tmp / "pool.parquet", args.rows, args.trace_kb, 0, donor=False)
        if args.op != "prune":
            make(tmp / "donor.parquet", args.rows, args.trace_kb, 1, donor=True)
        print(f"generated {args.rows} rows x ~{args.trace_kb} KB in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        pool = load_pool(tmp / "pool.parquet")
        load_s = time.perf_counter() - t
        print(f"load_pool: {load_s:.1f} s, peak RSS {peak_gb():.2f} GB")
        if args.op in ("prune", "both"):
            t = time.perf_counter()
            result = prune(pool, PruneConfig(keep=0.9, by=("curate_influence_math",), per_domain=True))
            op_s = time.perf_counter() - t
            t = time.perf_counter()
            write_pool(result.pool, tmp / "pruned.parquet", manifest=result.manifest)
            print(f"prune keep 0.9 per domain: op {op_s:.1f} s, write {time.perf_counter() - t:.1f} s, "
                  f"kept {len(result.pool)}, peak RSS {peak_gb():.2f} GB")
        if args.op in ("flip", "both"):
            t = time.perf_counter()
            donor = load_donor(tmp / "donor.parquet")
            dl = time.perf_counter() - t
            t = time.perf_counter()
            result = flip(pool, donor, FlipConfig())
            op_s = time.perf_counter() - t
            t = time.perf_counter()
            write_pool(result.pool, tmp / "flipped.parquet", manifest=result.manifest)
            print(f"flip swap 0.25: donor load {dl:.1f} s, op {op_s:.1f} s, write {time.perf_counter() - t:.1f} s, "
                  f"swapped {len(result.manifest)}, peak RSS {peak_gb():.2f} GB")


if __name__ == "__main__":
    main()
