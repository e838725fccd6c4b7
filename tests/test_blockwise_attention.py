"""Blockwise attention: the same model outputs and forward-mode derivatives as SDPA."""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

import curate.influence.blockwise_attention as bw
from curate.influence.batches import make_batches
from tests.tiny import random_examples, tiny_llama


def test_blockwise_matches_sdpa_values_and_tangents(monkeypatch):
    monkeypatch.setattr(bw, "BLOCK", 4)  # several blocks per sequence
    model = tiny_llama(seed=2)  # 2 query heads share 1 key/value head (grouped-query attention)
    batch = make_batches(random_examples(5, seed=3, min_len=6, max_len=14), 10**6, 0)[0]
    assert batch.attention_mask.min() == 0  # padded rows: the boolean-mask path
    name = "model.layers.0.mlp.up_proj.weight"
    weight = dict(model.named_parameters())[name].detach()
    tangent = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=weight.dtype)

    def logits(params):
        return functional_call(model, params, (), {"input_ids": batch.input_ids,
                                                   "attention_mask": batch.attention_mask}).logits

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        ref, ref_t = jvp(logits, ({name: weight},), ({name: tangent},))
    with torch.no_grad(), bw.using_blockwise(model):
        got, got_t = jvp(logits, ({name: weight},), ({name: tangent},))
    assert model.config._attn_implementation == "sdpa"  # restored
    keep = batch.attention_mask.bool()
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_t[keep], ref_t[keep], rtol=1e-10, atol=1e-12)

    # an unpadded batch takes the causal path (SDPA's mask is None)
    single = make_batches(random_examples(1, seed=4, min_len=12, max_len=12), 10**6, 0)[0]
    with torch.no_grad():
        plain = model(input_ids=single.input_ids).logits
        with bw.using_blockwise(model):
            blocked = model(input_ids=single.input_ids).logits
    torch.testing.assert_close(blocked, plain, rtol=1e-12, atol=1e-12)
