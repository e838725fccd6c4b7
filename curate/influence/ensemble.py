"""Influence averaged over checkpoints: `curate score --checkpoints A,B,...`.

Scores from one model are noisy estimates of what a row does to training; averaging over
checkpoints of one fine-tune (TracIn-CP, LESS) or over independently trained models (TRAK's
ensembles) is the field's standard remedy. Each checkpoint is scored by the ordinary pipeline
(`score_pool`: its own factors, query directions and score chunks under WORK/ck<i>, so a killed
run resumes checkpoint by checkpoint), and the columns are combined as

    curate_influence_<q> = sum_i w_i * curate_influence_<q>_ck<i> / sum_i w_i

(the splits likewise, so the stability report is the ensemble's). Weights: "lr" = LESS's
choice, the mean learning rate a checkpoint's trainer logged over the steps since the previous
checkpoint (`trainer_state.json`, as TRL / transformers write it); "equal" = 1 each (what "lr"
falls back to, with a note, when a checkpoint has no trainer state, e.g. independent models).
curate_nll, curate_tokens and curate_truncated are the last checkpoint's (the final model).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import operator
import re
from collections.abc import Sequence
from pathlib import Path

from curate.data import Example
from curate.errors import UsageError
from curate.progress import Progress, Silent

WEIGHTS = ("lr", "equal")


@dataclasses.dataclass
class Checkpoint:
    """One member of the ensemble: `path` as given (or expanded), its `weight` (unnormalised), and
    `step` (its trainer's global step; None when it has no trainer state)."""

    path: str
    weight: float
    step: int | None


def expand_checkpoints(specs: Sequence[str]) -> list[str]:
    """The checkpoints named by `specs`, in order: a spec with a glob character expands to its
    matches sorted by their trailing number (checkpoint-9 before checkpoint-10). UsageError when a
    pattern matches nothing or a name repeats."""
    out: list[str] = []
    for spec in specs:
        if any(c in spec for c in "*?["):
            matches = sorted(glob.glob(spec), key=_natural)
            if not matches:
                raise UsageError(f"--checkpoints {spec!r}: no folder matches")
            out.extend(matches)
        else:
            out.append(spec)
    repeated = sorted({p for p in out if out.count(p) > 1})
    if repeated:
        raise UsageError(f"--checkpoints names {', '.join(repeated)} more than once")
    return out


def weigh(paths: Sequence[str], how: str) -> tuple[list[Checkpoint], str | None]:
    """Each checkpoint with its weight (see the module doc), and a note when "lr" fell back to equal."""
    states = [_trainer_state(p) for p in paths]
    steps = [None if s is None else int(s.get("global_step", 0)) for s in states]
    if how == "equal":
        return [Checkpoint(p, 1.0, st) for p, st in zip(paths, steps, strict=True)], None
    missing = [p for p, s in zip(paths, states, strict=True) if s is None]
    if missing:
        return ([Checkpoint(p, 1.0, st) for p, st in zip(paths, steps, strict=True)],
                f"equal weights: no trainer_state.json in {', '.join(missing)}")
    weights, previous = [], 0
    for state, step in sorted(zip(states, steps, strict=True), key=lambda x: x[1]):
        logged = [e["learning_rate"] for e in state.get("log_history", [])
                  if "learning_rate" in e and previous < e.get("step", 0) <= step]
        weights.append((step, sum(logged) / len(logged) if logged else None))
        previous = step
    by_step = dict(weights)
    if any(w is None or w <= 0 for w in by_step.values()):
        return ([Checkpoint(p, 1.0, st) for p, st in zip(paths, steps, strict=True)],
                "equal weights: a checkpoint's trainer logged no positive learning rate since the previous one")
    return [Checkpoint(p, by_step[st], st) for p, st in zip(paths, steps, strict=True)], None


def score_checkpoints(examples: Sequence[Example], queries: dict[str, Sequence[Example]], config, work_dir: Path, *,
                      overwrite: bool = False, progress: Progress | None = None):
    """Score with every checkpoint of `config.checkpoints` in turn and combine (see the module doc).

    Returns the last checkpoint's `ScoreResult` with the combined table (plus the per-checkpoint
    `<column>_ck<i>` of each main influence column), the ensemble's stability, and `checkpoints`
    set."""
    from curate.influence.engine import score_pool
    from curate.influence.stability import stability_all
    from curate.models import check_model

    progress = progress or Silent()
    paths = expand_checkpoints(config.checkpoints)
    for path in paths:  # a typo in the last one fails before the first is scored
        check_model(path)
    members, note = weigh(paths, config.checkpoint_weights)
    progress.note(f"checkpoint ensemble: {len(members)} models, each fitted and scored on its own (about "
                  f"{len(members)}x the cost of one plan below)" + (f"; {note}" if note else ""))
    results = []
    for i, member in enumerate(members):
        progress.note(f"checkpoint {i + 1}/{len(members)}: {member.path} (weight {member.weight:.3g})")
        single = dataclasses.replace(config, model=member.path, checkpoints=())
        results.append(score_pool(examples, queries, single, Path(work_dir) / f"ck{i}", overwrite=overwrite,
                                  progress=progress))
    last = results[-1]
    total = sum(m.weight for m in members)
    # a null (unscorable row) stays null: plain sums propagate it, where sum_horizontal would not
    combined = last.table.with_columns([
        functools.reduce(operator.add, [r.table[c] * (m.weight / total) for r, m in zip(results, members, strict=True)])
        .alias(c) for c in last.columns])
    main = [c for c in last.columns if "_split" not in c]
    combined = combined.with_columns([r.table[c].alias(f"{c}_ck{i}") for i, r in enumerate(results) for c in main])
    return dataclasses.replace(last, table=combined, checkpoints=members, config=config,
                               stability=stability_all(combined, last.columns,
                                                       query_sizes={q: len(v) for q, v in queries.items()}))


def _trainer_state(path: str) -> dict | None:
    file = Path(path) / "trainer_state.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        raise UsageError(f"{file}: not valid JSON") from None


def _natural(path: str) -> tuple:
    number = re.search(r"(\d+)\D*$", path)
    return (int(number.group(1)) if number else -1, path)
