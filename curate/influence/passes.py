"""One forward+backward over a list of batches, with the tracked layers tapped."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from curate.influence.batches import Batch, response_logprobs
from curate.influence.capture import Sink, tapped


def run_pass(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    sink: Callable[[Batch], Sink],
    *,
    sample_seed: int | None = None,
    weights: Callable[[Batch], torch.Tensor] | None = None,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
) -> None:
    """For each batch: forward, loss L = -sum_b w_b * sum_t log p(target_bt), backward.

    `sink(batch)` returns the per-layer callback for that batch (it receives s = dL/d(output) and
    a, unreduced over positions). Padding positions carry s = 0, since right padding never feeds
    the loss, but callbacks that average over positions must still mask them. `weights(batch)`
    ([B]) scales each example's loss (e.g. 1/n_tokens for per-token objectives); `on_batch`
    receives the per-token log-probs [B, T-1] (detached) after the backward.
    """
    device = next(model.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        with tapped(model, modules, sink(batch)):
            logp, _ = response_logprobs(model, batch, sample_seed=sample_seed)
            per_example = logp.sum(dim=1)
            if weights is not None:
                per_example = per_example * weights(batch).to(per_example.dtype)
            loss = -per_example.sum()
            loss.backward()
        if on_batch is not None:
            on_batch(batch, logp.detach())
        del logp, per_example, loss  # the graph holds the hooks, which hold this batch's sink


class PairCache:
    """Keeps every (s, a) pair of one pass, in memory and then on disk, to replay them later.

    EK-FAC needs two passes over the fit data: covariances, then (in their eigenbasis) the
    eigenvalue correction. The second needs exactly the same s and a (labels are seeded per
    example), so when they fit the second model pass is replaced by a replay. Batches are kept in
    memory up to `budget_bytes`; past it, each finished batch is written to `spill_dir` (one
    torch file per batch) while the disk total stays under `spill_bytes`. On a CPU reading a
    batch back is far cheaper than recomputing it (SmolLM2: ~0.8 MB of pairs per token, read at
    ~1 GB/s, against ~16 ms per token for a forward and backward); on a GPU it is not, which is
    why the engine spills only on CPU. Past both budgets the cache empties itself and `usable`
    turns False: callers then run the pass. `close()` deletes the spilled files.
    """

    def __init__(self, budget_bytes: int, spill_dir: Path | None = None, spill_bytes: int = 0) -> None:
        self.budget = budget_bytes
        self.spill_dir = spill_dir
        self.spill_budget = spill_bytes if spill_dir is not None else 0
        # (batch, pairs in memory | file of pairs on disk)
        self.entries: list[tuple[Batch, list[tuple[str, torch.Tensor, torch.Tensor]] | Path]] = []
        self.bytes = 0  # in memory
        self.spilled = 0  # on disk
        self.overflow = False
        self._open: tuple[int, int] | None = None  # (entry index, bytes) of the batch being recorded

    @property
    def usable(self) -> bool:
        return not self.overflow and bool(self.entries)

    def record(self, sink: Callable[[Batch], Sink]) -> Callable[[Batch], Sink]:
        """Wrap a sink factory so that every pair it receives is also kept; call `finish()` after
        the pass."""

        def factory(batch: Batch) -> Sink:
            self.finish()
            inner = sink(batch)
            pairs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
            seen: set[int] = set()  # gate and up projections share one input tensor
            if not self.overflow:
                self.entries.append((batch, pairs))
                self._open = (len(self.entries) - 1, 0)

            def keep(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
                inner(name, s, a)
                if self.overflow:
                    return
                size = s.numel() * s.element_size()
                if a.data_ptr() not in seen:
                    seen.add(a.data_ptr())
                    size += a.numel() * a.element_size()
                index, held = self._open
                self._open = (index, held + size)
                pairs.append((name, s, a))

            return keep

        return factory

    def finish(self) -> None:
        """Settle the batch recorded last: keep it in memory, write it to disk, or overflow."""
        if self._open is None or self.overflow:
            return
        index, size = self._open
        self._open = None
        batch, pairs = self.entries[index]
        if self.bytes + size <= self.budget:
            self.bytes += size
        elif self.spilled + size <= self.spill_budget and self._spill(index, batch, pairs):
            self.spilled += size
        else:
            self.overflow = True
            self.close()

    def _spill(self, index: int, batch: Batch, pairs) -> bool:
        """Write one batch's pairs to disk (each shared `a` once); False when the disk refuses."""
        host: dict[int, torch.Tensor] = {}  # gate and up share one input: one host copy

        def on_host(t: torch.Tensor) -> torch.Tensor:
            return host.setdefault(t.data_ptr(), t.cpu())

        path = self.spill_dir / f"batch-{index:06d}.pt"
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            torch.save([(n, s.cpu(), on_host(a)) for n, s, a in pairs], path)
        except OSError:  # e.g. a full disk: give up on the cache, run the model pass instead
            path.unlink(missing_ok=True)
            return False
        self.entries[index] = (batch, path)
        return True

    def replay(self, sink: Callable[[Batch], Sink], on_batch: Callable[[Batch, None], None] | None = None) -> None:
        for batch, pairs in self.entries:
            callback = sink(batch)
            if isinstance(pairs, Path):
                device = batch.input_ids.device
                pairs = [(n, s.to(device), a.to(device)) for n, s, a in torch.load(pairs, weights_only=True)]
            for name, s, a in pairs:
                callback(name, s, a)
            if on_batch is not None:
                on_batch(batch, None)

    def close(self) -> None:
        """Forget every pair and delete the spilled files."""
        self.entries.clear()
        self.bytes = self.spilled = 0
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
