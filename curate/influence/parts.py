"""Independent score jobs (`curate score --shard i/N`, no process group) and `curate merge`.

For SLURM arrays and spot machines: N jobs share a work directory (a shared filesystem or a
synced bucket). Each job runs the next step that needs doing over its contiguous range of the
fit batches and stops; `curate merge WORK` combines the parts of that step:
  1. covariance parts  -> merge: summed, eigendecomposed (eigenbases file)
  2. eigenvalue-correction parts -> merge: summed, divided, one factor file per module
     (steps 1-2 repeat per module group)
  3. scores: each job writes its range of the pool's chunks (keyed by curate_id); the same
     command without --shard then finds every chunk and writes the output.
Every part records its kind, group, shard and the factor stage's input fingerprint in its
safetensors metadata; a part from another run, or an incomplete set, is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from curate.errors import DataError
from curate.influence.factors import Covariance, ModuleFactors, eigenbases
from curate.shard import Shard
from curate.stages import load_tensors, save_tensors


def part_path(stage: Path, kind: str, group: int, shard: Shard) -> Path:
    return stage / f"{kind}-g{group:03d}.part{shard.rank}of{shard.world_size}.safetensors"


def bases_path(stage: Path, group: int) -> Path:
    return stage / f"bases-g{group:03d}.safetensors"


def save_part(path: Path, tensors: dict[str, torch.Tensor], *, kind: str, group: int, shard: Shard,
              factors_fp: str) -> None:
    meta = {"kind": kind, "group": str(group), "shard": str(shard), "factors": factors_fp}
    save_tensors(path, {k: v.cpu().contiguous() for k, v in tensors.items()}, metadata=meta)


def covariance_tensors(covs: dict[str, Covariance]) -> dict[str, torch.Tensor]:
    out = {}
    for n, c in covs.items():
        out.update({f"{n}::a_sum": c.a_sum, f"{n}::s_sum": c.s_sum,
                    f"{n}::count": torch.tensor([float(c.count)], dtype=torch.float64)})
    return out


def lambda_tensors(sums: dict[str, tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    out = {}
    for n, (total, count) in sums.items():
        out.update({f"{n}::sum": total, f"{n}::count": torch.tensor([float(count)], dtype=torch.float64)})
    return out


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def _summed_parts(stage: Path, kind: str, group: int, factors_fp: str) -> dict[str, torch.Tensor]:
    """The element-wise sum of every part of one step; refuses foreign or missing parts."""
    pattern = re.compile(rf"{kind}-g{group:03d}\.part(\d+)of(\d+)\.safetensors")
    found: dict[int, Path] = {}
    worlds = set()
    for path in sorted(stage.glob(f"{kind}-g{group:03d}.part*of*.safetensors")):
        m = pattern.fullmatch(path.name)
        meta = _metadata(path)
        if not m or meta.get("kind") != kind or meta.get("shard") != f"{m[1]}/{m[2]}":
            raise DataError(f"{path}: not a {kind} part of group {group} (metadata {meta})")
        if meta.get("factors") != factors_fp:
            raise DataError(f"{path}: a part from another run (made from other inputs or settings than "
                            f"{stage / 'manifest.json'}); remove it and rerun that job")
        found[int(m[1])] = path
        worlds.add(int(m[2]))
    if not found:
        raise DataError(f"{stage}: no {kind} parts of group {group + 1} yet; run the `--shard i/N` jobs first")
    if len(worlds) > 1:
        raise DataError(f"{stage}: {kind} parts of group {group + 1} from different N ({sorted(worlds)}); keep one set")
    (world,) = worlds
    missing = [f"{r}/{world}" for r in range(world) if r not in found]
    if missing:
        raise DataError(f"{stage}: {kind} of group {group + 1}: parts {', '.join(missing)} missing; run those jobs first")
    total: dict[str, torch.Tensor] = {}
    for r in range(world):
        for k, v in load_tensors(found[r]).items():
            total[k] = v if k not in total else total[k] + v
    return total


def merge(work_dir: Path) -> str:
    """Combine the parts of the step the `--shard` jobs last finished; returns what to do next."""
    stage = Path(work_dir) / "factors"
    if not (stage / "manifest.json").exists():
        raise DataError(f"{work_dir}: no factors stage (factors/manifest.json); run the `--shard i/N` jobs first")
    manifest = json.loads((stage / "manifest.json").read_text())
    groups, fp = manifest["groups"], manifest["factors"]
    for g, names in enumerate(groups):
        if all((stage / f"{n}.safetensors").exists() for n in names):
            continue
        label = f"group {g + 1}/{len(groups)}"
        if not bases_path(stage, g).exists():
            total = _summed_parts(stage, "covariances", g, fp)
            bases = {}
            for n in names:
                q_a, q_s = eigenbases(Covariance(total[f"{n}::a_sum"], total[f"{n}::s_sum"], int(total[f"{n}::count"])))
                bases.update({f"{n}::q_a": q_a.contiguous(), f"{n}::q_s": q_s.contiguous()})
            save_tensors(bases_path(stage, g), bases)
            return f"merged the covariance parts of {label} into eigenbases; run the N jobs again (eigenvalue correction)"
        total = _summed_parts(stage, "lambdas", g, fp)
        bases = load_tensors(bases_path(stage, g))
        for n in names:
            lam = total[f"{n}::sum"] / total[f"{n}::count"]
            save_tensors(stage / f"{n}.safetensors", ModuleFactors(bases[f"{n}::q_a"], bases[f"{n}::q_s"], lam).to_dict())
        for path in [bases_path(stage, g), *stage.glob(f"*-g{g:03d}.part*.safetensors")]:
            path.unlink()
        if g + 1 < len(groups):
            return f"merged the eigenvalue corrections of {label}; run the N jobs again (covariances of the next group)"
        return "factors complete; run the N jobs again to score their ranges of the pool"
    return _scores_status(Path(work_dir) / "scores")


def _scores_status(stage: Path) -> str:
    manifest = stage / "manifest.json"
    if not manifest.exists():
        return "factors complete; run the N jobs again to score their ranges of the pool"
    chunks = json.loads(manifest.read_text()).get("chunks", 0)
    missing = [c for c in range(chunks) if not (stage / f"chunk-{c:05d}.parquet").exists()]
    if missing:
        return f"scores: {chunks - len(missing)} of {chunks} chunks written; run the remaining jobs"
    return f"scores: all {chunks} chunks written; run the score command without --shard to write the output"
