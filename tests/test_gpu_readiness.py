"""What of the GPU paths runs on CPU: scores in bfloat16 against float32 (factors and
preconditioning stay float64 as designed) and TRL steps in bfloat16. The GPU itself is checked by
scripts/gpu_check.sh (see tests/test_gpu_check.py for its dry run)."""

from __future__ import annotations

import math
from pathlib import Path

from curate.data import load_pool

SAMPLE_POOL = Path(__file__).resolve().parents[1] / "curate" / "resources" / "sample" / "pool.jsonl"


def _examples(n: int, offset: int):
    from curate.data.example import Example

    return [Example(f"e{offset + i}", ({"role": "user", "content": f"What is {i} + {offset + 3 * i}?"},
                                       {"role": "assistant", "content": f"{i} + {offset + 3 * i} = {offset + 4 * i}. "
                                                                        f"The answer is {offset + 4 * i}."}))
            for i in range(n)]


def _scores(tiny_model_dir, tmp_path, dtype: str):
    import polars as pl

    from curate.influence.config import ScoreConfig
    from curate.influence.engine import score_pool

    config = ScoreConfig(model=str(tiny_model_dir), dtype=dtype, fisher="empirical", max_length=128,
                         fit_max_length=128, query_splits=0)
    result = score_pool(_examples(24, 0), {"q": _examples(4, 100)}, config, tmp_path / dtype)
    return result.table.sort("curate_id")["curate_influence_q"], pl


def test_bfloat16_scores_rank_like_float32(tiny_model_dir, tmp_path):
    full, pl = _scores(tiny_model_dir, tmp_path, "float32")
    half, _ = _scores(tiny_model_dir, tmp_path, "bfloat16")
    frame = pl.DataFrame({"full": full, "half": half})
    spearman = frame.select(pl.corr("full", "half", method="spearman")).item()
    relative = ((frame["half"] - frame["full"]).abs().max()) / frame["full"].abs().max()
    assert spearman > 0.95, spearman
    assert relative < 0.1, relative  # bfloat16 has ~3 significant digits; the factors stay float64


def test_trl_steps_in_bfloat16_on_cpu(tiny_model_dir, tmp_path):
    import torch

    from curate.training import TrainConfig, train_variant

    pool = load_pool(str(SAMPLE_POOL))
    pool = pool.with_dataset(pool.dataset.select(range(4)))
    result = train_variant(str(tiny_model_dir), pool, TrainConfig(max_steps=2, batch_size=2, dtype="bfloat16",
                                                                  device="cpu", max_length=256, save_steps=2,
                                                                  gradient_checkpointing=False), tmp_path / "run")
    assert result.steps == 2 and all(math.isfinite(loss) for _, loss in result.loss_curve)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
