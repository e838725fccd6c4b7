# Run: .venv/bin/python benchmarks/bench_token_memory.py [--lengths 1024,4096,8192]
"""Peak memory of exact per-token influence (forward-mode AD) by attention kernel.

A Llama with 8 heads (hidden 256, 2 layers, vocab 512), one sequence of T tokens, `torch.func.jvp`
of the per-token log-probabilities along a random direction on the MLP weights: SDPA's math
backend (the only SDPA backend with forward AD; it materialises every head's T x T weights and
their tangents) against curate's blockwise attention (query blocks of 256). Each run is a fresh
subprocess; reported: its peak RSS increase over the loaded model, and the time, one thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(kind: str, length: int) -> dict:
    import torch
    from torch.func import functional_call, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import LlamaConfig, LlamaForCausalLM

    from curate.influence.blockwise_attention import using_blockwise

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                                         max_position_embeddings=length)).eval()
    model.config._attn_implementation = "sdpa"
    ids = torch.randint(0, 512, (1, length))
    params = {n: p.detach() for n, p in model.named_parameters() if ".mlp." in n}
    tangents = {n: torch.randn_like(p) for n, p in params.items()}

    def logp(p):
        logits = functional_call(model, p, (), {"input_ids": ids}).logits[:, :-1]
        return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    context = sdpa_kernel(SDPBackend.MATH) if kind == "sdpa-math" else using_blockwise(model)
    with torch.no_grad(), context:
        _, tangent = jvp(logp, (params,), (tangents,))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "T": length, "mb": (peak - base) / 1024, "s": seconds, "checksum": float(tangent.sum())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,4096,8192")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        kind, length = args._one.split(":")
        print(json.dumps(run_one(kind, int(length))))
        return
    for length in map(int, args.lengths.split(",")):
        results = {}
        for kind in ("sdpa-math", "blockwise"):
            out = subprocess.run([sys.executable, __file__, "--_one", f"{kind}:{length}"], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"T={length:6d} {kind:10s} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            results[kind] = json.loads(out.stdout)
            r = results[kind]
            print(f"T={length:6d} {kind:10s} peak +{r['mb']:8.0f} MB  {r['s']:6.2f} s  checksum {r['checksum']:.6g}")
        if len(results) == 2:
            print(f"T={length:6d} memory ratio sdpa-math / blockwise: {results['sdpa-math']['mb'] / max(results['blockwise']['mb'], 1):.1f}x")


if __name__ == "__main__":
    main()
