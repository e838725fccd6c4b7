"""`curate audit`: ranking stability and the counterfactual check of influence scores."""

from __future__ import annotations

import click

WHAT = (
    "Fine-tunes BASE (or --proxy) on the pool without the top-k 'helpful' rows, without k random rows, "
    "without the bottom-k, and without each baseline's top-k, over several seeds, and reports the change "
    "of the query objective f_q (mean summed answer log-likelihood, nats) against the full-pool fine-tune: "
    "negative = the removal hurt. With --lds M, also fine-tunes on M random subsets and reports each ranking's "
    "linear datamodeling score (Spearman of measured f_q against the subset's summed scores). Finished "
    "fine-tunes are recorded in OUT/audit.jsonl and skipped on rerun."
)


@click.command(epilog=WHAT)
@click.argument("scored")
@click.option("--base", required=True, help="The model before fine-tuning (B): local folder, Hub id or alias.")
@click.option("--model", required=True, help="The fine-tuned checkpoint the scores were computed on (M).")
@click.option("--query", "queries", multiple=True, required=True, metavar="NAME=PATH",
              help="Query set(s) whose objective is measured (the ones the scores were computed against).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Audit folder: audit.jsonl (one line per finished fine-tune), runs/, results.json, README.md "
                   "(the card: verdict, arms, LDS).")
@click.option("--column", "score_column", help="Score column [default: the only curate_influence_<q> column].")
@click.option("--objective", help="Query set the verdict uses [default: the one the column names].")
@click.option("--k", type=float, default=0.1, show_default=True, help="Fraction of rows removed per arm, in (0, 0.5].")
@click.option("--seeds", type=int, default=5, show_default=True, help="Training seeds per arm.")
@click.option("--baselines", default="random,length,perplexity,embedding", show_default=True,
              help="Heuristic rankings audited side by side (random is always run; embedding needs the "
                   "curate_embedding_<q> column of `curate score --method embedding`).")
@click.option("--lds", type=int, default=0, show_default=True, metavar="M",
              help="Also fine-tune on M seeded random subsets and report the linear datamodeling score of the "
                   "scores and of each baseline (0 = none; >= 3, 50+ for a tight interval).")
@click.option("--subset-frac", type=float, default=0.5, show_default=True,
              help="Fraction of the rows in each --lds subset, in (0, 1).")
@click.option("--proxy", metavar="MODEL", help="Fine-tune this small model of the same family instead of BASE (said in the result).")
@click.option("--max-steps", type=int, default=None,
              help="Optimizer steps per fine-tune [default: the steps that produced --model, from its train.json].")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per device per forward pass.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Forward passes per optimizer step.")
@click.option("--lr", "learning_rate", type=float, default=1e-5, show_default=True, help="Peak learning rate.")
@click.option("--max-length", type=int, default=4096, show_default=True, help="Tokens per training example.")
@click.option("--lora-r", type=int, default=0, show_default=True, help="LoRA rank (needs peft); 0 = full fine-tune.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=True, show_default=True,
              help="Recompute activations in the backward pass (less memory, slower).")
@click.option("--seed", type=int, default=0, show_default=True, help="First training seed; also draws the random arm.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda when available), cpu, cuda:1, ...")
@click.option("--keep-models", is_flag=True, help="Save every arm's final weights under OUT/runs/ (default: each arm is evaluated "
                   "in memory and its checkpoints deleted).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Fine-tunes run at once, each in its own process on one thread (CPU, Linux) [default: one "
                   "per thread this process uses, as many as half the available memory holds; 1 on a GPU].")
@click.option("--split", help="Split of the scored pool (folder or Hub dataset).")
def audit(scored, base, model, queries, out_dir, score_column, objective, k, seeds, baselines, lds, subset_frac, proxy,
          max_steps,
          batch_size, grad_accum, learning_rate, max_length, lora_r, gradient_checkpointing, seed, device, keep_models,
          workers, split) -> None:
    """Check the influence scores of SCORED against real fine-tunes: does removing what they call
    helpful hurt the query objective more than removing random rows?"""
    from pathlib import Path

    from curate.audit.counterfactual import AuditConfig, resolve_column, steps_of
    from curate.audit.counterfactual import audit as run
    from curate.cli import quiet_third_party_progress
    from curate.cli.operation import named_paths
    from curate.data import load_pool
    from curate.errors import UsageError
    from curate.models import check_model
    from curate.progress import RichProgress
    from curate.training import TrainConfig

    if not 0 < k <= 0.5:
        raise UsageError(f"--k must be in (0, 0.5], got {k}")
    query_paths = named_paths("--query", queries)
    if not query_paths:
        raise UsageError("give at least one --query NAME=PATH")
    for name in [proxy] if proxy else [base, model]:  # the models loaded: fail on a typo before any data
        check_model(name)
    max_steps = max_steps or steps_of(model)
    if max_steps is None:
        raise UsageError(f"--max-steps: cannot read the steps that produced {model!r} (no train.json); give them")
    train = TrainConfig(max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, learning_rate=learning_rate,
                        max_length=max_length, lora_r=lora_r, seed=seed, device=device,
                        gradient_checkpointing=gradient_checkpointing)
    config = AuditConfig(base=base, model=model, proxy=proxy, score_column=score_column, objective=objective, k=k,
                         seeds=seeds, baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()),
                         lds=lds, subset_frac=subset_frac, train=train, keep_models=keep_models, workers=workers)
    pool = load_pool(scored, split=split)
    resolve_column(pool.column_names, score_column)  # fail before loading anything heavy
    query_sets = {q: list(load_pool(p, source=q).examples()) for q, p in query_paths.items()}
    quiet_third_party_progress()
    progress = RichProgress()
    result = run(pool, queries=query_sets, out_dir=Path(out_dir), config=config, progress=progress)
    render(result, progress.console)
    from curate.report import render_audit_card

    click.echo(str(render_audit_card(result, out_dir)), err=True)
    click.echo(str(Path(out_dir) / "results.json"))


def render(result, console) -> None:
    """The arms table and the verdict (rich, stderr)."""
    from rich.table import Table

    v = result.verdict
    vs_random = {"top": v.helpful_vs_random, "bottom": v.harmful_vs_random, **v.baselines_vs_random}
    title = (f"f_q({result.objective}) change vs the full-pool fine-tune, nats (mean ± std over "
             f"{len(result.arms['full'].delta)} seeds); {result.removed} of {result.rows} rows removed per arm")
    table = Table(title=title, title_justify="left")
    for column in ("arm", "removed", "Δ f_q", "vs random", "z"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for name, arm in result.arms.items():
        c = vs_random.get(name)
        table.add_row(f"{name}: {arm.description}", str(arm.removed), f"{arm.delta_mean:+.4g} ± {arm.delta_std:.2g}",
                      "-" if c is None else f"{c.diff_mean:+.4g}", "-" if c is None or c.z is None else f"{c.z:+.1f}")
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]{note}[/yellow]")
    colour = "green" if v.supported else ("yellow" if v.helpful_hurts_more else "red")
    console.print(f"[{colour}]verdict ({result.score_column}): {v.summary}[/{colour}]")
    if result.lds is not None:
        from curate.audit.lds import lds_summary

        lds = result.lds
        table = Table(title=f"linear datamodeling score over {lds.subsets} subsets of {lds.subset_size} rows "
                            f"(f_q({lds.objective}); 95% bootstrap interval; random: mean and 95% range of "
                            "random rankings)", title_justify="left")
        for column in ("ranking", "LDS", "interval"):
            table.add_column(column, justify="left" if column == "ranking" else "right")
        for name, s in lds.scores.items():
            table.add_row(result.score_column if name == "score" else f"{name} (baseline)",
                          "-" if s.spearman is None else f"{s.spearman:+.3f}",
                          "-" if s.ci_low is None else f"[{s.ci_low:+.2f}, {s.ci_high:+.2f}]")
        console.print(table)
        console.print(lds_summary(lds))
