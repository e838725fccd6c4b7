"""`score_pool` runs on a tiny float64 Llama, as a script: `python tests/distributed_job.py WORK FISHER...`
alone, or under `python -m torch.distributed.run --nproc-per-node 2 ...` (tests/test_influence_distributed.py).
Each Fisher setting works in WORK/FISHER; rank 0 writes WORK/FISHER/scores.parquet."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from curate.influence.config import ScoreConfig
from curate.influence.engine import score_pool
from tests.tiny import add_example, tiny_chat_llama


def build(fisher: str):
    """(model, tokenizer, pool, queries, config): a tiny float64 Llama and 11 pool rows (no even split)."""
    model, tok = tiny_chat_llama()
    ex = add_example

    pool = [ex(i, f"{i} plus {i} is {2 * i}." + " Check." * (i % 4)) for i in range(11)]
    queries = {"q": [ex(20 + i, f"It is {40 + 2 * i}.") for i in range(5)]}
    config = ScoreConfig(model="tiny", dtype="float64", fisher=fisher, fit_on=9, batch_tokens=96, chunk_size=3,
                         query_splits=2, normalize="both")
    return model, tok, pool, queries, config


def main(work: Path, fishers: list[str]) -> None:
    torch.set_num_threads(1)
    for fisher in fishers:  # one launch for every setting: each process start costs seconds of imports
        model, tok, pool, queries, config = build(fisher)
        result = score_pool(pool, queries, config, work / fisher, model=model, tokenizer=tok)
        if int(os.environ.get("RANK", "0")) == 0:
            result.table.write_parquet(work / fisher / "scores.parquet")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
