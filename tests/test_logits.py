"""The output head at chosen positions only: the same logits, losses and gradients as the full head."""

from __future__ import annotations

import pytest
import torch

from curate.logits import logits_at
from curate.training.loss import completion_loss
from tests.tiny import tiny_llama


def tiny_gemma2():
    """A Gemma2 (soft-capped logits: tanh after the head) in float64."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=2.0)
    config._attn_implementation = "eager"  # Gemma2 has no SDPA path
    return Gemma2ForCausalLM(config).double().eval()


def batch(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 48, (3, 9), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # right padding
    labels = input_ids.clone()
    labels[:, :3] = -100  # the prompt
    labels[1, 6:] = -100
    labels[2, 3:5] = -100  # a gap inside a row
    return input_ids, attention_mask, labels


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma2], ids=["llama", "gemma2-softcap"])
def test_logits_at_are_the_full_logits_at_those_positions(make):
    model = make()
    input_ids, attention_mask, labels = batch()
    keep = labels != -100
    full = model(input_ids=input_ids, attention_mask=attention_mask).logits
    part = logits_at(model, keep, input_ids=input_ids, attention_mask=attention_mask)
    assert part.shape == (int(keep.sum()), 48)
    torch.testing.assert_close(part, full[keep], rtol=0, atol=1e-12)
    if make is tiny_gemma2:
        assert part.abs().max() <= 2.0  # the soft cap, applied after the head, still applies


@pytest.mark.parametrize("per_token", [None, 17])
def test_completion_loss_is_the_models_loss_with_the_same_gradients(per_token):
    model = tiny_llama().train()
    input_ids, attention_mask, labels = batch()
    extra = {} if per_token is None else {"num_items_in_batch": torch.tensor(per_token)}
    reference = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra).loss
    expected = torch.autograd.grad(reference, list(model.parameters()))
    ours = completion_loss(model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels},
                           None if per_token is None else torch.tensor(per_token))
    got = torch.autograd.grad(ours, list(model.parameters()))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_a_model_without_a_head_is_refused():
    from transformers import LlamaConfig, LlamaModel

    with pytest.raises(ValueError, match="no output embeddings"):
        logits_at(LlamaModel(LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)),
                  torch.ones(1, 3, dtype=torch.bool), input_ids=torch.zeros(1, 3, dtype=torch.long))
