"""Do the influence scores predict what data does better than cheap heuristics? (not a test)

Setup, all built here from rows the repo ships (no download):
- B: a tiny Llama (SmolLM2 tokenizer, `--layers` x `--hidden`) pretrained for `--pretrain-steps`
  on the sample pool's and donor's long reasoning traces (curate/resources/sample), so that the
  fine-tune below is an SFT stage on a model that has seen reasoning text;
- the pool: GSM8K rows (math) and MBPP rows (code) from the bundled query sets; the query sets:
  the other GSM8K and MBPP rows of those files (disjoint from the pool);
- M: B fine-tuned on the whole pool (`--steps` optimizer steps), with a checkpoint every
  steps / `--checkpoints`.

Rankings compared, each on the math and the code query set:
- ekfac: EK-FAC influence on M (`curate score`, every Linear tracked, true Fisher);
- ekfac-ckpt: EK-FAC averaged over M's checkpoints (`--checkpoints`, LESS learning-rate weights);
- identity: identity curvature (damping 1e8: plain gradient dot products, up to scale);
- length (response tokens), perplexity (mid-perplexity first), embedding (RDS+ cosine), random.

Measures, per ranking, through `curate audit` (every fine-tune starts from B with M's settings):
- LDS: Spearman between the measured f_q of `--lds` random half-pool fine-tunes and each
  ranking's sum over the subset, with a 95% bootstrap interval;
- top-k removal: f_q(pool without the k highest-ranked rows) - f_q(full pool), over `--seeds`
  training seeds, and its paired z against random removal and against each heuristic.

Run (96 fine-tunes: 50 minutes on one thread of a shared 2-core machine with the defaults):
    python benchmarks/bench_validity.py --out /tmp/validity
It prints the tables and writes OUT/validity.json; fine-tunes are recorded in OUT/audit/audit.jsonl,
so a rerun (or a killed run) redoes none of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "curate" / "resources" / "sample"
TOKENIZER = ROOT / "curate" / "resources" / "smollm2_tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/curate-validity"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--math-pool", type=int, default=48, help="GSM8K rows in the pool (the rest of 64 query)")
    parser.add_argument("--code-pool", type=int, default=24, help="MBPP rows in the pool (the rest of 32 query)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--k", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lds", type=int, default=32)
    args = parser.parse_args()

    import torch

    from curate.cli import quiet_third_party_progress

    torch.set_num_threads(1)
    quiet_third_party_progress()
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    pool, query_pools = build_data(args)
    queries = {q: list(p.examples()) for q, p in query_pools.items()}
    base = pretrain_base(args)
    model_dir, checkpoints = finetune(args, base, pool)
    scored = score_all(args, pool, queries, query_pools, model_dir, checkpoints)
    results = audit_all(args, scored, queries, base, model_dir)
    results["setup"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["setup"].update(pool_rows=len(pool), query_rows={q: len(v) for q, v in queries.items()},
                            minutes=round((time.time() - started) / 60, 1))
    (args.out / "validity.json").write_text(json.dumps(results, indent=2))
    print_tables(results)
    print(f"\nwritten: {args.out / 'validity.json'} ({results['setup']['minutes']} min)")


def build_data(args):
    """The pool (GSM8K + MBPP rows) and the two query sets, disjoint, from the bundled files."""
    from curate.data import load_pool

    math_rows = load_pool(SAMPLE / "queries" / "math.jsonl", source="gsm8k")
    code_rows = load_pool(SAMPLE / "queries" / "code.jsonl", source="mbpp")
    path = _write_messages(args.out / "pool.jsonl", [*islice(math_rows.examples(), args.math_pool),
                                                     *islice(code_rows.examples(), args.code_pool)])
    pool = load_pool(path, source="validity-pool")
    query_pools = {"math": math_rows.with_dataset(math_rows.dataset.select(range(args.math_pool, len(math_rows)))),
                   "code": code_rows.with_dataset(code_rows.dataset.select(range(args.code_pool, len(code_rows))))}
    return pool, query_pools


def _write_messages(path: Path, examples) -> Path:
    """`examples` as JSON lines of {id, messages}."""
    with path.open("w", encoding="utf-8") as fh:
        for e in examples:
            fh.write(json.dumps({"id": e.id, "messages": e.messages}) + "\n")
    return path


def pretrain_base(args) -> str:
    """B: a random tiny Llama trained on the sample's long reasoning traces (skipped when saved)."""
    from curate.data import load_pool
    from curate.training import TrainConfig, train_variant

    out = args.out / "base"
    if (out / "model" / "config.json").is_file():
        return str(out / "model")
    init = args.out / "init"
    if not (init / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(TOKENIZER)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                             num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=2048, tie_word_embeddings=True)
        LlamaForCausalLM(config).save_pretrained(init)
        tok.save_pretrained(init)
    text = load_pool(_write_messages(args.out / "traces.jsonl", [
        *load_pool(SAMPLE / "pool.jsonl").examples(), *load_pool(SAMPLE / "donor.jsonl").examples()]))
    print(f"pretraining B on {len(text)} reasoning traces, {args.pretrain_steps} steps", flush=True)
    train_variant(str(init), text, TrainConfig(max_steps=args.pretrain_steps, batch_size=4, learning_rate=3e-3,
                                               max_length=384, device="cpu", gradient_checkpointing=False,
                                               save_steps=args.pretrain_steps), out)
    return str(out / "model")


def train_config(args, **changes):
    from curate.training import TrainConfig

    return dataclasses.replace(TrainConfig(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                                           max_length=args.max_length, device="cpu", gradient_checkpointing=False,
                                           save_steps=args.steps), **changes)


def finetune(args, base: str, pool) -> tuple[str, list[str]]:
    """M = B fine-tuned on the whole pool, with its intermediate checkpoints kept."""
    from curate.influence.ensemble import expand_checkpoints
    from curate.training import train_variant

    out = args.out / "m"
    every = max(1, args.steps // args.checkpoints)
    if not (out / "model" / "config.json").is_file():
        print(f"fine-tuning M: {args.steps} steps on {len(pool)} rows", flush=True)
        train_variant(base, pool, train_config(args, save_steps=every, save_total_limit=None), out)
    return str(out / "model"), expand_checkpoints([str(out / "checkpoint-*")])


def score_all(args, pool, queries, query_pools, model_dir: str, checkpoints: list[str]):
    """The pool with every ranking's columns: curate_influence_<q>[_ckpt|_identity], curate_nll,
    curate_tokens, curate_embedding_<q>."""
    from curate.influence.config import ScoreConfig
    from curate.influence.embedding import embedding_table
    from curate.influence.engine import score_pool
    from curate.influence.ensemble import score_checkpoints

    path = args.out / "scored.parquet"
    if path.is_file():
        from curate.data import load_pool

        return load_pool(path)
    examples = list(pool.examples())
    common = dict(model=model_dir, modules="all", max_length=args.max_length, fit_max_length=args.max_length,
                  query_splits=0)
    tables = {}
    t = time.time()
    tables["ekfac"] = score_pool(examples, queries, ScoreConfig(**common), args.out / "score" / "ekfac").table
    tables["ekfac_ckpt"] = score_checkpoints(examples, queries, ScoreConfig(**common, checkpoints=tuple(checkpoints)),
                                             args.out / "score" / "ekfac_ckpt").table
    tables["identity"] = score_pool(examples, queries, ScoreConfig(**common, damping=1e8),
                                    args.out / "score" / "identity").table
    embedding = embedding_table(pool, query_pools,
                                ScoreConfig(model=model_dir, method="embedding", max_length=args.max_length))
    print(f"scored {len(examples)} rows four ways in {time.time() - t:.0f} s", flush=True)
    ds = pool.dataset
    for q in queries:
        ds = ds.add_column(f"curate_influence_{q}", tables["ekfac"][f"curate_influence_{q}"].to_list())
        ds = ds.add_column(f"curate_influence_{q}_ckpt", tables["ekfac_ckpt"][f"curate_influence_{q}"].to_list())
        ds = ds.add_column(f"curate_influence_{q}_identity", tables["identity"][f"curate_influence_{q}"].to_list())
        ds = ds.add_column(f"curate_embedding_{q}", embedding[f"curate_embedding_{q}"].to_list())
    for column in ("curate_nll", "curate_tokens"):
        ds = ds.add_column(column, tables["ekfac"][column].to_list())
    ds.to_parquet(path)
    from curate.data import load_pool

    return load_pool(path)


RANKINGS = {"ekfac": "", "ekfac-ckpt": "_ckpt", "identity": "_identity"}


def audit_all(args, scored, queries, base: str, model_dir: str) -> dict:
    """One audit per (ranking, objective); their fine-tunes are shared through one audit.jsonl."""
    from curate.audit.counterfactual import audit, compare

    results: dict = {"math": {}, "code": {}}
    for objective in ("math", "code"):
        for name, suffix in RANKINGS.items():
            seeds = args.seeds if objective == "math" else 1  # the targets are on math; code gets the LDS
            r = audit(scored, queries=queries, out_dir=args.out / "audit", base=base, model=model_dir,
                      score_column=f"curate_influence_{objective}{suffix}", objective=objective, k=args.k,
                      seeds=seeds, lds=args.lds, train=train_config(args))
            heuristics = [a for a in ("length", "perplexity", "embedding") if a in r.arms]
            top = {"delta": _summary(r.arms["top"].delta),
                   "vs_random": dataclasses.asdict(r.verdict.helpful_vs_random),
                   "vs_heuristic": {h: dataclasses.asdict(compare(r.arms["top"], r.arms[h])) for h in heuristics}}
            results[objective][name] = {
                "lds": dataclasses.asdict(r.lds.scores["score"]), "top_k": top, "verdict": r.verdict.summary}
            results[objective]["heuristics"] = {
                h: {"lds": dataclasses.asdict(r.lds.scores[h]), "delta": _summary(r.arms[h].delta)}
                for h in [*heuristics, "random"] if h in r.lds.scores}
            results[objective]["heuristics"]["random"]["delta"] = _summary(r.arms["random"].delta)
            results[objective]["f"] = {"start": r.f_start[objective], "model": r.f_model[objective],
                                       "full": _summary([f[objective] for f in r.arms["full"].f])}
            results["fine_tunes"] = len([line for line in (args.out / "audit" / "audit.jsonl").read_text()
                                         .splitlines() if "tokens_seen" in line])
            print(f"{objective} {name}: LDS {r.lds.scores['score'].spearman:+.3f}; {r.verdict.summary}", flush=True)
    return results


def _summary(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def print_tables(results: dict) -> None:
    for objective in ("math", "code"):
        r = results[objective]
        print(f"\n{objective}: f_q start {r['f']['start']:.2f}, M {r['f']['model']:.2f}, full-pool fine-tunes "
              f"{r['f']['full']['mean']:.2f} ± {r['f']['full']['std']:.2f} (nats)")
        print(f"{'ranking':<12} {'LDS [95% CI]':>24} {'top-k removed Δf_q':>22} {'z vs random':>12} "
              f"{'z vs hardest heuristic':>24}")
        for name in RANKINGS:
            x = r[name]
            lds = x["lds"]
            ci = "-" if lds["spearman"] is None else f"{lds['spearman']:+.3f} [{lds['ci_low']:+.2f}, {lds['ci_high']:+.2f}]"
            d = x["top_k"]["delta"]
            z = x["top_k"]["vs_random"]["z"]
            vs = {h: c["z"] for h, c in x["top_k"]["vs_heuristic"].items() if c["z"] is not None}
            worst = max(vs.items(), key=lambda kv: kv[1]) if vs else None
            print(f"{name:<12} {ci:>24} {d['mean']:>+12.3f} ± {d['std']:<7.3f} "
                  f"{'-' if z is None else f'{z:+.1f}':>12} {'-' if not worst else f'{worst[1]:+.1f} ({worst[0]})':>24}")
        for name, h in r["heuristics"].items():
            lds, d = h["lds"], h["delta"]
            ci = "-" if lds["spearman"] is None else f"{lds['spearman']:+.3f} [{lds['ci_low']:+.2f}, {lds['ci_high']:+.2f}]"
            print(f"{name + (' (null)' if name == 'random' else ''):<12} {ci:>24} {d['mean']:>+12.3f} ± {d['std']:<7.3f}")
    print("\nLDS intervals: 95% bootstrap over subsets; random (null): the mean LDS of 500 random rankings and the "
          "range 95% of them fall in. z: paired over training seeds, top-k arm minus the other arm "
          "(negative = removing the ranking's top-k hurt more).")


if __name__ == "__main__":
    main()
