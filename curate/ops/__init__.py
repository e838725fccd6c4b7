"""Rebalancing operations: pure functions from a pool to a pool plus a manifest of reasons.

    from curate.ops import PruneConfig, prune
    result = prune(pool, PruneConfig(keep=0.9, by=("curate_influence_math",)))
    write_pool(result.pool, "out.parquet", manifest=result.manifest, extra_card=result.report.card)

Each operation returns an `OpResult(pool, manifest, report)`; nothing here writes files.
"""

from curate.ops.decontam import Benchmark, decontaminate, load_benchmarks
from curate.ops.donor import load_donor
from curate.ops.flip import FlipConfig, flip
from curate.ops.prune import PruneConfig, prune
from curate.ops.reweight import ReweightConfig, reweight
from curate.ops.strip import StripConfig, strip
from curate.results import OpContext, OpReport, OpResult, write_result

__all__ = ["Benchmark", "FlipConfig", "OpContext", "OpReport", "OpResult", "PruneConfig", "ReweightConfig", "StripConfig", "decontaminate", "flip", "load_benchmarks",
           "load_donor", "prune", "reweight", "strip",
           "write_result"]
