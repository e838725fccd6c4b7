"""An audit's fine-tunes several at a time (`curate.audit.parallel`): forked children, their
records back in the parent, errors and dead children reported, the worker count from cores and memory."""

from __future__ import annotations

import os

import pytest

from curate.audit import parallel
from curate.audit.parallel import default_workers, run_all, training_bytes
from curate.errors import CurateError, DataError
from curate.training import TrainConfig


def record(key: str) -> dict:
    import torch

    return {"key": key, "pid": os.getpid(), "threads": torch.get_num_threads()}


def test_run_all_runs_each_key_once_in_forked_children_with_their_threads():
    keys = [f"k{i}" for i in range(6)]
    out = dict(run_all(keys, record, workers=2, threads=1))
    assert sorted(out) == keys and all(out[k]["key"] == k for k in keys)
    assert all(r["pid"] != os.getpid() for r in out.values()) and {r["threads"] for r in out.values()} == {1}
    assert parallel._RUN is None  # the job is not left behind for a later fork
    # one worker: in this process, in order
    assert [k for k, r in run_all(keys, record, workers=1, threads=1) if r["pid"] == os.getpid()] == keys


def test_an_error_in_a_child_is_raised_here_after_the_finished_runs():
    def run(key: str) -> dict:
        if key == "k3":
            raise DataError("row 7: no answer")
        return record(key)

    got = []
    with pytest.raises(DataError, match="row 7: no answer"):
        for key, _ in run_all([f"k{i}" for i in range(4)], run, workers=2, threads=1):
            got.append(key)
    assert "k3" not in got and parallel._RUN is None


def test_a_child_that_dies_is_named_with_the_way_out():
    def run(key: str) -> dict:
        if key == "k1":
            os._exit(9)  # as the kernel's OOM killer would leave it
        return record(key)

    with pytest.raises(CurateError, match="process died.*--workers 1"):
        list(run_all(["k0", "k1", "k2"], run, workers=2, threads=1))


def test_default_workers_from_cores_runs_memory_and_device(tiny_model_dir, monkeypatch):
    from curate.models import load_model

    model, _ = load_model(str(tiny_model_dir))
    train = TrainConfig(batch_size=8, max_length=512, device="cpu", gradient_checkpointing=False)
    need = training_bytes(model, train)
    params = sum(p.numel() for p in model.parameters())
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    assert need == 16 * params + 68 * hidden * layers * 8 * 512
    checkpointed = training_bytes(model, TrainConfig(batch_size=8, max_length=512, gradient_checkpointing=True))
    assert checkpointed == 16 * params + (68 * hidden + 4 * hidden * layers) * 8 * 512 < need
    assert training_bytes(model, TrainConfig(batch_size=8, max_length=512, gradient_checkpointing=False, lora_r=8)) < need

    monkeypatch.setattr(parallel, "available_memory", lambda: 100 * need)
    assert default_workers(model, train, 18, device="cpu", threads=4) == 4  # one per thread
    assert default_workers(model, train, 3, device="cpu", threads=4) == 3  # no more than the runs
    assert default_workers(model, train, 1, device="cpu", threads=4) == 1
    assert default_workers(model, train, 18, device="cuda", threads=4) == 1  # the fine-tunes would share it
    monkeypatch.setattr(parallel, "available_memory", lambda: 5 * need)
    assert default_workers(model, train, 18, device="cpu", threads=4) == 2  # half the memory holds two
    monkeypatch.setattr(parallel, "available_memory", lambda: need)
    assert default_workers(model, train, 18, device="cpu", threads=4) == 1
    monkeypatch.setattr(parallel, "available_memory", lambda: None)  # unknown: the cores decide
    assert default_workers(model, train, 18, device="cpu", threads=2) == 2
