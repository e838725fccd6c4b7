"""`curate validate`: train a base model on each variant (TRL SFT), evaluate each, compare."""

from __future__ import annotations

import click

from curate.cli.query import engine_options, resolve_engine

MULTI_GPU = (
    "Several GPUs (FSDP; evaluation runs on the main process):\n\n"
    "\b\n  accelerate launch --config_file fsdp.yaml -m curate validate --model M a=a.jsonl b=b.jsonl -o RUN_DIR\n\n"
    "Evaluation through vLLM (started and stopped by curate; LoRA variants served as modules):\n\n"
    "\b\n  curate validate --model M a=a.jsonl b=b.jsonl --lora-r 16 --engine vllm -o RUN_DIR"
)


@click.command(epilog=MULTI_GPU)
@click.argument("variants", nargs=-1, required=True, metavar="NAME=DATASET...")
@click.option("--model", "base_model", required=True, help="Base model: local folder, Hub id or alias (smollm2-135m).")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: <variant>/ (checkpoints, logs, generations), results.json, results.png.")
@click.option("--eval", "evals", default="gsm8k,mbpp", show_default=True, metavar="BENCH[,BENCH...]",
              help="Benchmarks: gsm8k, math500, humaneval, mbpp (packaged slices), or files / Hub ids.")
@click.option("--max-steps", type=int, default=100, show_default=True, help="Optimizer steps per variant.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per device per forward pass.")
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="Forward passes per optimizer step (examples per step = batch size x this x GPUs).")
@click.option("--lr", "learning_rate", type=float, default=1e-5, show_default=True, help="Peak learning rate.")
@click.option("--max-length", type=int, default=4096, show_default=True,
              help="Tokens per training example (prompt + response); longer ones are cut.")
@click.option("--lora-r", type=int, default=0, show_default=True, help="LoRA rank (needs peft); 0 = full fine-tune.")
@click.option("--lora-alpha", type=int, default=None, help="LoRA alpha [default: 2 x rank].")
@click.option("--save-steps", type=int, default=50, show_default=True, help="Optimizer steps between checkpoints.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=True, show_default=True,
              help="Recompute activations in the backward pass (less memory, slower).")
@click.option("--limit", type=int, default=None, help="Problems per benchmark (a seeded subset) [default: all].")
@click.option("--samples", type=int, default=None, help="Answers per problem (avg@k; unbiased pass@k reported too) "
              "[default: the benchmark's, e.g. 4; 1 when greedy].")
@click.option("--temperature", type=float, default=None, help="Sampling temperature; 0 = greedy [default: the "
              "benchmark's, 0.6].")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling mass [default: the benchmark's, 0.95].")
@click.option("--max-new-tokens", type=int, default=None, help="Generated tokens per answer [default: the "
              "benchmark's long-CoT budget, e.g. 32768 for MATH500, 8192 for GSM8K].")
@click.option("--eval-batch-size", type=int, default=8, show_default=True, help="Prompts per generation batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds training, the benchmark subset and sampling.")
@click.option("--no-base-eval", is_flag=True, help="Do not evaluate the untrained base model.")
@click.option("--allow-contamination", is_flag=True,
              help="Run even if an evaluated problem appears in a variant (warned, recorded in results.json).")
@click.option("--overwrite", is_flag=True, help="Redo variant folders made from other inputs instead of refusing.")
@engine_options
def validate(variants, base_model, run_dir, evals, max_steps, batch_size, grad_accum, learning_rate, max_length,
             lora_r, lora_alpha, save_steps, gradient_checkpointing, limit, samples, temperature, top_p, max_new_tokens,
             eval_batch_size, seed, no_base_eval, allow_contamination, overwrite, engine, base_url, api_key_env,
             concurrency) -> None:
    """Fine-tune BASE on each NAME=DATASET variant with the same seed, steps and examples per step,
    evaluate every model on the same problems, and compare each variant with the first (the
    baseline). A rerun on the same RUN_DIR skips finished work and resumes interrupted training."""
    from pathlib import Path

    from curate.cli import quiet_third_party_progress
    from curate.errors import UsageError
    from curate.models import check_model
    from curate.progress import RichProgress
    from curate.training import TrainConfig
    from curate.validate import ValidateConfig
    from curate.validate import validate as run

    named = {}
    for item in variants:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"variant {item!r} must be NAME=DATASET")
        if name in named:
            raise UsageError(f"variant name {name!r} given twice")
        named[name] = path
    train = TrainConfig(
        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, learning_rate=learning_rate,
        max_length=max_length, lora_r=lora_r, lora_alpha=lora_alpha, save_steps=save_steps,
        gradient_checkpointing=gradient_checkpointing, seed=seed)
    config = ValidateConfig(
        base_model=base_model, variants=named, evals=tuple(e.strip() for e in evals.split(",") if e.strip()),
        train=train, limit=limit, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        eval_batch_size=eval_batch_size, seed=seed, base_eval=not no_base_eval,
        allow_contamination=allow_contamination, overwrite=overwrite, engine=resolve_engine(engine, base_url),
        base_url=base_url, api_key_env=api_key_env, concurrency=concurrency)
    check_model(base_model)  # a mistyped model fails before any data is loaded
    quiet_third_party_progress()
    progress = RichProgress()
    results = run(config, Path(run_dir), progress)
    if results:
        render(results, progress.console)
        click.echo(str(Path(run_dir) / "results.json"))


def _pass_at_k(row: dict) -> str:
    """"pass@4 37.5" for the largest k measured; "-" with one sample (pass@1 is the score)."""
    ks = {int(k): v for k, v in (row.get("pass@k") or {}).items()}
    k = max(ks, default=1)
    return "-" if k == 1 else f"pass@{k} {100 * ks[k]:.1f}"


def render(results: dict, console) -> None:
    """Training and comparison tables (rich, stderr)."""
    from rich.table import Table

    train = Table(title="training", title_justify="left")
    for column in ("variant", "steps", "examples", "tokens seen", "loss first → last", "runtime s"):
        train.add_column(column, justify="left" if column == "variant" else "right")
    for name, variant in results["variants"].items():
        t = variant["train"]
        curve = t["loss_curve"]
        loss = f"{curve[0][1]:.3f} → {curve[-1][1]:.3f}" if curve else "-"
        train.add_row(name, str(t["steps"]), str(t["examples_seen"]), f"{t['tokens_seen']:,}", loss,
                      f"{t['runtime_s']:.0f}")
    console.print(train)
    for name, variant in results["variants"].items():
        console.print(f"{name}: {variant['dataset']} (card: {variant['card'] or 'none'})")

    table = Table(title=f"pass@1 (95% CI); Δ vs {results['baseline']}", title_justify="left")
    for column in ("benchmark", "model", "n", "pass@1", "Δ", "pass@k (largest k)", "truncated"):
        table.add_column(column, justify="left" if column in ("benchmark", "model") else "right")
    for row in results["comparison"]:
        low, high = row["ci95"]
        delta = "baseline" if row["model"] == results["baseline"] else (
            "-" if row["delta"] is None else
            f"{100 * row['delta']:+.1f} [{100 * row['delta_ci95'][0]:+.1f}, {100 * row['delta_ci95'][1]:+.1f}]")
        table.add_row(row["benchmark"], row["model"], str(row["n"]),
                      f"{100 * row['pass@1']:.1f} [{100 * low:.1f}, {100 * high:.1f}]", delta, _pass_at_k(row),
                      f"{100 * row['truncated']:.0f}%")
    console.print(table)
    if results.get("contamination"):
        console.print(f"[bold red]CONTAMINATED variants[/]: {', '.join(results['contamination'])} (see results.json)")
