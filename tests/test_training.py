"""Short TRL SFT runs on a tiny Llama: loss per step, completion-only masking, resume, LoRA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from curate.errors import MissingDependencyError, UsageError
from curate.training import TrainConfig, build_trainer, load_trained, train_variant

ROWS = [
    {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                  {"role": "assistant", "content": "2 + 3 = 5. The answer is \\boxed{5}."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Blue."}]},
]


@pytest.fixture
def pool(tmp_path, write_jsonl):
    from curate.data import load_pool

    return load_pool(write_jsonl(tmp_path / "pool.jsonl", ROWS))


def config(**overrides) -> TrainConfig:
    # Both rows in every step (a repeated batch), a high constant rate: the loss must fall fast.
    settings = dict(max_steps=4, batch_size=2, learning_rate=1e-2, lr_scheduler="constant", warmup=0,
                    max_length=256, save_steps=4, gradient_checkpointing=False, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def test_loss_logged_every_step_decreases_and_resumes(tiny_model_dir, pool, tmp_path):
    out = tmp_path / "run"
    first = train_variant(str(tiny_model_dir), pool, config(max_steps=4), out)
    assert [s for s, _ in first.loss_curve] == [1, 2, 3, 4] and first.steps_run == [1, 2, 3, 4]
    assert first.resumed_from is None and (out / "checkpoint-4").is_dir() and (out / "model").is_dir()
    assert first.examples_per_step == 2 and first.examples_seen == 8
    assert 0 < first.completion_tokens_seen < first.tokens_seen

    second = train_variant(str(tiny_model_dir), pool, config(max_steps=8), out)
    assert second.resumed_from == str(out / "checkpoint-4")
    assert second.steps_run == [5, 6, 7, 8]  # resumed: steps 1-4 were not run again
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [1, 2, 3, 4, 5, 6, 7, 8]
    curve = second.loss_curve
    assert [s for s, _ in curve] == list(range(1, 9))
    assert curve[-1][1] < curve[0][1] - 0.5, curve  # nats/token, on the same batch every step
    # Every step sees the same two rows, so the counts carried over the resume double exactly.
    assert second.tokens_seen == 2 * first.tokens_seen
    assert second.completion_tokens_seen == 2 * first.completion_tokens_seen
    assert json.loads((out / "train.json").read_text())["steps"] == 8


def test_prompt_tokens_are_masked(tiny_model_dir, pool, tmp_path):
    trainer = build_trainer(str(tiny_model_dir), pool, config(), tmp_path / "run")
    tokenizer = trainer.processing_class
    rows = [trainer.train_dataset[i] for i in range(2)]
    for row, raw in zip(rows, ROWS, strict=True):
        ids, labels = row["input_ids"], row["labels"]
        start = next(i for i, label in enumerate(labels) if label != -100)
        assert all(label == -100 for label in labels[:start])  # the whole prompt, system turn included
        assert labels[start:] == ids[start:]
        assert tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")
        assert tokenizer.decode(ids[start:]).startswith(raw["messages"][-1]["content"])
    batch = trainer.data_collator(rows)
    short = min(range(2), key=lambda i: len(rows[i]["input_ids"]))
    n = len(rows[short]["input_ids"])
    assert (batch["labels"][short, n:] == -100).all()  # padding carries no loss either
    assert batch["labels"].shape == batch["input_ids"].shape


def test_lora_saves_an_adapter_that_loads_merged(tiny_model_dir, pool, tmp_path):
    import warnings

    pytest.importorskip("peft")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_variant(str(tiny_model_dir), pool, config(max_steps=2, lora_r=4, save_steps=2,
                                                                 gradient_checkpointing=True), tmp_path / "lora")
        assert result.lora and (Path(result.model_dir) / "adapter_config.json").is_file()
        model, _ = load_trained(Path(result.model_dir), str(tiny_model_dir))
    assert not any("lora" in name for name, _ in model.named_parameters())
    # peft's read of transformers' deprecated `is_gradient_checkpointing` is not shown to users
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_lora_without_peft_gives_an_install_hint(tiny_model_dir, pool, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install"):
        train_variant(str(tiny_model_dir), pool, config(lora_r=4), tmp_path / "x")


@pytest.mark.parametrize("bad", [{"max_steps": 0}, {"lr_scheduler": "nope"}, {"lora_r": -1},
                                 {"warmup": 1.5}, {"device": "tpu"}])
def test_config_is_range_checked(bad):
    with pytest.raises(UsageError, match=next(iter(bad))):
        config(**bad)


def test_warmup_fraction_becomes_steps():
    assert config(max_steps=100, warmup=0.03).warmup_steps == 3
    assert config(max_steps=10, warmup=0.05).warmup_steps == 1  # rounded up
    assert config(max_steps=10, warmup=4).warmup_steps == 4
    assert config(warmup=0).warmup_steps == 0


def test_cpu_loss_is_trls_fused_loss_on_the_same_batch(tiny_model_dir, pool, tmp_path):
    """On CPU the trainer skips TRL's tiled LM head (a GPU memory saver, ~4x slower here) for the
    model's own loss: the same mean NLL over completion tokens, and the same tokens counted."""
    from trl import SFTTrainer

    trainer = build_trainer(str(tiny_model_dir), pool, config(), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    plain = trainer.compute_loss(trainer.model, dict(batch))
    fused = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    assert plain.item() == pytest.approx(fused.item(), rel=1e-5)
    assert trainer._metrics["train"]["num_tokens"] == [2 * int(batch["attention_mask"].sum())]


def test_a_shared_start_trains_exactly_as_a_fresh_load(tiny_model_dir, pool, tmp_path):
    """The audit loads the base and tokenises the pool once (`prepare_start`); a run on a subset
    from that start is the run `train_variant` makes from disk: same rows, losses and weights."""
    import torch

    from curate.training import fine_tune, prepare_start

    start = prepare_start(str(tiny_model_dir), pool, config())
    before = {k: v.clone() for k, v in start.model.state_dict().items()}
    subset = pool.with_dataset(pool.dataset.select([1]))
    fresh, fresh_model = fine_tune(str(tiny_model_dir), subset, config(), tmp_path / "fresh")
    shared, shared_model = fine_tune(str(tiny_model_dir), subset, config(), tmp_path / "shared", start=start,
                                     save_model=False)
    assert shared.rows == fresh.rows == 1 and shared.tokens_seen == fresh.tokens_seen > 0
    assert shared.loss_curve == fresh.loss_curve
    assert shared.model_dir is None and not (tmp_path / "shared" / "model").exists()
    for name, value in fresh_model.state_dict().items():
        assert torch.equal(shared_model.state_dict()[name], value), name
    assert all(torch.equal(v, start.model.state_dict()[k]) for k, v in before.items())  # the start is untouched
    with pytest.raises(ValueError, match="max_length"):
        fine_tune(str(tiny_model_dir), subset, config(max_length=128), tmp_path / "other", start=start)
