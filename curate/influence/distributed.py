"""Data-parallel influence scoring: one shard of the work per rank, sums reduced across ranks.

`torchrun --nproc-per-node N -m curate score ...` and `accelerate launch -m curate score ...` set
RANK / WORLD_SIZE; `Collective.from_env` joins the process group (nccl on GPUs, gloo on CPU)
and every stage of `score_pool` takes its part:
  covariances and Lambda*  each rank runs a contiguous range of the fit batches; the float64
                           sums and counts are all-reduced, so every rank holds the full factors
  eigendecompositions      module i is decomposed on rank i mod N and broadcast, instead of all
                           of them on rank 0 (84 decompositions of 18944^2 for a 7B model would
                           stall the job past the collective timeout)
  query gradients          each rank a range of the query batches, all-reduced
  scores                   each rank a contiguous range of the pool's chunks, written as chunk
                           files keyed by curate_id; after a barrier every rank reads them all
The batches are formed identically on every rank before they are divided, so the per-batch
arithmetic is the single-process run's and only the order of the sums differs. The work
directory must be on a filesystem every rank sees; rank 0 writes the stage manifests and the
factor and direction files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from curate.shard import Shard
from curate.stages import open_stage


class Collective:
    """Reductions over the ranks of the default process group; the identity on one process."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    @classmethod
    def from_env(cls, device: str) -> Collective:
        """Join the process group torchrun / accelerate describe in the environment (if any)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(Shard())
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return cls(Shard(dist.get_rank(), dist.get_world_size()))

    @property
    def distributed(self) -> bool:
        return self.shard.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.shard.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks, in place; returns it."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        if self.distributed:
            import torch.distributed as dist

            dist.broadcast(tensor, src=src)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable objects; small ones)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.shard.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def open_stage(self, folder: Path, manifest: dict[str, Any], *, overwrite: bool) -> Path:
        """`curate.stages.open_stage`, by rank 0 first (which may clear it), then the others."""
        if self.is_main:
            path = open_stage(folder, manifest, overwrite=overwrite)
        self.barrier()
        if not self.is_main:
            path = open_stage(folder, manifest, overwrite=False)
        return path

    def owner(self, index: int) -> int:
        """The rank that does item `index` of a round-robin assignment."""
        return index % self.shard.world_size
