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
curate_nll, curate_tokens and curate_truncated are the final model's (the highest step; else the
last named).
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
from curate.data.columns import main_score_columns
from curate.errors import UsageError
from curate.progress import Progress, Silent


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
    resolved = [str(Path(p).resolve()) if Path(p).exists() else p for p in out]
    repeated = sorted({p for p, r in zip(out, resolved, strict=True) if resolved.count(r) > 1})
    if repeated:
        raise UsageError(f"--checkpoints names {', '.join(repeated)} more than once")
    return out


def weigh(paths: Sequence[str], how: str) -> tuple[list[Checkpoint], str | None]:
    """Each checkpoint with its weight (see the module doc), and a note when "lr" fell back to equal.

    "lr" applies to checkpoints of one run: distinct steps, each one's logged history a prefix of
    the next's (in step order). Anything else (independent models, two seeds at the same step) is
    weighted equally, and the note says why."""
    states = [_trainer_state(p) for p in paths]
    steps = [None if s is None else int(s.get("global_step", 0)) for s in states]
    equal = [Checkpoint(p, 1.0, st) for p, st in zip(paths, steps, strict=True)]
    if how == "equal":
        return equal, None
    missing = [p for p, s in zip(paths, states, strict=True) if s is None]
    if missing:
        return equal, f"equal weights: no trainer_state.json in {', '.join(missing)}"
    ordered = sorted(zip(steps, states, strict=True), key=lambda x: x[0])
    histories = [state.get("log_history", []) for _, state in ordered]
    one_run = len(set(steps)) == len(steps) and all(
        later[:len(earlier)] == earlier for earlier, later in zip(histories, histories[1:], strict=False))
    if not one_run:
        return equal, "equal weights: not the checkpoints of one run (repeated steps or differing logs)"
    by_step, previous = {}, 0
    for step, history in zip((st for st, _ in ordered), histories, strict=True):
        logged = [e["learning_rate"] for e in history if "learning_rate" in e and previous < e.get("step", 0) <= step]
        by_step[step] = sum(logged) / len(logged) if logged else None
        previous = step
    if any(w is None or w <= 0 for w in by_step.values()):
        return equal, "equal weights: a checkpoint's trainer logged no positive learning rate since the previous one"
    return [Checkpoint(p, by_step[st], st) for p, st in zip(paths, steps, strict=True)], None


def score_checkpoints(examples: Sequence[Example], queries: dict[str, Sequence[Example]], config, work_dir: Path, *,
                      overwrite: bool = False, progress: Progress | None = None):
    """Score with every checkpoint of `config.checkpoints` in turn and combine (see the module doc).

    Returns the final checkpoint's `ScoreResult` (highest step) with the combined table (plus the per-checkpoint
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
    # the final model: the highest step when every member has one, else the last named
    final = max(range(len(members)), key=lambda i: members[i].step) if all(m.step is not None for m in members) \
        else len(members) - 1
    last = results[final]
    total = sum(m.weight for m in members)
    # a null (unscorable row) stays null: plain sums propagate it, where sum_horizontal would not
    combined = last.table.with_columns([
        functools.reduce(operator.add, [r.table[c] * (m.weight / total) for r, m in zip(results, members, strict=True)])
        .alias(c) for c in last.columns])
    main = main_score_columns(last.columns)
    combined = combined.with_columns([r.table[c].alias(f"{c}_ck{i}") for i, r in enumerate(results) for c in main])
    return dataclasses.replace(last, table=combined, checkpoints=members,
                               config=dataclasses.replace(last.config, checkpoints=config.checkpoints),
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
