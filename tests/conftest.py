"""Shared fixtures: the tiny hand-made data files in tests/fixtures/data/ and a tiny saved Llama."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "data"
TOKENIZER = Path(__file__).parents[1] / "curate" / "resources" / "smollm2_tokenizer"


FIRST = ("test_demo.py",)  # the longest module (the full demo, ~2.5 min): started first under pytest-xdist


def pytest_collection_modifyitems(items: list) -> None:
    """Run the longest modules first, so `make test`'s parallel workers (`-n auto --dist loadfile`)
    are not left waiting on one of them at the end; the order within a module is kept."""
    items.sort(key=lambda item: item.path.name not in FIRST)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' models are tiny: one intra-op thread is as fast as two on an idle machine and
    far faster when another process holds a core (`curate.cpu`). `CURATE_THREADS` carries the
    choice into `curate.models.load_model` and into the CLI subprocesses the tests start."""
    import os

    import torch

    os.environ["CURATE_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def fixtures() -> Path:
    """The folder of tiny data files (see its ATTRIBUTION.md)."""
    return FIXTURES


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[dict]], Path]:
    """A function writing rows as JSON lines to a path (parents created) and returning the path."""

    def write(path: Path, rows: list[dict]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 16) with the packaged SmolLM2 tokenizer, saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
