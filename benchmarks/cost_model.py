# Run: .venv/bin/python benchmarks/cost_model.py [--model smollm2|tiny] [--length 256] [--tflops 200,50]
"""FLOPs per token of each influence pass, measured, and what they project for a 7B model.

Measures with torch's FlopCounterMode (matmuls and attention, forward and backward, including
the work inside curate's layer hooks) the FLOPs per token of: a plain forward, the covariance
pass, the eigenvalue-correction (Lambda*) pass, the query-gradient pass and the scoring pass,
on a real model. Checks the measurement against the analytic model below, then uses that model
for Qwen2.5-7B (MLP projections tracked) to print a back-of-the-envelope cost table in GPU-hours
for 17k and 114k traces of 4k tokens.

Analytic model, per token, with P the non-embedding parameters of the dense layers, and for
each tracked Linear m its (in_m, out_m):
  forward                2 P + attention
  activation backward    2 P + attention x 2 (no weight gradients)
  covariance hooks       sum_m g(in_m) + g(out_m)                        (A and S sums)
                         g(d) = 2 d^2, or ~1.5 d^2 for d >= 256 (three of the four half-size
                         blocks of the symmetric product); g(in_m) once for modules sharing an input
  Lambda* hooks          per example of T tokens, the cheaper of
                         2 T (out^2 + in^2 + out in)  and  2 out in (T + out + in)
  scoring hooks          sum_m 2 F out in  (+ 2 F min(in, out))         (F query functions)
The GPU-hour table divides by two stated throughputs: model passes in bf16 (default 200
TFLOP/s effective, e.g. an H100 at ~50% of its dense bf16 peak) and the hook matmuls in fp32/tf32
(default 50 TFLOP/s). Scoring counts 2 query sets of 3 functions each (the full set and the
default 2 stability splits). Eigendecompositions and the query-gradient passes are fixed costs
not in the table. FlopCounterMode does not see SDPA's attention on CPU, so the measured forward
is the analytic one minus its attention term.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RANK = 64  # the --query-rank shown next to exact directions
QWEN7B = {"hidden": 3584, "inter": 18944, "layers": 28, "heads": 28, "kv_heads": 4, "head_dim": 128}


def measure(model_name: str, length: int, n: int = 4) -> dict[str, float]:
    """Measured FLOPs per token of each pass (n sequences of `length` tokens, one batch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_influence import build_data, build_model
    from curate.influence.batches import make_batches
    from curate.influence.capture import select_modules
    from curate.influence.directions import truncate
    from curate.influence.factors import eigenbases, fit_covariances, fit_lambdas
    from curate.influence.passes import run_pass
    from curate.influence.scoring import query_gradient_sums, score_batches

    torch.manual_seed(0)
    model = build_model(model_name)
    modules = select_modules(model, "mlp")
    items = build_data(model.config.vocab_size, n, length, 1, "t")
    batches = make_batches(items, n * length, pad_id=0)
    tokens = n * length

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            out = fn()
        count.last = out
        return counter.get_total_flops() / tokens

    flops = {"forward": count(lambda: [model(input_ids=b.input_ids, attention_mask=b.attention_mask) for b in batches])}
    flops["forward + act. backward"] = count(lambda: run_pass(model, modules, batches, lambda b: (lambda n, s, a: None)))
    flops["covariance pass"] = count(lambda: fit_covariances(model, modules, batches, sample_seed=None))
    bases = {k: eigenbases(c) for k, c in count.last.items()}
    flops["Lambda* pass"] = count(lambda: fit_lambdas(model, modules, batches, bases, sample_seed=None))
    flops["query-gradient pass"] = count(lambda: query_gradient_sums(model, modules, batches, [0] * n, 1, per_token=False))
    directions = {k: v[:1].float() / n for k, v in count.last.items()}
    flops["scoring pass (F=1)"] = count(lambda: score_batches(model, modules, batches, directions, n, per_token=False))
    low = {k: truncate(v.double(), RANK).to(torch.float32) for k, v in directions.items()}
    flops[f"scoring pass (F=1, rank {RANK})"] = count(
        lambda: score_batches(model, modules, batches, low, n, per_token=False))
    return flops, model, modules


def gram_flops(d: int) -> int:
    """FLOPs per row of x^T x for x [N, d] as `curate.influence.factors.gram_blocks` forms it: its
    upper-triangle blocks (`gram_layout`)."""
    from curate.influence.factors import gram_layout

    return sum(2 * (r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in gram_layout(d))


def hooks_per_token(dims: list[tuple[int, int]], length: int, functions: int = 1, rank: int = RANK,
                    shared: list[bool] | None = None) -> dict[str, float]:
    """Analytic hook FLOPs per token for tracked Linears of (in, out) at sequences of `length`;
    `shared[m]`: module m reads the previous one's input (a Llama MLP's up projection after its
    gate), whose a^T a the covariance hooks reuse; `scoring_rank`: the scoring hooks with
    rank-`rank` query directions (`--query-rank`)."""
    shared = shared or [False] * len(dims)
    cov = sum((0 if same else gram_flops(i)) + gram_flops(o) for (i, o), same in zip(dims, shared, strict=True))
    lam = sum(min(2 * length * (o * o + i * i + o * i), 2 * o * i * (length + o + i)) for i, o in dims) / length
    score = sum(2 * functions * o * i + 2 * functions * min(i, o) for i, o in dims)
    score_rank = sum(2 * functions * rank * (o + i) + 2 * functions * rank for i, o in dims)
    return {"covariance": cov, "lambda": lam, "scoring": score, "scoring_rank": score_rank}


def model_flops(hidden: int, inter: int, layers: int, kv_dim: int, vocab: int, length: int) -> dict[str, float]:
    """Per-token FLOPs of a Llama/Qwen2-style model's forward and activation backward."""
    params = layers * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter)  # q, o, k, v, MLP
    attention = layers * 2 * 2 * length * hidden / 2 * 2  # QK^T and AV over the causal half, x2 flops
    forward = 2 * params + attention + 2 * hidden * vocab  # + lm_head
    return {"forward": forward, "backward": forward + attention}


def qwen7b(length: int) -> dict[str, float]:
    """Per-token FLOPs of the model passes and hooks for Qwen2.5-7B, MLP projections tracked."""
    h, f, layers = QWEN7B["hidden"], QWEN7B["inter"], QWEN7B["layers"]
    flops = model_flops(h, f, layers, QWEN7B["kv_heads"] * QWEN7B["head_dim"], 152064, length)
    dims = [(h, f), (h, f), (f, h)] * layers
    return {**flops, **hooks_per_token(dims, length, shared=[False, True, False] * layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--tflops", default="200,50", help="effective TFLOP/s: bf16 model passes, fp32 hook matmuls")
    args = parser.parse_args()
    measured, model, modules = measure(args.model, args.length)
    fwd = measured["forward"]
    dims = [(m.in_features, m.out_features) for m in modules.values()]
    hooks = hooks_per_token(dims, args.length, shared=[n.rsplit(".", 1)[-1] == "up_proj" for n in modules])
    print(f"# {args.model}: {len(modules)} tracked modules, sequences of {args.length} tokens; GFLOP per token")
    expected_hooks = {"covariance pass": hooks["covariance"], "Lambda* pass": hooks["lambda"],
                      "scoring pass (F=1)": hooks["scoring"], f"scoring pass (F=1, rank {RANK})": hooks["scoring_rank"]}
    base = measured["forward + act. backward"]
    print(f"{'pass':26s} {'measured':>10s} {'/ forward':>10s} {'hooks: measured':>16s} {'analytic':>10s}")
    for name, value in measured.items():
        extra = (f"{(value - base) / 1e9:16.4f} {expected_hooks[name] / 1e9:10.4f}" if name in expected_hooks else "")
        print(f"{name:26s} {value / 1e9:10.4f} {value / fwd:10.2f} {extra}")

    c = model.config
    analytic = model_flops(c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                           c.num_key_value_heads * (c.hidden_size // c.num_attention_heads), c.vocab_size, args.length)
    print(f"  analytic forward {analytic['forward'] / 1e9:.4f}, forward + act. backward "
          f"{(analytic['forward'] + analytic['backward']) / 1e9:.4f} GFLOP/token (the model used below for 7B)")

    bf16, fp32 = (float(x) * 1e12 for x in args.tflops.split(","))
    length = 4096
    q = qwen7b(length)
    model_pass = (q["forward"] + q["backward"]) / bf16
    print(f"\n# Qwen2.5-7B, MLP tracked (84 modules), {length}-token traces; seconds per token at "
          f"{bf16 / 1e12:.0f} TFLOP/s (model, bf16) and {fp32 / 1e12:.0f} TFLOP/s (hooks, fp32)")
    print(f"  model forward {q['forward'] / 1e9:.1f} GFLOP/token, activation backward {q['backward'] / 1e9:.1f}; "
          f"hooks: covariance {q['covariance'] / 1e9:.1f}, Lambda* {q['lambda'] / 1e9:.1f}, "
          f"scoring {q['scoring'] / 1e9:.1f} per query function ({q['scoring_rank'] / 1e9:.2f} at rank {RANK})")
    fit = {"covariances (fit set)": model_pass + q["covariance"] / fp32,
           "Lambda* (fit set)": model_pass + q["lambda"] / fp32}
    scoring = {"scoring, 2 sets x 3 functions": model_pass + 6 * q["scoring"] / fp32,
               f"  the same at --query-rank {RANK}": model_pass + 6 * q["scoring_rank"] / fp32}
    pools = (17_000, 114_000)

    def hours(per_token: float, pool: int, fit_set: bool) -> float:
        return per_token * (min(5000, pool) if fit_set else pool) * length / 3600

    def row(name: str, cells) -> None:
        print(f"{name:34s} " + " ".join(f"{c:12.1f}" for c in cells))

    print(f"\n{'stage':34s} {'17k traces':>12s} {'114k traces':>12s}   (GPU-hours; fit set = min(5000, pool))")
    for name, per_token in fit.items():
        row(name, [hours(per_token, p, True) for p in pools])
    for name, per_token in scoring.items():
        row(name, [hours(per_token, p, False) for p in pools])
    for label, per_token in zip(("total", f"total at --query-rank {RANK}"), scoring.values(), strict=True):
        row(label, [sum(hours(t, p, True) for t in fit.values()) + hours(per_token, p, False) for p in pools])

if __name__ == "__main__":
    main()
