"""One `score_pool` run on a tiny float64 Llama, as a script: `python tests/distributed_job.py WORK FISHER`
alone, or under `python -m torch.distributed.run --nproc-per-node 2 ...` (tests/test_influence_distributed.py).
Rank 0 writes WORK/scores.parquet."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from curate.data.example import Example
from curate.influence.config import ScoreConfig
from curate.influence.engine import score_pool

TOKENIZER = Path(__file__).parents[1] / "curate" / "resources" / "smollm2_tokenizer"


def build(fisher: str):
    """(model, tokenizer, pool, queries, config): a tiny float64 Llama and 11 pool rows (no even split)."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)).double().eval()

    def ex(i: int, answer: str) -> Example:
        return Example(f"p:{i}", ({"role": "user", "content": f"Add {i} and {i}."}, {"role": "assistant", "content": answer}))

    pool = [ex(i, f"{i} plus {i} is {2 * i}." + " Check." * (i % 4)) for i in range(11)]
    queries = {"q": [ex(20 + i, f"It is {40 + 2 * i}.") for i in range(5)]}
    config = ScoreConfig(model="tiny", dtype="float64", fisher=fisher, fit_on=9, batch_tokens=96, chunk_size=3,
                         query_splits=2, normalize="both")
    return model, tok, pool, queries, config


def main(work: Path, fisher: str) -> None:
    torch.set_num_threads(1)
    model, tok, pool, queries, config = build(fisher)
    result = score_pool(pool, queries, config, work, model=model, tokenizer=tok)
    if int(os.environ.get("RANK", "0")) == 0:
        result.table.write_parquet(work / "scores.parquet")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
