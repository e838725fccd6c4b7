# Run: .venv/bin/python benchmarks/bench_ops.py [--rows 114000] [--trace-kb 20]
"""Time `prune` and `flip` on an OpenThoughts-sized synthetic pool (Bespoke-Stratos shape).

The pool and a donor of the same size are generated once into a temp dir as parquet. Reported per
op: load (data layer), the op itself, write_pool, and peak RSS (ru_maxrss) of the process so far.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import generate  # noqa: E402


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
        generate(tmp / "pool.parquet", args.rows, args.trace_kb, 0, donor=False)
        if args.op != "prune":
            generate(tmp / "donor.parquet", args.rows, args.trace_kb, 1, donor=True)
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
