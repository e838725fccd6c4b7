"""What a counterfactual audit costs: `curate.audit` end to end against plain PyTorch fine-tunes.

The setup: a 2-layer tiny Llama (SmolLM2 tokenizer, hidden `--hidden`) fine-tuned `--steps` AdamW
steps of `--batch-size` rows of a 240-row GSM8K pool (`benchmarks/data`, random influence and NLL
columns), per arm: full, top, bottom, random, length, perplexity (6 arms x `--seeds` seeds), each
fine-tune then evaluated on the 64 bundled GSM8K query rows. The peer is the fine-tune a user
would write by hand (`bench_finetune._plain`: model loading, TRL's collation, the model's own
loss from full logits, AdamW with the same schedule and clipping), timed `--plain` times in the
same process; the ratio is (audit seconds / fine-tunes) / plain-loop seconds, where the audit's
share also pays for its evaluation, checkpoints and bookkeeping.

    python benchmarks/bench_audit.py                       # 3 seeds, 18 fine-tunes
    python benchmarks/bench_audit.py --seeds 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
POOL = ROOT / "benchmarks" / "data" / "gsm8k_train_240.jsonl"
MATH = ROOT / "curate" / "resources" / "sample" / "queries" / "math.jsonl"


def main() -> None:
    from benchmarks.bench_finetune import add_setup_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(parser)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plain", type=int, default=1, help="plain-loop fine-tunes timed (median taken)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (the machine's cores)")
    args = parser.parse_args()
    os.environ["CURATE_THREADS"] = str(args.threads)  # curate's loader would otherwise pick the free cores

    import numpy as np
    import torch

    from benchmarks.bench_finetune import _plain, save_tiny_base
    from curate.audit.counterfactual import AuditConfig, audit
    from curate.cli import quiet_third_party_progress
    from curate.data import load_pool
    from curate.training import TrainConfig

    torch.set_num_threads(args.threads)
    quiet_third_party_progress()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    save_tiny_base(work / "base", args.hidden)
    pool = load_pool(POOL, source="gsm8k")
    rng = np.random.default_rng(0)
    dataset = pool.dataset.add_column("curate_influence_math", rng.normal(size=len(pool)).tolist())
    pool = pool.with_dataset(dataset.add_column("curate_nll", rng.normal(size=len(pool)).tolist()))
    queries = {"math": list(load_pool(MATH, source="math").examples())}
    train = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, learning_rate=1e-3, max_length=512,
                        device="cpu", gradient_checkpointing=False, save_steps=50)
    try:
        plain = []
        for _ in range(args.plain):
            plain.append(_plain(str(work / "base"), pool, train))
            print(f"plain loop: {plain[-1]:.1f} s", flush=True)
        config = AuditConfig(base=str(work / "base"), seeds=args.seeds, baselines=("random", "length", "perplexity"),
                             train=train)
        start = time.perf_counter()
        result = audit(pool, queries=queries, out_dir=work / "audit", config=config)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_run = seconds / result.fine_tunes
    base = statistics.median(plain)
    print(f"\n{len(pool)} rows, {args.steps} steps x {args.batch_size}, hidden {args.hidden}, {args.threads} thread(s)")
    print(f"audit: {result.fine_tunes} fine-tunes + evaluations in {seconds:.1f} s ({seconds / 60:.1f} min), "
          f"{per_run:.1f} s each")
    print(f"plain loop: {base:.1f} s per fine-tune (median of {len(plain)})")
    print(f"audit per fine-tune / plain loop = {per_run / base:.2f}")


if __name__ == "__main__":
    main()
