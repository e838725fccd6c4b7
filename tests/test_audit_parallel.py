"""An audit's fine-tunes several at a time (`curate.audit.parallel`): forked children on one
thread, their records back in the parent, errors and dead children reported, the worker count
from cores, memory and device."""

from __future__ import annotations

import os
import sys

import pytest

from curate.audit import parallel
from curate.audit.parallel import check_workers, default_workers, run_all, training_bytes
from curate.errors import CurateError, DataError, UsageError
from curate.training import TrainConfig

linux = pytest.mark.skipif(sys.platform != "linux", reason="fine-tunes fork only on Linux")


def record(key: str) -> dict:
    import torch

    return {"key": key, "pid": os.getpid(), "threads": torch.get_num_threads()}


@linux
def test_run_all_runs_each_key_once_in_forked_children_on_one_thread(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    keys = [f"k{i}" for i in range(6)]
    out = dict(run_all(keys, record, workers=2))
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"  # off in the children only
    assert sorted(out) == keys and all(out[k]["key"] == k for k in keys)
    assert all(r["pid"] != os.getpid() for r in out.values()) and {r["threads"] for r in out.values()} == {1}
    assert parallel._RUN is None  # the job is not left behind for a later fork
    # one worker: in this process, in order
    assert [k for k, r in run_all(keys, record, workers=1) if r["pid"] == os.getpid()] == keys


@linux
def test_children_do_torch_work_after_the_parent_used_two_threads():
    """GNU OpenMP does not survive a fork: a child entering a parallel region its parent had
    opened would wait forever. The children run on one thread, so this returns."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(600, 600)
        (a @ a).sum()  # the parent's thread team is alive

        def work(key: str) -> dict:
            b = torch.randn(600, 600)
            return {"sum": float((b @ b).softmax(dim=1).sum()), "threads": torch.get_num_threads()}

        out = dict(run_all(["a", "b", "c"], work, workers=2))
    finally:
        torch.set_num_threads(before)
    assert {r["threads"] for r in out.values()} == {1} and all(r["sum"] == pytest.approx(600) for r in out.values())


@linux
def test_after_an_error_the_runs_under_way_come_back_then_it_is_raised():
    import time

    def run(key: str) -> dict:
        if key == "k0":
            raise DataError("row 7: no answer")
        time.sleep(0.5)  # k1 is under way when k0 fails
        return record(key)

    got = []
    with pytest.raises(DataError, match="row 7: no answer"):
        for key, _ in run_all([f"k{i}" for i in range(5)], run, workers=2):
            got.append(key)
    assert got == ["k1"] and parallel._RUN is None  # k1 finished and came back; k2-k4 never started


@linux
def test_a_child_that_dies_is_named_with_the_way_out():
    def run(key: str) -> dict:
        if key == "k1":
            os._exit(9)  # as the kernel's OOM killer would leave it
        return record(key)

    with pytest.raises(CurateError, match="process died.*fewer --workers"):
        list(run_all(["k0", "k1", "k2"], run, workers=2))


@linux
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

    monkeypatch.setattr(parallel, "cores", lambda: 4)
    monkeypatch.setattr(parallel, "available_memory", lambda: 100 * need)
    assert default_workers(model, train, 18, device="cpu", threads=4) == 4  # one per thread
    assert default_workers(model, train, 18, device="cpu", threads=16) == 4  # no more than the cores
    assert default_workers(model, train, 3, device="cpu", threads=4) == 3  # no more than the runs
    assert default_workers(model, train, 1, device="cpu", threads=4) == 1
    assert default_workers(model, train, 18, device="cuda", threads=4) == 1  # the fine-tunes would share it
    monkeypatch.setattr(parallel, "available_memory", lambda: 5 * need)
    assert default_workers(model, train, 18, device="cpu", threads=4) == 2  # half the memory holds two
    monkeypatch.setattr(parallel, "available_memory", lambda: need)
    assert default_workers(model, train, 18, device="cpu", threads=4) == 1
    monkeypatch.setattr(parallel, "available_memory", lambda: None)  # unknown: the cores decide
    assert default_workers(model, train, 18, device="cpu", threads=2) == 2


def test_more_than_one_worker_off_a_linux_cpu_is_refused():
    check_workers(1, "cuda")
    with pytest.raises(UsageError, match="--workers 2: .*only on a CPU"):
        check_workers(2, "cuda")
    if sys.platform == "linux":
        check_workers(2, "cpu")


class Unpicklable(Exception):
    def __init__(self, row: int, why: str):  # two arguments: unpickling calls it with one
        super().__init__(f"row {row}: {why}")


@linux
def test_an_error_that_cannot_travel_back_is_sent_as_its_text():
    def run(key: str) -> dict:
        raise Unpicklable(3, "bad answer")

    with pytest.raises(RuntimeError, match="Unpicklable: row 3: bad answer"):
        list(run_all(["k0", "k1"], run, workers=2))


@linux
def test_children_go_when_their_parent_is_killed(tmp_path):
    """A parent killed outright (SIGKILL, no cleanup) takes its children with it."""
    import signal
    import subprocess
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from curate.audit.parallel import run_all\n"
        "def run(key):\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "    return {}\n"
        "list(run_all(['a', 'b'], run, workers=2))\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    children = [int(parent.stdout.readline()) for _ in range(2)]
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in children if _running(pid)]
    assert not alive


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
