"""`TrainConfig`: the settings of one short SFT run, identical for every variant of a validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from curate.settings import ConfigError, Problem

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TrainConfig:
    """Settings of `curate.training.train_variant` (TRL `SFTTrainer`).

    Every variant of a validation run is trained with the same config, so the variants see the same
    number of optimizer steps and examples per step; only their data (and so their tokens) differ.

    max_steps: optimizer steps (the run repeats the pool as needed; epochs are not used).
    batch_size: examples per device per forward pass (`per_device_train_batch_size`).
    grad_accum: forward passes per optimizer step; examples per step = batch_size x grad_accum x
        number of processes.
    learning_rate: peak AdamW learning rate (1e-5 suits a full fine-tune, ~1e-4 LoRA).
    lr_scheduler: transformers scheduler name; warmup: warm-up steps, or a fraction of max_steps
        when < 1.
    weight_decay: AdamW decoupled weight decay; max_grad_norm: gradient clipping (0 = none).
    max_length: tokens per example (prompt + completion); longer ones are cut at the end and an
        example left with no completion token is dropped by TRL. Set explicitly because TRL's
        default of 1024 silently cuts long reasoning traces.
    seed: seeds the model's dropout, the data order and LoRA's initialisation.
    lora_r: LoRA rank; 0 = full fine-tune. lora_alpha: LoRA scale numerator (None = 2 x r);
        lora_dropout: dropout on LoRA inputs; lora_targets: modules to adapt ("all-linear" or a
        comma-separated list of module names).
    save_steps: optimizer steps between checkpoints (each resumable); save_total_limit: checkpoints
        kept (oldest deleted; None = all).
    gradient_checkpointing: recompute activations in the backward pass (less memory, ~30% slower).
    dtype: "auto" = bfloat16 weights and autocast on a GPU, float32 on CPU.
    device: "auto" (cuda when available), "cpu" or "cuda".
    """

    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine"
    warmup: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 4096
    seed: int = 0
    lora_r: int = 0
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    save_steps: int = 50
    save_total_limit: int | None = 2
    gradient_checkpointing: bool = True
    dtype: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        errors = []
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "save_steps"):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            errors.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_scheduler not in SCHEDULERS:
            errors.append(f"lr_scheduler must be one of {SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.warmup < 0 or (self.warmup >= 1 and self.warmup != int(self.warmup)):
            errors.append(f"warmup must be a fraction in [0, 1) or a whole number of steps, got {self.warmup}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            errors.append("weight_decay and max_grad_norm must be >= 0")
        if self.lora_r < 0:
            errors.append(f"lora_r must be >= 0 (0 = full fine-tune), got {self.lora_r}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            errors.append(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            errors.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            errors.append(f"save_total_limit must be >= 1 or None, got {self.save_total_limit}")
        if self.dtype not in DTYPES:
            errors.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            errors.append(f"device must be auto, cpu or cuda[:i], got {self.device!r}")
        if errors:
            raise ConfigError(type(self), [Problem(e) for e in errors])

    @property
    def lora(self) -> bool:
        return self.lora_r > 0

    @property
    def warmup_steps(self) -> int:
        """`warmup` in optimizer steps (a fraction is of `max_steps`, rounded up). Passed to TRL as a
        whole number: transformers before 5 reads a fractional `warmup_steps` as a step count."""
        return int(self.warmup) if self.warmup >= 1 else math.ceil(self.warmup * self.max_steps)

    def to_dict(self) -> dict:
        """Plain JSON-ready settings (for manifests and results.json)."""
        return asdict(self)
