"""One variant's short SFT run with TRL's `SFTTrainer`, resumable from its own checkpoints.

The pool becomes a conversational prompt/completion dataset (prompt = every message before the
last, completion = the assistant response), so the loss falls on the response tokens only
(`completion_only_loss`) with any chat template. TRL tokenizes `prompt` with the generation prompt
and `prompt + completion` in full and masks the common prefix; examples cut to `max_length` that
keep no completion token are dropped (counted in `TrainResult.rows_dropped`).

`out_dir` holds `checkpoint-<step>/` folders (model, optimizer, scheduler and RNG states, every
`save_steps` optimizer steps and at the end), `log.jsonl` (one line per logged step, appended by
every invocation), `model/` (the final weights, or the LoRA adapter) and `train.json` (the
`TrainResult`). A second call on the same `out_dir` resumes from the last checkpoint, so an
interrupted run, or one extended to more `max_steps`, continues where it stopped.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import DataError, MissingDependencyError
from curate.progress import Progress, Silent
from curate.stages import atomic_write_bytes
from curate.training.config import TrainConfig
from curate.training.loss import completion_loss

if TYPE_CHECKING:
    import datasets

    from curate.data import Pool

PEFT_HINT = "pip install 'peft>=0.11'  (or: pip install 'curate[lora]')"
# peft's PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5 deprecated
# (FutureWarning on every LoRA trainer and every adapter load); nothing for our users to act on.
_PEFT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"


@contextmanager
def _quiet_peft_checkpointing() -> Iterator[None]:
    """Ignore exactly transformers' `is_gradient_checkpointing` deprecation warning, raised from
    inside peft, for the duration of the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_CHECKPOINTING_WARNING, category=FutureWarning)
        yield


@dataclass
class TrainResult:
    """What one SFT run did. Steps are optimizer steps; tokens are non-padding tokens in them.

    tokens_seen: prompt + completion tokens fed to the model over all `steps` (TRL's `num_tokens`,
        carried across resumes). completion_tokens_seen: of those, the tokens that carry loss.
    loss_curve: [[step, mean training loss in nats/token]] for every logged step of every
        invocation. runtime_s: wall seconds of this invocation's `trainer.train`.
    rows: pool rows; rows_dropped: rows left without a completion token at `max_length`;
        rows_at_max_length: rows cut to (or exactly at) `max_length`.
    resumed_from: the checkpoint this invocation resumed from; steps_run: the steps it ran.
    """

    out_dir: str
    model_dir: str | None
    steps: int
    examples_per_step: int
    examples_seen: int
    tokens_seen: int
    completion_tokens_seen: int
    final_loss: float | None
    loss_curve: list[list[float]]
    runtime_s: float
    rows: int
    rows_dropped: int
    rows_at_max_length: int
    lora: bool
    resumed_from: str | None = None
    steps_run: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sft_dataset(pool: Pool) -> datasets.Dataset:
    """The pool as TRL conversational prompt/completion rows (`prompt`, `completion`, `curate_id`)."""
    import datasets

    rows = {"prompt": [], "completion": [], "curate_id": []}
    for example in pool.examples():
        if not example.prompt_messages:
            raise DataError(f"{example.id}: no prompt before the response; SFT needs one")
        rows["prompt"].append(example.prompt_messages)
        rows["completion"].append([{"role": "assistant", "content": example.response}])
        rows["curate_id"].append(example.id)
    if not rows["prompt"]:
        raise DataError(f"{pool.origin or 'pool'}: no rows to train on")
    return datasets.Dataset.from_dict(rows)


@dataclass
class Start:
    """What fine-tunes of one base model on subsets of one pool share, prepared once (`prepare_start`).

    model: the base as loaded (on the CPU, never trained: each run trains a copy). tokenizer: its
    tokenizer. dataset: the whole pool as TRL prepares it (chat template, prompt labels -100, cut
    to `max_length`, rows left without a completion token dropped), with `curate_id`; positions:
    curate_id -> its row. base, dtype, max_length: what it was prepared for (a run with other
    settings is refused).
    """

    base: str
    dtype: str
    max_length: int
    model: Any
    tokenizer: Any
    dataset: Any
    positions: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.positions = {cid: i for i, cid in enumerate(self.dataset["curate_id"])}

    def subset(self, ids):
        """The prepared rows of the pool rows `ids`, in prepared order (rows TRL dropped stay dropped)."""
        return self.dataset.select(sorted(self.positions[i] for i in ids if i in self.positions))


def prepare_start(base_model: str, pool: Pool, config: TrainConfig) -> Start:
    """Load `base_model` and prepare `pool` once, for many `fine_tune(..., start=...)` calls on
    subsets of `pool` (the audit's arms). Of `config`, only device, dtype and max_length matter."""
    import tempfile

    from curate.models import load_model

    use_cpu, dtype = _placement(config)
    model, tokenizer = load_model(base_model, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="curate-start-") as tmp:  # TRL's preparation, on a throwaway trainer
        # placed as the runs will be: accelerate's process state is set once per process
        dataset = _trainer(model, tokenizer, sft_dataset(pool), replace(config, lora_r=0, gradient_checkpointing=False),
                           Path(tmp), use_cpu=use_cpu, bf16=dtype == "bfloat16" and not use_cpu,
                           peft_config=None).train_dataset
    # TRL patched the model's forward (its fused LM head) with a closure over this instance: a
    # copy would keep calling it and run this model, not itself. Each run's trainer patches its copy.
    vars(model).pop("forward", None)
    model.to("cpu")  # the trainer may have moved it to the GPU; each run copies it there itself
    return Start(base_model, dtype, config.max_length, model, tokenizer, dataset)


def fine_tune(
    base_model: str, pool: Pool, config: TrainConfig, out_dir: Path, progress: Progress | None = None, *,
    start: Start | None = None, save_model: bool = True,
):
    """Fine-tune `base_model` on `pool` for `config.max_steps` optimizer steps; see the module doc.

    Resumes from the last `checkpoint-*` in `out_dir` when there is one. `start` (`prepare_start`
    on a pool containing this one) skips loading the model and tokenising the rows. With
    `save_model` False the final weights are not written to `out_dir/model` (checkpoints still
    are). Returns `(TrainResult, the trained model)`; the result is also `out_dir/train.json`.
    """
    from transformers.trainer_utils import get_last_checkpoint

    progress = progress or Silent()
    out_dir = Path(out_dir)
    trainer = build_trainer(base_model, pool, config, out_dir, start=start)
    last = get_last_checkpoint(str(out_dir)) if any(out_dir.glob("checkpoint-*")) else None
    first = _seed_counters(trainer, last)
    logger = _log_callback(out_dir / "log.jsonl")
    trainer.add_callback(logger)

    t0 = time.perf_counter()
    with progress.task(f"train {out_dir.name}", total=max(config.max_steps - first, 0), unit="step") as advance:
        logger.advance = advance
        trainer.train(resume_from_checkpoint=last)
    runtime = time.perf_counter() - t0

    model_dir = out_dir / "model" if save_model else None
    if model_dir is not None:
        trainer.save_model(str(model_dir))
    result = _result(trainer, config, out_dir, model_dir, len(pool), runtime, last, logger.steps)
    if trainer.is_world_process_zero():
        atomic_write_bytes(out_dir / "train.json", json.dumps(result.to_dict(), indent=2).encode())
    return result, trainer.model


def train_variant(
    base_model: str, pool: Pool, config: TrainConfig, out_dir: Path, progress: Progress | None = None
) -> TrainResult:
    """`fine_tune` with the final weights saved to `out_dir/model`; its `TrainResult`."""
    return fine_tune(base_model, pool, config, out_dir, progress)[0]


def build_trainer(base_model: str, pool: Pool, config: TrainConfig, out_dir: Path, *, start: Start | None = None):
    """The TRL `SFTTrainer` `fine_tune` runs (its dataset already tokenized and masked: prompt
    labels are -100), with the base model loaded by `curate.models.load_model`, or copied from
    `start` with `start`'s prepared rows of `pool`."""
    import copy

    from transformers import set_seed

    from curate.models import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_cpu, dtype = _placement(config)
    peft_config = _lora_config(config) if config.lora else None  # fails early without peft
    if start is None:
        model, tokenizer = load_model(base_model, dtype=dtype)
        dataset = sft_dataset(pool)
    elif (start.base, start.dtype, start.max_length) != (base_model, dtype, config.max_length):
        raise ValueError(f"start prepared for (base, dtype, max_length) = {(start.base, start.dtype, start.max_length)},"
                         f" not {(base_model, dtype, config.max_length)}")
    else:
        model, tokenizer = copy.deepcopy(start.model), start.tokenizer
        dataset = start.subset(pool.dataset["curate_id"])
    set_seed(config.seed)  # after loading, before the trainer: LoRA's initialisation draws from it
    return _trainer(model, tokenizer, dataset, config, out_dir, use_cpu=use_cpu,
                    bf16=dtype == "bfloat16" and not use_cpu, peft_config=peft_config, prepared=start is not None)


def _placement(config: TrainConfig) -> tuple[bool, str]:
    """(train on the CPU, weight dtype) of `config`: dtype "auto" is float32 on CPU, bfloat16 on a GPU."""
    import torch

    use_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    return use_cpu, config.dtype if config.dtype != "auto" else ("float32" if use_cpu else "bfloat16")


def load_trained(model_dir: Path, base_model: str, *, device: str = "cpu", dtype: str | None = None):
    """`(model, tokenizer)` of a finished run: full weights, or the base with its LoRA adapter merged."""
    from curate.models import load_model, load_tokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").is_file():
        return load_model(str(model_dir), device=device, dtype=dtype)
    try:
        from peft import PeftModel
    except ImportError as e:
        raise MissingDependencyError(f"loading a LoRA adapter needs peft; install it: {PEFT_HINT}") from e
    model, _ = load_model(base_model, device=device, dtype=dtype)
    with _quiet_peft_checkpointing():
        model = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    model.eval()
    return model, load_tokenizer(str(model_dir))


def _lora_config(config: TrainConfig):
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise MissingDependencyError(f"LoRA (lora_r > 0) needs peft; install it: {PEFT_HINT}") from e
    targets = config.lora_targets
    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r, lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type="CAUSAL_LM",
    )


def _trainer(model, tokenizer, dataset, config: TrainConfig, out_dir: Path, *, use_cpu: bool, bf16: bool,
             peft_config, prepared: bool = False):
    from transformers import PrinterCallback, Trainer
    from trl import SFTConfig, SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer that also counts the tokens carrying loss (labels != -100) over training."""

        completion_tokens = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.model.training and "labels" in inputs:
                n = self.accelerator.gather_for_metrics((inputs["labels"] != -100).sum()).sum().item()
                self.completion_tokens += int(n)
                self._metrics["train"]["completion_tokens"] = [self.completion_tokens]
            if not use_cpu:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # On CPU, TRL's fused LM head (tiled log-probs with entropy and accuracy metrics: a GPU
            # memory saver) costs ~4x a plain step; the same mean NLL over completion tokens (labels
            # -100 elsewhere) is computed with the head at the labelled positions only, and only
            # TRL's token counter is kept.
            inputs["use_cache"] = False  # as TRL's path: no KV cache in a training forward
            if self.model.training and "attention_mask" in inputs:
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(inputs["attention_mask"].sum())
                                                .sum().item())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            if return_outputs or "labels" not in inputs:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            per_token = num_items_in_batch if self.model_accepts_loss_kwargs else None  # as Trainer.compute_loss
            loss = completion_loss(model, inputs, per_token,
                                   head=self.accelerator.unwrap_model(model).get_output_embeddings())
            if self.args.average_tokens_across_devices and per_token is not None:
                loss = loss * self.accelerator.num_processes  # each process divided by the global count
            return loss

    args = SFTConfig(
        output_dir=str(out_dir), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_steps, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, max_length=config.max_length, completion_only_loss=True,
        seed=config.seed, data_seed=config.seed, use_cpu=use_cpu, bf16=bf16, fp16=False,
        logging_steps=1, logging_first_step=True,
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, log_level="warning",
        dataset_kwargs={"skip_prepare_dataset": True} if prepared else None,
        # transformers 5 renamed gradient_checkpointing (which TRL defaults to True) to activation_checkpointing
        **{"activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__
           else "gradient_checkpointing": config.gradient_checkpointing},
    )
    with _quiet_peft_checkpointing():  # SFTTrainer wraps the model with peft's get_peft_model
        trainer = CountingSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                     peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # the library never prints; log.jsonl has every step
    return trainer


def _seed_counters(trainer, checkpoint: str | None) -> int:
    """Carry the token counters over a resume (TRL restarts `num_tokens` at 0); the start step."""
    if checkpoint is None:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    logged = [h for h in state.get("log_history", []) if "num_tokens" in h]
    if logged:
        trainer._total_train_tokens = int(logged[-1]["num_tokens"])
        trainer.completion_tokens = int(logged[-1].get("completion_tokens", 0))
    return int(state.get("global_step", 0))


def _log_callback(path: Path):
    """A callback appending every log of the main process to `path` (JSON lines) and advancing the
    progress bar by one per optimizer step; `.steps` lists the steps whose loss it saw."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.advance = lambda n=1: None

        def on_step_end(self, args, state, control, **kwargs):
            self.advance(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                self.steps.append(state.global_step)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return LogCallback()


def _result(trainer, config: TrainConfig, out_dir: Path, model_dir: Path | None, rows: int, runtime: float,
            resumed_from: str | None, steps_run: list[int]) -> TrainResult:
    history = trainer.state.log_history
    curve = [[h["step"], float(h["loss"])] for h in history if "loss" in h and "step" in h]
    counted = [h for h in history if "num_tokens" in h]
    prepared = trainer.train_dataset
    lengths = [len(ids) for ids in prepared["input_ids"]]
    per_step = config.batch_size * config.grad_accum * trainer.args.world_size
    steps = int(trainer.state.global_step)
    return TrainResult(
        out_dir=str(out_dir), model_dir=str(model_dir) if model_dir else None, steps=steps, examples_per_step=per_step,
        examples_seen=steps * per_step,
        tokens_seen=int(counted[-1]["num_tokens"]) if counted else 0,
        completion_tokens_seen=int(counted[-1].get("completion_tokens", 0)) if counted else 0,
        final_loss=curve[-1][1] if curve else None, loss_curve=curve, runtime_s=round(runtime, 3),
        rows=rows, rows_dropped=rows - len(prepared),
        rows_at_max_length=sum(n >= config.max_length for n in lengths), lora=config.lora,
        resumed_from=resumed_from, steps_run=steps_run,
    )
