"""Tagging as an operation (the registry's `tag`): the calibration first when asked, then every row."""

from __future__ import annotations

import dataclasses

from curate.data import ManifestEntry, Pool
from curate.results import OpContext, OpReport, OpResult
from curate.tagging.calibrate import calibrate
from curate.tagging.config import TagConfig
from curate.tagging.tagger import shard_pool, tag_pool


def run(pool: Pool, inputs: dict, config: TagConfig, context: OpContext) -> OpResult:
    """The registry's call shape: the rows (of the shard) unchanged, the tags as `annotations`
    (spilled to disk as they are made: `FileRows`; the calibration sample's, a frame),
    the `TagReport` as `report.data["tag"]`. With `config.calibrate`, the calibration runs first
    (`report.data["calibration"]`, a "Calibration" card section); without `then_all` the result
    holds the calibration sample only, every other row listed as removed in the manifest."""
    card, data, manifest = {}, {}, []
    if config.calibrate:
        sample, annotations, report, calibration = calibrate(pool, config, context.progress)
        card["Calibration"] = "\n".join(calibration.lines())
        data["calibration"] = calibration
        if not config.then_all:
            kept = set(sample.columns(["curate_id"]).column("curate_id").to_pylist())
            manifest = [ManifestEntry(i, "removed", "not in the calibration sample (then_all tags every row)")
                        for i in pool.columns(["curate_id"]).column("curate_id").to_pylist() if i not in kept]
            pool = sample
    if not config.calibrate or config.then_all:
        annotations, report = tag_pool(pool, dataclasses.replace(config, calibrate=None, then_all=False),
                                       progress=context.progress, spill=True)
    counts = {"rows": report.rows, "difficulty sources": report.sources, "unparsed": report.unparsed,
              "failed": report.failed}
    return OpResult(shard_pool(pool, config), manifest, OpReport(counts, [], {**report.card(), **card},
                                                                {"tag": report, **data}), annotations=annotations)
