"""The factor and query-direction stages of `score_pool`, and the replay that skips a pool pass.

`fit_factors` fits EK-FAC factors group by group (covariance pass, eigendecomposition, Lambda*
pass) into one safetensors file per module. `query_directions` preconditions one query set's
gradients with them. The fit examples are pool rows, so their scoring pass needs the output
gradients of their own labels: with the empirical Fisher those are the covariance pass's; with
the true Fisher (sampled labels) the covariance pass runs a second backward through the same
forward with the data labels. When the pass's pairs fit in `pair_cache_gb` plus the disk spill
they are kept (`FitReplay`): the eigenvalue correction replays the first backward's, and the fit
examples are scored from the data labels', so a pool that is its own fit set is run through the
model once.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from curate.errors import UsageError
from curate.influence.batches import Batch, make_batches
from curate.influence.context import ScoreContext
from curate.influence.directions import Direction, from_tensors, to_tensors, truncate
from curate.influence.distributed import Collective, Shard
from curate.influence.factors import (
    Covariance,
    ModuleFactors,
    eigenbases,
    fit_covariances,
    fit_lambdas,
)
from curate.influence.parts import (
    bases_path,
    covariance_tensors,
    lambda_tensors,
    part_path,
    save_part,
)
from curate.influence.passes import PairCache
from curate.influence.plan import GB, layer_dims
from curate.influence.scoring import query_gradient_sums, replay_scores, split_functions
from curate.influence.tokens import Tokenized
from curate.stages import fingerprint, load_tensors, save_tensors


def tokens_fingerprint(items: Sequence[Tokenized]) -> str:
    return fingerprint([(z.id, z.loss_start, z.input_ids) for z in items])


@dataclass
class FitReplay:
    """The covariance pass's (s, a) pairs with the data labels' s, one cache per module group.

    `items`: the fit examples, in the row order of the cached batches. `nll`: [n_fit] mean
    response NLL per token (nats) of each, recorded in the same pass.
    """

    items: list[Tokenized]
    caches: list[PairCache]
    nll: torch.Tensor

    def scores(self, directions: dict[str, Direction], *, per_token: bool) -> dict[Tokenized, tuple[torch.Tensor, float]]:
        """Fit example -> (scores [F] float64 summed over all groups, NLL), without the model, for
        the examples in the cached batches (all of them on one process; this rank's part under
        torch.distributed)."""
        total = sum(replay_scores(c, directions, len(self.items), per_token=per_token) for c in self.caches)
        rows = sorted({r for batch, _ in self.caches[0].entries for r in batch.rows})
        return {self.items[r]: (total[r], float(self.nll[r])) for r in rows}

    def close(self) -> None:
        """Delete the caches' spilled files."""
        for cache in self.caches:
            cache.close()


def _reduce_covariances(covs: dict[str, Covariance], group, coll: Collective, device) -> dict[str, Covariance]:
    """Sum every rank's covariance sums (a rank with no batches contributes zeros)."""
    out = {}
    for n, module in group.items():
        d_out, d_in = layer_dims(module)
        c = covs.get(n) or Covariance(torch.zeros(d_in, d_in, dtype=torch.float64, device=device),
                                      torch.zeros(d_out, d_out, dtype=torch.float64, device=device))
        count = coll.all_reduce(torch.tensor([float(c.count)], dtype=torch.float64, device=device))
        out[n] = Covariance(coll.all_reduce(c.a_sum), coll.all_reduce(c.s_sum), int(count.item()))
    return out


def _spread_eigenbases(covs: dict[str, Covariance], coll: Collective) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(Q_A, Q_S) per module, module i decomposed on rank i mod N and broadcast to the others.
    Empties `covs` as it goes, so a group's covariances and bases are not all held at once."""
    bases = {}
    for i, n in enumerate(list(covs)):
        c = covs.pop(n)
        owner = coll.owner(i)
        if coll.shard.rank == owner:
            q_a, q_s = (q.contiguous() for q in eigenbases(c))
        else:
            q_a, q_s = torch.empty_like(c.a_sum), torch.empty_like(c.s_sum)
        bases[n] = (coll.broadcast(q_a, owner), coll.broadcast(q_s, owner))
    return bases


def _park_bases(bases: dict[str, tuple[torch.Tensor, torch.Tensor]], folder: Path, dtype: torch.dtype, *,
                write: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Write the float64 (Q_A, Q_S) of a group to `folder`, one file per module (when `write`:
    rank 0), and return them in the model's compute dtype, which the eigenvalue correction uses:
    the float64 copies wait on disk instead of in memory until the factor files are written, and
    are read back a module at a time (a file's mapped pages leave with it)."""
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        for n, (q_a, q_s) in bases.items():
            save_tensors(folder / f"{n}.safetensors", {"q_a": q_a.cpu(), "q_s": q_s.cpu()})
    return {n: (q_a.to(dtype), q_s.to(dtype)) for n, (q_a, q_s) in bases.items()}


def _filled_lambda_sums(sums: dict[str, tuple[torch.Tensor, int]], group, device) -> dict[str, tuple[torch.Tensor, int]]:
    """Every module's (sum, count), zeros for modules a shard with no batches never saw."""
    return {n: sums.get(n, (torch.zeros(*layer_dims(m), dtype=torch.float64, device=device), 0)) for n, m in group.items()}


def _reduce_lambdas(sums: dict[str, tuple[torch.Tensor, int]], group, coll: Collective, device) -> dict[str, torch.Tensor]:
    """Lambda* per module: the all-reduced sums over examples divided by the number of examples."""
    out = {}
    for n, (total, count) in _filled_lambda_sums(sums, group, device).items():
        count_t = coll.all_reduce(torch.tensor([float(count)], dtype=torch.float64, device=device))
        out[n] = coll.all_reduce(total) / count_t
    return out


def _release(caches: list[PairCache]) -> bool:
    """Close `caches` (deleting their spilled files) and empty the list; returns False, the
    caller's new `keep` (no replay once a group's pairs are gone)."""
    for c in caches:
        c.close()
    caches.clear()
    return False


def _fresh_spill_root(stage: Path, coll: Collective) -> Path:
    """This process's folder for spilled pairs, emptied of what a killed run left (rank 0 also
    removes the folders of ranks a previous, wider run had)."""
    root = stage / ".pairs"
    mine = root / f"rank-{coll.shard.rank}"
    shutil.rmtree(mine, ignore_errors=True)
    if coll.is_main:
        for old in root.glob("rank-*"):
            if int(old.name.removeprefix("rank-")) >= coll.shard.world_size:
                shutil.rmtree(old, ignore_errors=True)
    return mine


def _factor_stage(ctx: ScoreContext, coll: Collective, factors_fp: str, n_fit: int) -> Path:
    config = ctx.config
    return coll.open_stage(ctx.work_dir / "factors", {
        "factors": factors_fp, "model": config.model, "groups": [list(g) for g in ctx.groups],
        "fisher": config.fisher, "seed": config.seed, "fit_on": config.fit_on,
        "fit_max_length": config.fit_max_length, "dtype": config.dtype, "fit_examples": n_fit,
    }, overwrite=ctx.overwrite)


def fit_factors(ctx: ScoreContext, fit_items: Sequence[Tokenized], factors_fp: str
                ) -> tuple[dict[str, Path], FitReplay | None]:
    """Stage "factors": fit (or reuse) every group's factors under `ctx.work_dir / "factors"`;
    module -> file, and the replay when one was kept.

    Under `ctx.coll` (torch.distributed) each rank runs its range of the fit batches and holds the
    reduced factors; rank 0 writes them.
    """
    model, groups, config, coll, progress, device = ctx.model, ctx.groups, ctx.config, ctx.coll, ctx.progress, ctx.device
    stage = _factor_stage(ctx, coll, factors_fp, len(fit_items))
    batches = coll.shard.take(make_batches(fit_items, config.batch_tokens, ctx.pad_id))
    spill_root = _fresh_spill_root(stage, coll)
    budget = int(config.resolved_pair_cache_gb * GB)
    spill = min(int(config.resolved_pair_spill_gb * GB), max(0, shutil.disk_usage(stage).free - 2 * GB))
    # The pass keeps the data labels' pairs (the scoring pass's) as long as every group's fit; a
    # resumed fit has no pairs.
    keep = True
    kept: list[PairCache] = []
    nll = torch.full((len(fit_items),), float("nan"), dtype=torch.float64)
    files: dict[str, Path] = {}
    cache = None
    try:
        for g, group in enumerate(groups):
            paths = {n: stage / f"{n}.safetensors" for n in group}
            files.update(paths)
            parked = stage / f".bases-{g}"
            if all(p.exists() for p in paths.values()):
                shutil.rmtree(parked, ignore_errors=True)  # left by a run killed after its last factor file
                keep = _release(kept)
                continue
            cache = PairCache(budget - sum(c.bytes for c in kept) if keep else budget, spill_root / f"group-{g}",
                              spill - sum(c.spilled for c in kept) if keep else spill)
            with progress.task(f"factors {g + 1}/{len(groups)}: covariances", len(batches), unit="batch") as adv:

                def on_batch(batch: Batch, logp: torch.Tensor, adv=adv) -> None:
                    adv(1)
                    nll[batch.rows] = (-logp.sum(dim=1).double() / batch.loss_mask.sum(dim=1).double()).cpu()

                covs = fit_covariances(model, group, batches, sample_seed=config.sample_seed, on_batch=on_batch,
                                       cache=cache, score_pairs=keep)
            covs = _reduce_covariances(covs, group, coll, device)
            bases = _park_bases(_spread_eigenbases(covs, coll), parked, next(model.parameters()).dtype,
                                write=coll.is_main)
            with progress.task(f"factors {g + 1}/{len(groups)}: eigenvalue correction", len(batches),
                               unit="batch") as adv:
                sums = fit_lambdas(model, group, batches, bases, sample_seed=config.sample_seed,
                                   on_batch=lambda b, lp: adv(1), cache=cache)
            del bases
            lams = _reduce_lambdas(sums, group, coll, device)
            if coll.is_main:
                for n in group:  # one module's float64 bases in memory at a time
                    save_tensors(paths[n], ModuleFactors(**load_tensors(parked / f"{n}.safetensors"),
                                                         lam=lams[n].cpu()).to_dict())
                shutil.rmtree(parked)
            coll.barrier()
            if keep and cache.usable:
                kept.append(cache)
            else:
                cache.close()
                keep = _release(kept)
            cache = None
    except BaseException:  # a crash or Ctrl-C leaves no spilled pairs behind
        _release([c for c in (cache, *kept) if c is not None])
        raise
    replay = FitReplay(list(fit_items), kept, nll) if keep and kept else None
    return files, replay


def fit_factor_part(ctx: ScoreContext, fit_items: Sequence[Tokenized], factors_fp: str, job: Shard
                    ) -> tuple[dict[str, Path], str | None]:
    """Stage "factors" as one independent `--shard i/N` job's next step (`curate.influence.parts`).

    Returns module -> factor file and None when every group is fitted; otherwise writes this
    job's part of the first unfinished step (covariances, or the eigenvalue correction once the
    covariance parts are merged) and returns a message saying what was written.
    """
    model, groups, config, progress, device = ctx.model, ctx.groups, ctx.config, ctx.progress, ctx.device
    solo = Collective(Shard())
    stage = _factor_stage(ctx, solo, factors_fp, len(fit_items))
    batches = job.take(make_batches(fit_items, config.batch_tokens, ctx.pad_id))
    files = {n: stage / f"{n}.safetensors" for group in groups for n in group}
    for g, group in enumerate(groups):
        if all(files[n].exists() for n in group):
            continue
        label = f"group {g + 1}/{len(groups)}"
        meta = dict(group=g, shard=job, factors_fp=factors_fp)
        if not bases_path(stage, g).exists():
            path = part_path(stage, "covariances", g, job)
            if not path.exists():
                with progress.task(f"factors {label}: covariances, part {job}", len(batches), unit="batch") as adv:
                    covs = fit_covariances(model, group, batches, sample_seed=config.sample_seed,
                                           on_batch=lambda b, lp: adv(1))
                save_part(path, covariance_tensors(_reduce_covariances(covs, group, solo, device)), kind="covariances",
                          **meta)
            return files, f"covariance part {job} of {label} written"
        path = part_path(stage, "lambdas", g, job)
        if not path.exists():
            loaded = load_tensors(bases_path(stage, g))
            bases = {n: (loaded[f"{n}::q_a"].to(device), loaded[f"{n}::q_s"].to(device)) for n in group}
            with progress.task(f"factors {label}: eigenvalue correction, part {job}", len(batches), unit="batch") as adv:
                sums = fit_lambdas(model, group, batches, bases, sample_seed=config.sample_seed,
                                   on_batch=lambda b, lp: adv(1))
            save_part(path, lambda_tensors(_filled_lambda_sums(sums, group, device)), kind="lambdas", **meta)
        return files, f"eigenvalue-correction part {job} of {label} written"
    return files, None


def split_assignment(n: int, splits: int, seed: int) -> list[int]:
    """Seeded, balanced assignment of n query rows to `splits` disjoint splits (all 0 if none)."""
    if splits < 2:
        return [0] * n
    order = list(range(n))
    random.Random(seed).shuffle(order)
    split_of = [0] * n
    for rank, row in enumerate(order):
        split_of[row] = rank % splits
    return split_of


def query_directions(ctx: ScoreContext, factor_files: dict[str, Path], items: Sequence[Tokenized], name: str,
                     factors_fp: str) -> tuple[dict[str, Direction], str]:
    """Stage "queries": preconditioned gradients of one query set's functions, under
    `ctx.work_dir / "queries"`: layer -> [1 (+K), out, in'], float32 (float64 for a float64
    model); with `config.query_rank`, as rank-R factors (`LowRank`).

    Under `ctx.coll` each rank takes a range of the query batches; the sums are all-reduced, every
    rank preconditions them (the same arithmetic on the same inputs) and rank 0 writes the file.
    """
    model, groups, config, coll, progress, device = ctx.model, ctx.groups, ctx.config, ctx.coll, ctx.progress, ctx.device
    folder = ctx.work_dir / "queries"
    qfp = fingerprint(factors_fp, tokens_fingerprint(items), config.normalize, config.query_splits,
                      config.seed, config.damping, config.query_rank)
    path = folder / f"{name}-{qfp}.safetensors"
    if path.exists():
        return from_tensors(load_tensors(path)), qfp
    splits = max(config.query_splits, 1)
    split_of = split_assignment(len(items), splits, config.seed)
    sizes = [split_of.count(k) for k in range(splits)]
    if min(sizes) == 0:
        raise UsageError(f"query set {name!r} has {len(items)} examples, fewer than --query-splits {splits}")
    batches = coll.shard.take(make_batches(items, config.batch_tokens, ctx.pad_id))
    kept_dtype = torch.float64 if config.dtype == "float64" else torch.float32
    out = {}
    with progress.task(f"query gradients: {name}", len(batches) * len(groups), unit="batch") as adv:
        for group in groups:
            sums = query_gradient_sums(model, group, batches, split_of, splits,
                                       per_token=config.per_token_query, on_batch=lambda b, lp: adv(1))
            for n, module in group.items():
                s = sums.get(n, torch.zeros(splits, *layer_dims(module), dtype=torch.float64, device=device))
                s = coll.all_reduce(s)
                f = ModuleFactors(**load_tensors(factor_files[n]))  # one module's factors in memory at a time
                v = f.precondition(split_functions(s.cpu(), sizes), f.damping(config.damping))
                out[n] = truncate(v, config.query_rank).to(kept_dtype)
    if coll.is_main:
        save_tensors(path, to_tensors(out))
    return out, qfp
