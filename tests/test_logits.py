"""The output head at chosen positions only: the same logits, losses and gradients as the full head."""

from __future__ import annotations

import pytest
import torch

from curate.logits import (
    head_logprobs,
    head_product,
    head_target_logprobs,
    linear_cross_entropy,
    logits_at,
    returns_head_output,
)
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


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma2], ids=["llama-fused", "gemma2-softcap"])
@pytest.mark.parametrize("per_token", [None, 17])
def test_completion_loss_is_the_models_loss_with_the_same_gradients(make, per_token, monkeypatch):
    monkeypatch.setattr("curate.logits.CHUNK_BYTES", 2 * 4 * 48)  # the fused head two rows at a time
    model = make().train()
    assert returns_head_output(model, model.get_output_embeddings()) is (make is tiny_llama)
    input_ids, attention_mask, labels = batch()
    # transformers' loss from full logits, kept in float64 (its own loss casts them to float32)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    total = torch.nn.functional.cross_entropy(logits.reshape(-1, 48), labels[:, 1:].reshape(-1), reduction="sum")
    reference = total / (per_token or (labels[:, 1:] != -100).sum())
    expected = torch.autograd.grad(reference, list(model.parameters()))
    ours = completion_loss(model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels},
                           None if per_token is None else torch.tensor(per_token))
    got = torch.autograd.grad(ours, list(model.parameters()))
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("columns", [4096, 16], ids=["one-block", "three-blocks"])
def test_linear_cross_entropy_is_the_unfused_loss(rows, dtype, columns, monkeypatch):
    monkeypatch.setattr("curate.logits.BLOCK_COLUMNS", columns)  # 40 columns: one block, or 16 + 16 + 8
    gen = torch.Generator().manual_seed(0)
    hidden, weight, bias = (torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
                            for shape in ((10, 8), (40, 8), (40,)))
    targets = torch.randint(0, 40, (10,), generator=gen)
    exact = [x.detach().double().requires_grad_() for x in (hidden, weight, bias)]  # the same values, in float64
    reference = torch.nn.functional.cross_entropy(torch.nn.functional.linear(*exact), targets, reduction="sum")
    fused = linear_cross_entropy(hidden, weight, bias, targets, chunk_rows=rows)
    assert fused.dtype == torch.promote_types(dtype, torch.float32)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]  # the last: bfloat16's rounding
    torch.testing.assert_close(fused.double(), reference, rtol=tol, atol=tol)
    grads = torch.autograd.grad(3 * fused, [hidden, weight, bias])
    for got, want, x in zip(grads, torch.autograd.grad(3 * reference, exact), (hidden, weight, bias), strict=True):
        assert got.dtype == x.dtype
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    frozen = linear_cross_entropy(hidden, weight.detach(), None, targets, chunk_rows=rows)  # only hidden needs one
    (grad,) = torch.autograd.grad(frozen, [hidden])
    unfused = torch.nn.functional.cross_entropy(torch.nn.functional.linear(exact[0], exact[1].detach()), targets,
                                                reduction="sum")
    torch.testing.assert_close(grad.double(), torch.autograd.grad(unfused, [exact[0]])[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_product_in_blocks_is_one_product(dtype, with_bias, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    hidden, weight, bias = (torch.randn(*shape, generator=gen, dtype=dtype) for shape in ((7, 24), (300, 24), (300,)))
    bias = bias if with_bias else None
    whole = torch.nn.functional.linear(hidden, weight, bias)
    tol = {torch.float32: 1e-5, torch.float64: 1e-13}[dtype]
    for columns in (300, 128, 7):  # one block, an uneven last block, many narrow ones
        monkeypatch.setattr("curate.logits.BLOCK_COLUMNS", columns)
        out = torch.full((7, 300), float("nan"), dtype=dtype)
        assert head_product(hidden, weight, bias, out) is out
        # each logit is its 24-term dot product whatever the block (a narrow block may take
        # another kernel, so rounding, not bits)
        torch.testing.assert_close(out, whole, rtol=tol, atol=tol)


def test_a_model_without_a_head_is_refused():
    from transformers import LlamaConfig, LlamaModel

    with pytest.raises(ValueError, match="no output embeddings"):
        logits_at(LlamaModel(LlamaConfig(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)),
                  torch.ones(1, 3, dtype=torch.bool), input_ids=torch.zeros(1, 3, dtype=torch.long))


def test_head_logprobs_give_each_label_sets_gradient():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(11, 5, generator=gen, dtype=torch.float64), torch.randn(11, generator=gen,
                                                                                      dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 7), generator=gen)
    scale = torch.randn(2, 7, generator=gen, dtype=torch.float64)  # per-position loss weights
    reference = torch.log_softmax(torch.nn.functional.linear(hidden, weight, bias), dim=1).gather(1, labels.T).T
    fused = head_logprobs(hidden, weight, torch.nn.functional.linear(hidden.detach(), weight, bias), labels)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-13)
    for k in range(2):  # a backward from one label set, the other set's log-probs untouched
        (want,) = torch.autograd.grad((scale[k] * reference[k]).sum(), [hidden], retain_graph=True)
        (got,) = torch.autograd.grad((scale[k] * fused[k]).sum(), [hidden], retain_graph=True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="frozen"):
        head_logprobs(hidden, weight.requires_grad_(), torch.zeros(7, 11, dtype=torch.float64), labels)


@pytest.mark.parametrize("rows", [1, 4, None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_head_target_logprobs_are_the_log_softmax(rows, dtype):
    gen = torch.Generator().manual_seed(2)
    hidden, weight, bias = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((9, 8), (40, 8), (40,)))
    targets = torch.randint(0, 40, (9,), generator=gen)
    exact = torch.log_softmax(torch.nn.functional.linear(hidden, weight, bias), dim=-1).gather(1, targets[:, None])[:, 0]
    got = head_target_logprobs(hidden.to(dtype), weight.to(dtype), bias.to(dtype), targets, chunk_rows=rows)
    assert got.dtype == torch.promote_types(dtype, torch.float32) and got.shape == (9,)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 0.1}[dtype]  # the last: bfloat16 inputs
    torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol)


def test_response_logprobs_without_gradients_skip_the_full_logits(monkeypatch):
    """An evaluation (no gradients, data tokens) takes the head chunk by chunk from the hidden
    states: the same log-probs as the full logits' path, which it never calls."""
    import curate.influence.batches as batches
    from tests.tiny import random_examples, tiny_llama

    model = tiny_llama()
    for batch in batches.make_batches(random_examples(5), 40, pad_id=0):
        full, targets = batches.response_logprobs(model, batch)  # gradients on: the full logits
        assert full.requires_grad
        with torch.no_grad(), monkeypatch.context() as m:
            m.setattr(batches, "response_logits", None)
            fused, same = batches.response_logprobs(model, batch)
        assert torch.equal(same, targets) and fused.dtype == full.dtype
        torch.testing.assert_close(fused, full.detach(), rtol=0, atol=1e-12)
        assert (fused[~batch.loss_mask.bool()] == 0).all()
