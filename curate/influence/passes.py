"""One forward+backward over a list of batches, with the tracked layers tapped."""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.serialization import config as serialization_config

from curate.influence.batches import (
    Batch,
    at_kept,
    example_seed,
    response_hidden,
    response_logits,
    sampled_targets,
)
from curate.influence.capture import Sink, tapped
from curate.logits import fusable_head, head_logprobs


def run_pass(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    sink: Callable[[Batch], Sink],
    *,
    sample_seed: int | None = None,
    weights: Callable[[Batch], torch.Tensor] | None = None,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
    data_sink: Callable[[Batch], Sink | None] | None = None,
) -> None:
    """For each batch: forward, loss L = -sum_b w_b * sum_t log p(target_bt), backward.

    `sink(batch)` returns the per-layer callback for that batch (it receives s = dL/d(output) and
    a, unreduced over positions). Padding positions carry s = 0, since right padding never feeds
    the loss, but callbacks that average over positions must still mask them. `weights(batch)`
    ([B]) scales each example's loss (e.g. 1/n_tokens for per-token objectives); `on_batch`
    receives the per-token log-probs [B, T-1] (detached) after the backward.

    `data_sink` (with `sample_seed`): when `data_sink(batch)` returns a callback, a second
    backward through the same forward, with the data's own labels and the same weights, hands it
    that batch's pairs: the pairs a data-label pass (a scoring pass) would see, for one forward
    instead of two. `on_batch` then receives the data labels' log-probs.
    """
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    fused = fusable_head(model, head)  # else the head's own logits
    route: list[Sink] = []  # the callback of the backward running now

    def dispatch(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
        route[-1](name, s, a)

    for batch in batches:
        batch = batch.to(device)
        route.append(sink(batch))
        second = data_sink(batch) if data_sink is not None and sample_seed is not None else None
        with tapped(model, modules, dispatch):
            if fused:
                hidden, logits, keep = response_hidden(model, batch, head)
            else:
                logits, keep = response_logits(model, batch)
            data = batch.input_ids[:, 1:]
            targets = data if sample_seed is None else sampled_targets(
                logits, keep, data, [example_seed(sample_seed, i) for i in batch.ids])
            labels = torch.stack([t[keep] for t in ([targets] if second is None else [targets, data])])
            if fused:
                logps = head_logprobs(hidden, head.weight, logits, labels)
            else:
                logps = torch.stack([-torch.nn.functional.cross_entropy(logits, t, reduction="none") for t in labels])
            del logits
            for k, logp in enumerate(logps):
                if k:
                    route.append(second)
                logp = _backward(logp, keep, batch, weights, retain=k + 1 < len(logps))
        route.clear()
        if on_batch is not None:
            on_batch(batch, logp)
        del logps, logp, second  # the graph holds the hooks, which hold this batch's sinks


def _backward(logp: torch.Tensor, keep: torch.Tensor, batch: Batch,
              weights: Callable[[Batch], torch.Tensor] | None, *, retain: bool) -> torch.Tensor:
    """Backward of -sum_b w_b sum_t log p(target_bt), from the log-probs [N] at the `keep`
    positions; returns them detached, [B, T-1] (zero outside `keep`)."""
    logp = at_kept(logp, keep)
    per_example = logp.sum(dim=1)
    if weights is not None:
        per_example = per_example * weights(batch).to(per_example.dtype)
    (-per_example.sum()).backward(retain_graph=retain)
    return logp.detach()


# One tracked layer's pair in a cache: (name, a, [s of each backward]); a is shared by the backwards.
Pair = tuple[str, torch.Tensor, list[torch.Tensor]]


@dataclass
class SpilledBatch:
    """One batch's pairs on disk: the distinct inputs `a` in one file, each backward's output
    gradients in a file of their own, so a replay reads only the s it uses. `names[i]`: the layer
    of pair i; `inputs[i]`: the index of its a in the inputs file."""

    names: list[str]
    inputs: list[int]
    a_path: Path
    s_paths: list[Path]

    def pairs(self, label: int, device) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, s of backward `label`, a) per pair, memory-mapped: the pages come from the page
        cache and leave with the batch."""
        a_list = torch.load(self.a_path, weights_only=True, mmap=True)
        s_list = torch.load(self.s_paths[label], weights_only=True, mmap=True)
        return [(n, s.to(device), a_list[i].to(device)) for n, s, i in zip(self.names, s_list, self.inputs, strict=True)]


@dataclass
class _Recording:
    """The batch a cache is recording: its entry, the bytes so far, and per layer the pairs still
    awaiting the second backward's s (in call order)."""

    index: int
    size: int = 0
    awaiting: dict[str, deque[Pair]] = field(default_factory=dict)


class PairCache:
    """Keeps every (s, a) pair of one pass, in memory and then on disk, to replay them later.

    EK-FAC needs two passes over the fit data: covariances, then (in their eigenbasis) the
    eigenvalue correction. The second needs exactly the same s and a (labels are seeded per
    example), so when they fit the second model pass is replaced by a replay. Batches are kept in
    memory up to `budget_bytes`; past it, each finished batch is written to `spill_dir`
    (`SpilledBatch`: its inputs, and each backward's output gradients, in torch files) while the
    disk total stays under `spill_bytes`. On a CPU reading a
    batch back is far cheaper than recomputing it (SmolLM2: ~0.8 MB of pairs per token, read at
    ~1 GB/s, against ~16 ms per token for a forward and backward); on a GPU it is not, which is
    why the engine spills only on CPU. Past both budgets the cache empties itself and `usable`
    turns False: callers then run the pass. `close()` deletes the spilled files.

    A pass with a second backward (`run_pass`'s `data_sink`: the data labels' s after the
    sampled labels') keeps both s of each pair with their one a: `replay(label=0)` gives the
    first backward's pairs, `label=-1` the last's (the data labels' in either kind of pass).
    """

    def __init__(self, budget_bytes: int, spill_dir: Path | None = None, spill_bytes: int = 0) -> None:
        self.budget = budget_bytes
        self.spill_dir = spill_dir
        self.spill_budget = spill_bytes if spill_dir is not None else 0
        self.entries: list[tuple[Batch, list[Pair] | SpilledBatch]] = []  # pairs in memory | on disk
        self.bytes = 0  # in memory
        self.spilled = 0  # on disk
        self.overflow = False
        self._open: _Recording | None = None

    @property
    def usable(self) -> bool:
        return not self.overflow and bool(self.entries)

    def record(self, sink: Callable[[Batch], Sink]) -> Callable[[Batch], Sink]:
        """Wrap a sink factory so that every pair it receives is also kept; call `finish()` after
        the pass."""

        def factory(batch: Batch) -> Sink:
            self.finish()
            inner = sink(batch)
            pairs: list[Pair] = []
            seen: set[int] = set()  # gate and up projections share one input tensor
            if not self.overflow:
                self.entries.append((batch, pairs))
                self._open = _Recording(len(self.entries) - 1)

            def keep(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
                inner(name, s, a)
                if self.overflow:
                    return
                size = s.numel() * s.element_size()
                if a.data_ptr() not in seen:
                    seen.add(a.data_ptr())
                    size += a.numel() * a.element_size()
                self._open.size += size
                pair = (name, a, [s])
                self._open.awaiting.setdefault(name, deque()).append(pair)
                pairs.append(pair)

            return keep

        return factory

    def record_data(self) -> Callable[[Batch], Sink | None]:
        """A `run_pass` `data_sink` keeping each pair's second s (the data labels') beside its
        first (a layer called twice in a forward is matched call by call, in the same order);
        None (no second backward) once the cache has given up."""

        def factory(batch: Batch) -> Sink | None:
            if self.overflow or self._open is None:
                return None

            def keep(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
                if self.overflow:
                    return
                self._open.size += s.numel() * s.element_size()
                self._open.awaiting[name].popleft()[2].append(s)

            return keep

        return factory

    def finish(self) -> None:
        """Settle the batch recorded last: keep it in memory, write it to disk, or overflow."""
        if self._open is None or self.overflow:
            return
        index, size = self._open.index, self._open.size
        self._open = None
        batch, pairs = self.entries[index]
        if self.bytes + size <= self.budget:
            self.bytes += size
        elif self.spilled + size <= self.spill_budget and self._spill(index, batch, pairs):
            self.spilled += size
        else:
            self.overflow = True
            self.close()

    def _spill(self, index: int, batch: Batch, pairs: list[Pair]) -> bool:
        """Write one batch's pairs to disk (each shared `a` once, each backward's s in its own
        file); False when the disk refuses."""
        inputs: dict[int, int] = {}  # gate and up share one input: written once
        a_list: list[torch.Tensor] = []
        for _, a, _ in pairs:
            if inputs.setdefault(a.data_ptr(), len(a_list)) == len(a_list):
                a_list.append(a.cpu())
        stem = f"batch-{index:06d}"
        spilled = SpilledBatch([n for n, _, _ in pairs], [inputs[a.data_ptr()] for _, a, _ in pairs],
                               self.spill_dir / f"{stem}.a.pt",
                               [self.spill_dir / f"{stem}.s{k}.pt" for k in range(len(pairs[0][2]))])
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            # a temporary file read back once by this process: no CRC32 (a quarter of torch.save's time)
            with serialization_config.patch({"save.compute_crc32": False}):
                torch.save(a_list, spilled.a_path)
                for k, path in enumerate(spilled.s_paths):
                    torch.save([ss[k].cpu() for _, _, ss in pairs], path)
        except OSError:  # e.g. a full disk: give up on the cache, run the model pass instead
            for path in (spilled.a_path, *spilled.s_paths):
                path.unlink(missing_ok=True)
            return False
        self.entries[index] = (batch, spilled)
        return True

    def replay(self, sink: Callable[[Batch], Sink], on_batch: Callable[[Batch, None], None] | None = None,
               *, label: int = 0) -> None:
        """Hand every kept pair to `sink(batch)` as a pass would, batch by batch; `label` picks
        which backward's s (0: the first, -1: the last)."""
        for batch, pairs in self.entries:
            callback = sink(batch)
            if isinstance(pairs, SpilledBatch):
                chosen = pairs.pairs(label, batch.input_ids.device)
            else:
                chosen = [(name, ss[label], a) for name, a, ss in pairs]
            for name, s, a in chosen:
                callback(name, s, a)
            del chosen
            if on_batch is not None:
                on_batch(batch, None)

    def close(self) -> None:
        """Forget every pair and delete the spilled files."""
        self.entries.clear()
        self.bytes = self.spilled = 0
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
