"""What `curate.training` (TRL's SFTTrainer) costs per fine-tune against a plain PyTorch loop.

The audit's setup: a 2-layer tiny Llama (SmolLM2 tokenizer, hidden `--hidden`), `--steps` AdamW
steps of `--batch-size` short GSM8K rows (the bundled query file, cycled). The plain loop runs
the same steps on the same collated batches (TRL's own collator, prompt tokens masked), with the
same optimizer, learning-rate schedule and clipping, from model loading to the last step; the
trainer run is `train_variant` end to end (model loading, dataset preparation, the steps, the
final save). Both in this process, one thread, alternated `--repeats` times; the ratio is
trainer / plain per pair.

    python benchmarks/bench_finetune.py                 # after the CPU loss change
    python benchmarks/bench_finetune.py --trl-loss      # TRL's fused LM head, as before it
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "curate" / "resources" / "sample" / "queries" / "math.jsonl"
TOKENIZER = ROOT / "curate" / "resources" / "smollm2_tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trl-loss", action="store_true", help="keep TRL's fused LM head on CPU (the old path)")
    args = parser.parse_args()
    os.environ["CURATE_THREADS"] = "1"  # curate's model loader would otherwise take every free core

    import torch

    from curate.cli import quiet_third_party_progress
    from curate.data import load_pool
    from curate.training import TrainConfig

    torch.set_num_threads(1)
    quiet_third_party_progress()
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    save_tiny_base(work / "base", args.hidden)
    pool = load_pool(MATH, source="gsm8k")
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, learning_rate=1e-3, max_length=512,
                         device="cpu", gradient_checkpointing=False, save_steps=args.steps)
    if args.trl_loss:
        _keep_trl_loss()
    plain, trainer = [], []
    try:
        for r in range(args.repeats):
            plain.append(_plain(str(work / "base"), pool, config))
            trainer.append(_trainer(str(work / "base"), pool, config, work / f"run{r}"))
            print(f"pair {r + 1}: plain loop {plain[-1]:.1f} s, train_variant {trainer[-1]:.1f} s, "
                  f"ratio {trainer[-1] / plain[-1]:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [t / p for t, p in zip(trainer, plain, strict=True)]
    print(f"\n{args.steps} steps x {args.batch_size} GSM8K rows, hidden {args.hidden}, "
          f"{'TRL fused LM head' if args.trl_loss else 'curate CPU loss'}: train_variant / plain loop = "
          f"{statistics.median(ratios):.2f} (median of {len(ratios)}; {min(ratios):.2f}-{max(ratios):.2f})")


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    """The fine-tune's shape: --hidden (model width), --steps (optimizer steps), --batch-size (rows per step)."""
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)


def save_tiny_base(path: Path, hidden: int) -> None:
    """The audit's base model at `path`: a 2-layer Llama of width `hidden` (seed 0) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=2048)).save_pretrained(path)
    tok.save_pretrained(path)


def _plain(base: str, pool, config) -> float:
    """Seconds for the same fine-tune as a plain loop: load, collate with TRL's collator, step."""
    import torch
    from transformers import get_scheduler, set_seed

    from curate.training import build_trainer

    start = time.perf_counter()
    set_seed(config.seed)
    holder = build_trainer(base, pool, config, Path(tempfile.mkdtemp(prefix="plain-")))  # its dataset and collator
    model = holder.model
    loader = torch.utils.data.DataLoader(holder.train_dataset, batch_size=config.batch_size, shuffle=True,
                                         collate_fn=holder.data_collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                             num_training_steps=config.max_steps)
    model.train()
    step = 0
    while step < config.max_steps:
        for batch in loader:
            loss = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step == config.max_steps:
                break
    shutil.rmtree(holder.args.output_dir, ignore_errors=True)
    return time.perf_counter() - start


def _trainer(base: str, pool, config, out: Path) -> float:
    from curate.training import train_variant

    start = time.perf_counter()
    train_variant(base, pool, config, out)
    return time.perf_counter() - start


def _keep_trl_loss() -> None:
    """Make the CPU trainer take TRL's fused LM head, as it did before (for the comparison)."""
    import curate.training.sft as sft

    original = sft._trainer

    def on_gpu_path(*args, **kwargs):  # accelerate still runs on the CPU where there is no GPU
        return original(*args, **{**kwargs, "use_cpu": False})

    sft._trainer = on_gpu_path


if __name__ == "__main__":
    main()
