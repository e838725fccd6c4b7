"""Short supervised fine-tuning runs (TRL `SFTTrainer`) for validating curated variants.

    result = train_variant("smollm2-135m", pool, TrainConfig(max_steps=100), Path("run/flip"))
    model, tokenizer = load_trained(Path(result.model_dir), "smollm2-135m")

Importing this package is cheap: torch, transformers and trl load on first use.
"""

from curate.training.config import TrainConfig
from curate.training.sft import (
    Start,
    TrainResult,
    build_trainer,
    fine_tune,
    load_trained,
    prepare_start,
    sft_dataset,
    train_variant,
)

__all__ = ["Start", "TrainConfig", "TrainResult", "build_trainer", "fine_tune", "load_trained", "prepare_start",
           "sft_dataset", "train_variant"]
