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

ROOT = Path(__file__).parents[1]
JOB = Path(__file__).parent / "distributed_job.py"


def _run(work: Path, fisher: str, nproc: int) -> None:
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, *launcher, str(JOB), str(work), fisher], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_two_gloo_ranks_equal_one_process(tmp_path, fisher):
    _run(tmp_path / "one", fisher, 1)
    _run(tmp_path / "two", fisher, 2)
    one, two = (pl.read_parquet(tmp_path / w / "scores.parquet") for w in ("one", "two"))
    assert one["curate_id"].to_list() == two["curate_id"].to_list() and one.height == 11
    for col in [c for c in one.columns if c.startswith("curate_influence_")] + ["curate_nll"]:
        a, b = one[col].to_numpy(), two[col].to_numpy()
        assert abs(a - b).max() <= 1e-10 * abs(a).max(), col
    # The preconditioned query directions (compared, not eigenvectors, whose signs are arbitrary).
    (d1,), (d2,) = ((tmp_path / w / "queries").glob("q-*.safetensors") for w in ("one", "two"))
    v1, v2 = load_tensors(d1), load_tensors(d2)
    for name in v1:
        assert v1[name].dtype == torch.float64
        assert (v1[name] - v2[name]).abs().max() <= 1e-10 * v1[name].abs().max(), name
    # each rank wrote its own contiguous range of the 4 chunks
    assert len(list((tmp_path / "two" / "scores").glob("chunk-*.parquet"))) == 4
