# Run: .venv/bin/python benchmarks/bench_influence.py [--model tiny|smollm2|both] [--train 200 --query 20 --length 128]
#      [--pool 800] [--fisher true|empirical] [--device cuda]
"""Time and memory of curate's EK-FAC engine against kronfluence on the same model, data and settings.

Matched settings (as in tests/test_influence_kronfluence.py): float32 model, the MLP projections
tracked, the same Fisher (`--fisher`: `true`, curate's default, samples the labels on both sides
with curate's per-example seeded draws; `empirical` uses the data's), summed response NLL with
the prompt masked, relative damping
0.1 x mean(Lambda*), batches of --batch sequences on both sides, eigendecomposition in float64 and
covariances / per-example gradients in float32 (kronfluence's defaults, set explicitly).
kronfluence scores with `aggregate_query_gradients=True`, which computes exactly curate's quantity
(one summed query direction, one pass over the pool); its default per-query pairwise mode is timed
too (`kf_score_pairwise`), as it is what most users run. The factors are fitted on the --train
examples and the scores are over a pool of --pool examples (the fit examples first; default: the
fit examples alone), as `curate score --fit-on` does.

Every method runs in a fresh subprocess (one thread), after the model and data are loaded; its
peak RSS increment over that baseline is reported. curate's factors and kronfluence's factors are
written to a temporary folder by the fit step and read by the score step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("forward", "fwd_bwd", "curate_fit_nocache", "curate_fit", "curate_score", "curate_e2e", "kf_fit", "kf_score",
           "kf_score_pairwise")


GB = 1024**3


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_model(name: str):
    import torch

    if name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    else:
        from curate.models import load_model

        model, _ = load_model("smollm2-135m")
    model = model.to(torch.float32).eval()
    model.set_attn_implementation("sdpa")
    return model


def build_data(vocab: int, n: int, length: int, seed: int, prefix: str):
    """Random token sequences of `length`; the first 16-64 tokens are the prompt (masked)."""
    import torch

    from curate.influence.tokens import Tokenized

    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
        start = int(torch.randint(16, min(64, length - 1) + 1, (1,), generator=gen))
        items.append(Tokenized(f"{prefix}{i}", tuple(ids), start, False, length))
    return items


def run_method(method: str, args) -> dict:
    """One method, timed, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(args.model).to(args.device)
    vocab = model.config.vocab_size
    train = build_data(vocab, args.train, args.length, 1, "t")  # the fit set
    pool = train + build_data(vocab, max(args.pool - args.train, 0), args.length, 3, "p")
    queries = build_data(vocab, args.query, args.length, 2, "q")
    sample_seed = 0 if args.fisher == "true" else None
    work = Path(args.work)
    base = rss_mb()
    detail: dict = {}
    t0 = time.perf_counter()

    if method in ("forward", "fwd_bwd"):
        from curate.influence.batches import make_batches, response_logprobs

        batches = make_batches(pool, args.batch * args.length, pad_id=0)
        for p in model.parameters():
            p.requires_grad_(method == "fwd_bwd")
        for b in batches:
            b = b.to(args.device)
            if method == "forward":
                with torch.no_grad():
                    model(input_ids=b.input_ids, attention_mask=b.attention_mask)
            else:
                logp, _ = response_logprobs(model, b)
                (-logp.sum()).backward()
                model.zero_grad(set_to_none=True)

    elif method == "curate_e2e":
        # `curate score`'s own stages (`curate.influence.fitting`), on the engine's defaults but for
        # --pair-cache-gb and one query function (no splits, as kronfluence's aggregated scores):
        # the factors fitted in one pass that keeps its pairs (with the true Fisher a second
        # backward keeps the data labels' too), the query directions preconditioned a module at a
        # time from the factor files, the fit examples scored from the kept pairs and the rest of
        # the pool by a scoring pass.
        from curate.influence.batches import make_batches
        from curate.influence.capture import select_modules
        from curate.influence.config import ScoreConfig
        from curate.influence.context import ScoreContext
        from curate.influence.distributed import Collective, Shard
        from curate.influence.engine import influence_columns
        from curate.influence.fitting import fit_factors, query_directions
        from curate.influence.plan import group_modules
        from curate.influence.scoring import score_batches
        from curate.progress import Silent

        config = ScoreConfig(model=args.model, fisher=args.fisher, dtype="float32", fit_on=len(train), query_splits=0,
                             batch_tokens=args.batch * args.length, pair_cache_gb=args.pair_cache_gb)
        modules = select_modules(model, "mlp")
        ctx = ScoreContext(model, None, config, modules, group_modules(modules, config.group_memory_gb), 0, None,
                           influence_columns(["q"], 0), work / "engine", Collective(Shard()), Silent())
        factor_files, replay = fit_factors(ctx, train, "bench")
        t1 = time.perf_counter()
        directions, _ = query_directions(ctx, factor_files, queries, "q", "bench")
        t2 = time.perf_counter()
        if replay is None:
            raise SystemExit("curate_e2e: the pairs did not fit the cache")
        detail_cache = {"pairs_in_memory_gb": sum(c.bytes for c in replay.caches) / GB,
                        "pairs_on_disk_gb": sum(c.spilled for c in replay.caches) / GB}
        replayed = replay.scores(directions, per_token=False)
        replay.close()
        scores = torch.stack([replayed[z][0] for z in train])
        t3 = time.perf_counter()
        rest = pool[len(train):]
        if rest:
            scores = torch.cat([scores, score_batches(model, modules, make_batches(rest, args.batch * args.length, 0),
                                                      directions, len(rest), per_token=False)])
        t4 = time.perf_counter()
        torch.save(scores[:, 0].cpu().clone(), work / "curate_e2e_scores.pt")
        detail = {"factors": t1 - t0, "query_directions": t2 - t1, "replay_scoring": t3 - t2,
                  **({"scoring_pass": t4 - t3} if rest else {}), **detail_cache}

    elif method in ("curate_fit", "curate_fit_nocache", "curate_score"):
        from safetensors.torch import load_file, save_file

        from curate.influence.batches import make_batches
        from curate.influence.capture import select_modules
        from curate.influence.factors import ModuleFactors, eigenbases, fit_covariances, fit_lambdas
        from curate.influence.passes import PairCache
        from curate.influence.scoring import query_gradient_sums, score_batches, split_functions

        modules = select_modules(model, "mlp")
        batches = make_batches(train, args.batch * args.length, pad_id=0)
        path = work / "curate_factors.safetensors"
        if method.startswith("curate_fit"):
            # curate's default: the eigenvalue correction replays the covariance pass's (s, a)
            # pairs when they fit in --pair-cache-gb (2 GB) plus, on CPU, --pair-spill-gb (32 GB on
            # disk); `curate_fit_nocache` runs both passes.
            cache = PairCache(0, None) if method == "curate_fit_nocache" else PairCache(
                int(args.pair_cache_gb * GB), work / "pairs", 32 * GB)  # --pair-cache-gb resolved as the engine does
            covs = fit_covariances(model, modules, batches, sample_seed=sample_seed, cache=cache)
            t1 = time.perf_counter()
            bases = {n: eigenbases(c) for n, c in covs.items()}
            del covs
            t2 = time.perf_counter()
            lams = fit_lambdas(model, modules, batches, bases, sample_seed=sample_seed, cache=cache)
            cache.close()
            t3 = time.perf_counter()
            tensors = {}
            for n in modules:
                f = ModuleFactors(bases[n][0], bases[n][1], lams[n][0] / lams[n][1])
                tensors.update({f"{n}::{k}": v for k, v in f.to_dict().items()})
            save_file(tensors, str(path))
            detail = {"covariance": t1 - t0, "eigen": t2 - t1, "lambda": t3 - t2, "save": time.perf_counter() - t3}
        else:
            loaded = load_file(str(path))
            factors = {n: ModuleFactors(loaded[f"{n}::q_a"], loaded[f"{n}::q_s"], loaded[f"{n}::lam"]) for n in modules}
            q_batches = make_batches(queries, args.batch * args.length, pad_id=0)
            sums = query_gradient_sums(model, modules, q_batches, [0] * len(queries), 1, per_token=False)
            directions = {n: f.precondition(split_functions(sums[n], [len(queries)]), f.damping("auto")).to(torch.float32)
                          for n, f in factors.items()}
            t1 = time.perf_counter()
            scores = score_batches(model, modules, make_batches(pool, args.batch * args.length, pad_id=0), directions,
                                   len(pool), per_token=False)
            t2 = time.perf_counter()
            torch.save(scores[:, 0].cpu().clone(), work / "curate_scores.pt")
            detail = {"query_directions": t1 - t0, "scoring_pass": t2 - t1}

    else:
        import logging

        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments

        from benchmarks.kronfluence_task import ResponseNLLTask, TokenDataset
        from curate.influence.capture import select_modules

        task = ResponseNLLTask(list(select_modules(model, "mlp")))
        model = prepare_model(model, task)
        analyzer = Analyzer("kf", model, task, cpu=args.device == "cpu", disable_tqdm=True, output_dir=str(work),
                            log_level=logging.WARNING)
        f32, f64 = torch.float32, torch.float64
        factor_args = FactorArguments(
            strategy="ekfac", use_empirical_fisher=args.fisher == "empirical", activation_covariance_dtype=f32,
            gradient_covariance_dtype=f32, eigendecomposition_dtype=f64, per_sample_gradient_dtype=f32,
            lambda_dtype=f32,
        )
        train_ds, query_ds, pool_ds = TokenDataset(train), TokenDataset(queries), TokenDataset(pool)
        if method == "kf_fit":
            common = dict(factors_name="ekfac", factor_args=factor_args, overwrite_output_dir=True)
            analyzer.fit_covariance_matrices(dataset=train_ds, per_device_batch_size=args.batch, **common)
            t1 = time.perf_counter()
            analyzer.perform_eigendecomposition(**common)
            t2 = time.perf_counter()
            analyzer.fit_lambda_matrices(dataset=train_ds, per_device_batch_size=args.batch, **common)
            detail = {"covariance": t1 - t0, "eigen": t2 - t1, "lambda": time.perf_counter() - t2}
        else:
            aggregate = method == "kf_score"
            score_args = ScoreArguments(
                damping_factor=None, per_sample_gradient_dtype=f32, precondition_dtype=f32, score_dtype=f32,
                aggregate_query_gradients=aggregate,
                # per-query mode: hold all query batches before the pass over the pool (one pass)
                query_gradient_accumulation_steps=1 if aggregate else math.ceil(args.query / args.batch),
            )
            analyzer.compute_pairwise_scores(
                method, "ekfac", query_ds, pool_ds, per_device_query_batch_size=args.batch,
                per_device_train_batch_size=args.batch, score_args=score_args, overwrite_output_dir=True,
            )
            scores = analyzer.load_pairwise_scores(method)["all_modules"].to("cpu", torch.float64)
            torch.save(scores.mean(dim=0) if not aggregate else scores[0] / args.query, work / f"{method}.pt")

    seconds = time.perf_counter() - t0
    peak = rss_mb()
    return {"method": method, "seconds": seconds, "baseline_mb": base, "peak_mb": peak, "delta_mb": peak - base,
            "detail": detail}


def bench_model(name: str, args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as work:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--_method", method, "--_work", work, "--model", name,
                   "--train", str(args.train), "--query", str(args.query), "--length", str(args.length),
                   "--batch", str(args.batch), "--device", args.device, "--pool", str(args.pool), "--fisher", args.fisher,
                   "--pair-cache-gb", str(args.pair_cache_gb)]  # resolved in main
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{method} failed on {name}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[method] = r
            extra = " ".join((f"{k}={v:.2f}" if k.endswith('_gb') else f"{k}={v:.1f}s") for k, v in r["detail"].items())
            print(f"  {name:8s} {method:18s} {r['seconds']:8.1f} s   +{r['delta_mb']:7.0f} MB "
                  f"(peak RSS {r['peak_mb']:.0f} MB)  {extra}", flush=True)
        import torch

        work_path = Path(work)
        for mine in ("curate_scores", "curate_e2e_scores"):
            if not (work_path / f"{mine}.pt").exists():
                continue
            ours = torch.load(work_path / f"{mine}.pt")
            for kf in ("kf_score", "kf_score_pairwise"):
                if (work_path / f"{kf}.pt").exists():
                    theirs = torch.load(work_path / f"{kf}.pt")
                    r = float(torch.corrcoef(torch.stack([ours, theirs]))[0, 1])
                    results[f"pearson_{mine}_{kf}"] = r
                    print(f"  {name:8s} Pearson({mine}, {kf}) = {r:.6f}")
    return results


def report(name: str, res: dict) -> None:
    s = {m: res[m]["seconds"] for m in METHODS if m in res}
    if not all(m in s for m in ("forward", "fwd_bwd", "kf_fit", "kf_score")):
        return
    fwd, fb = s["forward"], s["fwd_bwd"]
    kf_total = s["kf_fit"] + s["kf_score"]
    print(f"\n{name}: ratios")
    if "curate_fit" in s and "curate_score" in s:
        ours_total = s["curate_fit"] + s["curate_score"]
        scoring_pass = res["curate_score"]["detail"]["scoring_pass"]
        print(f"  curate fit / kronfluence fit          {s['curate_fit'] / s['kf_fit']:.2f}")
        print(f"  curate score / kronfluence score      {s['curate_score'] / s['kf_score']:.2f}"
              + (f"   (vs per-query pairwise: {s['curate_score'] / s['kf_score_pairwise']:.2f})"
                 if "kf_score_pairwise" in s else ""))
        print(f"  end-to-end curate / kronfluence       {ours_total / kf_total:.2f}"
              + (f"   (vs per-query pairwise: {ours_total / (s['kf_fit'] + s['kf_score_pairwise']):.2f})"
                 if "kf_score_pairwise" in s else ""))
        print(f"  curate scoring pass / plain forward   {scoring_pass / fwd:.2f}")
        print(f"  curate scoring pass / forward+backward {scoring_pass / fb:.2f}")
    if "curate_e2e" in s:
        print(f"  end-to-end as `curate score` runs (curate_e2e) / kronfluence  {s['curate_e2e'] / kf_total:.2f}")
    for m in METHODS:
        if m in s and m not in ("fwd_bwd",):
            print(f"  {m:18s} / forward+backward     {s[m] / fb:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2", "both"), default="tiny")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--query", type=int, default=20)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--pool", type=int, default=0, help="pool rows to score (the fit rows first; default: --train)")
    parser.add_argument("--fisher", choices=("true", "empirical"), default="true")
    parser.add_argument("--pair-cache-gb", type=float,
                        help="curate's pairs kept in memory before spilling to disk (default: the engine's for --device)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (scripts/gpu_check.sh)")
    parser.add_argument("--json", help="also write every method's result to this file")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--_method", help=argparse.SUPPRESS)
    parser.add_argument("--_work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pool = max(args.pool, args.train)
    if args.pair_cache_gb is None:
        from curate.influence.config import ScoreConfig

        args.pair_cache_gb = ScoreConfig(model="-", device=args.device).resolved_pair_cache_gb
    if args._method:
        args.work = args._work
        if args.model == "both":
            raise SystemExit("internal: one model per subprocess")
        print(json.dumps(run_method(args._method, args)))
        return
    args.methods = [m for m in args.methods.split(",") if m]
    import torch

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, 1 thread; "
          f"train={args.train} pool={args.pool} query={args.query} length={args.length} batch={args.batch} "
          f"fisher={args.fisher}")
    names = ("tiny", "smollm2") if args.model == "both" else (args.model,)
    all_results = {n: bench_model(n, args) for n in names}
    for n, res in all_results.items():
        report(n, res)
    if args.json:
        Path(args.json).write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
