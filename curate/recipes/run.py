"""Run a checked recipe: each step is a named, resumable stage under `<output>.steps/NN-op/`.

A stage holds the step's pool (`pool.parquet` with its manifest and card) and `step.json`, written
last, with the step's fingerprint (the previous step's, the op, its resolved parameters and the
stat of every input file it reads) and its summary. A rerun loads a stage whose fingerprint
matches instead of recomputing it; a stage whose fingerprint differs is recomputed, and so is every
step after it. The final output's manifest is the net effect of all steps on the input pool.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.progress import Progress
from curate.recipes.check import Recipe, Step
from curate.registry import OPERATIONS
from curate.stages import atomic_write_bytes, fingerprint

if TYPE_CHECKING:
    from curate.data.manifest import Manifest


@dataclass
class StepSummary:
    """One step as run: `counts` and `notes` from its report, whether it was `skipped` (resumed)."""

    index: int
    op: str
    folder: Path | None
    rows: int
    counts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: bool = False


@dataclass
class RunResult:
    output: Path | None  # None for a dry run
    steps: list[StepSummary]
    validation: dict | None = None  # results.json of the `validate:` section, when it has one


def file_stat(path: Path) -> list:
    """What identifies an input's content cheaply: (name, size, mtime) of its file(s)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


class _Runner:
    def __init__(self, recipe: Recipe, progress: Progress) -> None:
        self.recipe = recipe
        self.progress = progress
        self.root = recipe.output.with_name(recipe.output.name + ".steps")
        self.donors = set()  # input names some step reads as a donor
        for step in recipe.steps:
            if step.op in OPERATIONS:
                self.donors |= {step.refs[i.name] for i in OPERATIONS[step.op].inputs if i.donor}
        self.loaded: dict[str, Any] = {}  # input name -> Pool (tagged versions replace the raw ones)
        self.manifests: list[Manifest] = []

    def input_pool(self, name: str):
        from curate.data import load_pool
        from curate.ops import load_donor

        if name not in self.loaded:
            path = self.recipe.inputs[name]
            self.loaded[name] = load_donor(path) if name in self.donors else load_pool(path)
        return self.loaded[name]

    def run(self) -> RunResult:
        from curate.data import load_pool

        pool = self.input_pool("pool")
        fp = fingerprint(file_stat(self.recipe.inputs["pool"]))
        summaries = []
        for step in self.recipe.steps:
            if step.op == "write":
                summaries.append(self.write(step, pool))
                continue
            fp = fingerprint(fp, step.op, step.params, step.refs,
                             {n: file_stat(self.recipe.inputs[n]) for n in _ref_names(step)})
            folder = self.root / f"{step.index:02d}-{step.op}"
            marker = folder / "step.json"
            data = folder / "pool.parquet"
            done = json.loads(marker.read_text()) if marker.exists() else None
            if done is not None and done.get("fingerprint") == fp and data.exists():
                self.progress.note(f"step {step.index} {step.op}: done before, skipped ({folder})")
                for name in step.refs.get("also", []):
                    self.loaded[name] = load_pool(folder / f"{name}.parquet")
                summary = StepSummary(step.index, step.op, folder, 0, done["counts"], done["notes"], skipped=True)
            else:
                self.progress.note(f"step {step.index} {step.op}" + (" (inputs or settings changed: recomputing)"
                                                                     if done is not None else ""))
                if marker.exists():
                    marker.unlink()
                counts, notes = self.compute(step, pool, folder, data, redo=done is not None)
                atomic_write_bytes(marker, json.dumps({"fingerprint": fp, "op": step.op, "counts": counts,
                                                       "notes": notes}, indent=2, default=str).encode())
                summary = StepSummary(step.index, step.op, folder, 0, counts, notes)
            pool = load_pool(data)
            summary.rows = len(pool)
            self.manifests.append(_read_manifest(data))
            summaries.append(summary)
        return self.finish(pool, summaries)

    def compute(self, step: Step, pool, folder: Path, data: Path, redo: bool) -> tuple[dict, list]:
        """Run one step and write its pool to `data`; returns (counts, notes)."""
        from curate.data import load_pool
        from curate.results import OpContext, write_result

        op = OPERATIONS[step.op]
        command = f"curate run {self.recipe.path} (step {step.index}: {step.op})"
        inputs = {}
        for i in op.inputs:
            names = step.refs[i.name]
            inputs[i.name] = {n: self.input_pool(n) for n in names} if i.many else self.input_pool(names)
        context = OpContext(self.progress, folder / "work", overwrite=redo)
        for name in step.refs.get("also", []):
            other = op(self.input_pool(name), inputs, step.config, context)
            self.loaded[name] = load_pool(write_result(other, folder / f"{name}.parquet", command=command).path)
        result = op(pool, inputs, step.config, context)
        write_result(result, data, command=command)
        return dict(result.report.counts), list(result.report.notes)

    def write(self, step: Step, pool) -> StepSummary:
        from curate.data import write_pool

        out = self.recipe.path.parent / step.params["path"]
        path = write_pool(pool, out, fmt=step.params.get("format"), emit=step.params.get("emit", "input"),
                          manifest=net_manifest(self.manifests, pool), command=f"curate run {self.recipe.path}",
                          extra_card=self.card([]))
        self.progress.note(f"step {step.index} write: {path}")
        return StepSummary(step.index, "write", path, len(pool))

    def finish(self, pool, summaries: list[StepSummary]) -> RunResult:
        from curate.data import write_pool

        path = write_pool(pool, self.recipe.output, fmt=self.recipe.format, emit=self.recipe.emit,
                          manifest=net_manifest(self.manifests, pool), command=f"curate run {self.recipe.path}",
                          extra_card=self.card(summaries), push_to_hub=self.recipe.push_to_hub)
        result = RunResult(path, summaries)
        if self.recipe.validate is not None:
            from curate.validate import validate

            spec = self.recipe.validate
            spec.config.variants[list(spec.config.variants)[-1]] = str(path)
            self.progress.note(f"validate: {', '.join(spec.config.variants)} -> {spec.run_dir}")
            result.validation = validate(spec.config, spec.run_dir, progress=self.progress)
        return result

    def card(self, summaries: list[StepSummary]) -> dict[str, str]:
        rows = ["| step | op | rows out | counts | stage |", "|---|---|---|---|---|"]
        for s in summaries:
            counts = ", ".join(f"{k}: {v}" for k, v in s.counts.items())
            rows.append(f"| {s.index} | {s.op}{' (resumed)' if s.skipped else ''} | {s.rows} | {counts} | `{s.folder}` |")
        notes = [f"- step {s.index} {s.op}: {n}" for s in summaries for n in s.notes]
        return {"Recipe": f"`{self.recipe.path}`:\n\n```yaml\n{self.recipe.text.rstrip()}\n```",
                "Recipe steps": "\n".join(rows + ([""] + notes if notes else []))}


def _ref_names(step: Step) -> list[str]:
    names = []
    for value in step.refs.values():
        names += [value] if isinstance(value, str) else list(value)
    return sorted(set(names))


def _read_manifest(data: Path) -> Manifest:
    from curate.data.manifest import Manifest
    from curate.data.write import output_paths

    return Manifest.read(output_paths(data, "parquet")[1])


def net_manifest(manifests: Sequence[Manifest], pool) -> Manifest:
    """The net effect of the steps' manifests, in order, on the input pool: a row removed after it
    was added is dropped from the record; a replacement that was later replaced names the last
    row; a row replaced and then removed is removed (with the last reason). Entries name input
    rows first (in the order they were first changed), then the rows steps added that are still
    there (in the order they were added). Worked out as columns, a step at a time (a step lists
    each row once): memory holds the ids of the rows changed, not an object per entry."""
    import polars as pl

    from curate.data.manifest import Manifest

    text = pl.String
    # cur: the rows steps put in the pool (replacements, additions) -> the input row they stand for
    # (null: added). fate: each changed input row's latest entry, `order` where it was first changed.
    cur = pl.DataFrame(schema={"curate_id": text, "origin": text})
    fate = pl.DataFrame(schema={"origin": text, "action": text, "reason": text, "replaced_by": text,
                                "order": pl.Int64})
    added = pl.DataFrame(schema={"id": text, "reason": text, "order": pl.Int64})
    offset = 0
    for manifest in manifests:
        step = pl.from_arrow(manifest.table).with_row_index("order", offset=offset).cast({"order": pl.Int64})
        offset += len(step)
        step = step.join(cur.with_columns(known=pl.lit(True)), on="curate_id", how="left", maintain_order="left")
        step = step.with_columns(was=pl.when(pl.col("known")).then(pl.col("origin")).otherwise(pl.col("curate_id")))
        action = pl.col("action")
        cur = pl.concat([
            cur.filter(~pl.col("curate_id").is_in(step["curate_id"].implode())),
            step.filter(action == "added").select("curate_id", origin=pl.lit(None, text)),
            step.filter(action == "replaced").select(curate_id="replaced_by", origin="was")])
        from_added = pl.col("was").is_null()
        gone = step.filter(from_added & (action != "added"))["curate_id"]
        fresh = pl.concat([step.filter(action == "added").select(id="curate_id", reason="reason", order="order"),
                           step.filter(from_added & (action == "replaced")).select(id="replaced_by", reason="reason",
                                                                                    order="order")])
        added = pl.concat([added.filter(~pl.col("id").is_in(pl.concat([gone, fresh["id"]]).implode())), fresh])
        latest = step.filter(~from_added & (action != "added")).select(origin="was", action="action", reason="reason",
                                                                       replaced_by="replaced_by", order="order")
        fate = pl.concat([fate, latest]).group_by("origin", maintain_order=True).agg(
            pl.col("action", "reason", "replaced_by").last(), pl.col("order").first())
    wanted = pl.concat([added["id"], fate["replaced_by"].drop_nulls()])
    ids = pl.Series(pool.columns(["curate_id"]).column("curate_id")).cast(text)
    present = ids.filter(ids.is_in(wanted.unique().implode())).implode()
    fate = fate.sort("order").filter((pl.col("action") != "replaced") | pl.col("replaced_by").is_in(present))
    added = added.sort("order").filter(pl.col("id").is_in(present))
    table = pl.concat([fate.select(curate_id="origin", action="action", reason="reason", replaced_by="replaced_by"),
                       added.select(curate_id="id", action=pl.lit("added"), reason="reason",
                                    replaced_by=pl.lit(None, text))])
    return Manifest(table.to_arrow())
