"""Tiny models and token data for the influence tests (float64 where exactness is the point)."""

from __future__ import annotations

import torch

from curate.influence.tokens import Tokenized


def tiny_llama(*, vocab: int = 48, hidden: int = 12, inter: int = 20, layers: int = 2, seed: int = 0,
               dtype=torch.float64, bias: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        mlp_bias=bias, attention_bias=bias, tie_word_embeddings=False,
    )
    # SDPA keeps float64 throughout; transformers' eager attention takes its softmax in float32.
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(dtype).eval()
    # Random init gives near-uniform predictions; larger weights make the curvature less trivial.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    return model


def random_examples(n: int, *, vocab: int = 48, min_len: int = 6, max_len: int = 14, seed: int = 1,
                    prefix: str = "ex") -> list[Tokenized]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
        start = int(torch.randint(1, length - 1, (1,), generator=gen))
        out.append(Tokenized(f"{prefix}{i}", tuple(ids), start, False, length))
    return out


def autograd_example_grads(model, modules: dict, item: Tokenized, *, sample_seed=None) -> dict:
    """grad of log p(response | prompt) for one example w.r.t. each tracked layer's [W | b]."""
    from curate.influence.batches import make_batches, response_logprobs

    (batch,) = make_batches([item], 10**9, pad_id=0)
    params = []
    for m in modules.values():
        params.append(m.weight)
        if m.bias is not None:
            params.append(m.bias)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.zero_grad()
    logp, _ = response_logprobs(model, batch, sample_seed=sample_seed)
    logp.sum().backward()
    grads = {}
    for name, m in modules.items():
        g = m.weight.grad.detach().clone()
        if m.bias is not None:
            g = torch.cat([g, m.bias.grad.detach().clone().unsqueeze(1)], dim=1)
        grads[name] = g
    for p in params:
        p.grad = None
        p.requires_grad_(False)
    return grads


def tiny_chat_llama(seed: int = 0):
    """(model, tokenizer): a 2-layer float64 Llama (hidden 16) over the packaged SmolLM2 tokenizer,
    for tests that run `score_pool` on chat examples."""
    from pathlib import Path

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(Path(__file__).parents[1] / "curate" / "resources" / "smollm2_tokenizer")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)).double().eval()
    return model, tok


def add_example(i: int, answer: str):
    """A chat example asking to add i and i, answered by `answer`."""
    from curate.data.example import Example

    return Example(f"p:{i}", ({"role": "user", "content": f"Add {i} and {i}."}, {"role": "assistant", "content": answer}))
