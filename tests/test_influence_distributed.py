"""`score_pool` under torch.distributed (2 gloo processes on CPU, torch's own launcher) equals one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from curate.stages import load_tensors
from tests import distributed_job

ROOT = Path(__file__).parents[1]
JOB = Path(__file__).parent / "distributed_job.py"
FISHERS = ["empirical", "true"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Every Fisher setting scored by 2 gloo ranks in one launch (each process start costs seconds of
    imports); the test below compares them with this process running the same job alone."""
    work = tmp_path_factory.mktemp("two-ranks")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, *launcher, str(JOB), str(work), *FISHERS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.mark.parametrize("fisher", FISHERS)
def test_two_gloo_ranks_equal_one_process(tmp_path, two_ranks, fisher):
    assert "RANK" not in os.environ and not torch.distributed.is_initialized()  # alone, in this process
    distributed_job.main(tmp_path, [fisher])
    one_dir, two_dir = tmp_path / fisher, two_ranks / fisher
    one, two = (pl.read_parquet(w / "scores.parquet") for w in (one_dir, two_dir))
    assert one["curate_id"].to_list() == two["curate_id"].to_list() and one.height == 11
    for col in [c for c in one.columns if c.startswith("curate_influence_")] + ["curate_nll"]:
        a, b = one[col].to_numpy(), two[col].to_numpy()
        assert abs(a - b).max() <= 1e-10 * abs(a).max(), col
    # The preconditioned query directions (compared, not eigenvectors, whose signs are arbitrary).
    (d1,), (d2,) = ((w / "queries").glob("q-*.safetensors") for w in (one_dir, two_dir))
    v1, v2 = load_tensors(d1), load_tensors(d2)
    for name in v1:
        assert v1[name].dtype == torch.float64
        assert (v1[name] - v2[name]).abs().max() <= 1e-10 * v1[name].abs().max(), name
    # each rank wrote its own contiguous range of the 4 chunks
    assert len(list((two_dir / "scores").glob("chunk-*.parquet"))) == 4
