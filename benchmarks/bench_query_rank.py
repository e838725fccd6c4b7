# Run: .venv/bin/python benchmarks/bench_query_rank.py [--pool 32 --queries 16 --length 384 --ranks 1,4,16,64]
"""How far low-rank query directions (`curate score --query-rank R`) move the scores, and what they save.

SmolLM2-135M-Instruct (the packaged model), the MLPs of its last 8 blocks tracked, float32, one
thread; real text: the first --pool rows of the bundled sample pool (math and code traces, cut at
--length tokens) scored against the bundled math and code query sets (--queries each, split in two
halves as `curate score` does, so 3 functions per set). Factors are fitted once; the exact
directions are then truncated to each rank R and the pool is scored again. Printed per rank: the
Spearman and Pearson correlation of every query function's scores with the exact ones (the worst
over the 6 functions), the top-10% overlap, the directions' memory, and the scoring pass's time
against the exact scoring pass measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--ranks", default="1,4,16,64")
    args = parser.parse_args()

    import polars as pl
    import torch

    from curate.data import load_pool
    from curate.demo import QUERY_SETS, SAMPLE
    from curate.influence.batches import make_batches
    from curate.influence.capture import select_modules
    from curate.influence.directions import concat, nbytes, truncate
    from curate.influence.factors import ModuleFactors, eigenbases, fit_covariances, fit_lambdas
    from curate.influence.fitting import split_assignment
    from curate.influence.scoring import query_gradient_sums, score_batches, split_functions
    from curate.influence.tokens import tokenize_all
    from curate.models import load_model

    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m", dtype=torch.float32, device="cpu")
    model.set_attn_implementation("sdpa")
    modules = select_modules(model, r"layers\.(2[2-9])\.mlp\.")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pool = list(tokenize_all(tok, list(load_pool(SAMPLE / "pool.jsonl").examples())[: args.pool], args.length))
    batches = make_batches(pool, 4 * args.length, pad)
    t0 = time.perf_counter()
    covs = fit_covariances(model, modules, batches, sample_seed=0)
    bases = {n: eigenbases(c) for n, c in covs.items()}
    lams = fit_lambdas(model, modules, batches, bases, sample_seed=0)
    factors = {n: ModuleFactors(bases[n][0], bases[n][1], lams[n][0] / lams[n][1]) for n in modules}
    print(f"# {len(pool)} pool rows ({sum(len(z.input_ids) for z in pool):,} tokens), {len(modules)} tracked modules; "
          f"fit {time.perf_counter() - t0:.0f} s", flush=True)
    exact: dict = {}
    for path in QUERY_SETS.values():
        items = list(tokenize_all(tok, list(load_pool(path).examples())[: args.queries], args.length))
        split_of = split_assignment(len(items), 2, 0)
        sums = query_gradient_sums(model, modules, make_batches(items, 4 * args.length, pad), split_of, 2,
                                   per_token=False)
        sizes = [split_of.count(k) for k in range(2)]
        for n, f in factors.items():
            v = f.precondition(split_functions(sums[n], sizes), f.damping("auto")).to(torch.float32)
            exact[n] = v if n not in exact else concat(exact[n], v)

    def timed(directions) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        scores = score_batches(model, modules, batches, directions, len(pool), per_token=False)
        return scores, time.perf_counter() - start

    reference, t_exact = timed(exact)
    mem_exact = sum(nbytes(v) for v in exact.values())
    n_top = max(1, len(pool) // 10)
    print(f"{'rank':>6} {'min Spearman':>13} {'min Pearson':>12} {'top-10% overlap':>16} "
          f"{'directions':>11} {'scoring time':>13}")
    print(f"{'exact':>6} {1:>13.4f} {1:>12.4f} {1:>16.2f} {mem_exact / 2**20:>9.1f}MB {1:>12.2f}x   ({t_exact:.1f} s)")
    for rank in (int(r) for r in args.ranks.split(",")):
        low = {n: truncate(v.double(), rank).to(torch.float32) for n, v in exact.items()}
        scores, t = timed(low)
        frame = pl.DataFrame({f"e{f}": reference[:, f].numpy() for f in range(reference.shape[1])}
                             | {f"r{f}": scores[:, f].numpy() for f in range(scores.shape[1])})
        spearman = min(frame.select(pl.corr(f"e{f}", f"r{f}", method="spearman")).item() for f in range(scores.shape[1]))
        pearson = min(frame.select(pl.corr(f"e{f}", f"r{f}")).item() for f in range(scores.shape[1]))
        overlap = min(len(set(reference[:, f].topk(n_top).indices.tolist()) & set(scores[:, f].topk(n_top).indices.tolist()))
                      / n_top for f in range(scores.shape[1]))
        mem = sum(nbytes(v) for v in low.values())
        print(f"{rank:>6} {spearman:>13.4f} {pearson:>12.4f} {overlap:>16.2f} {mem / 2**20:>9.1f}MB {t / t_exact:>12.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
