"""Evidence that influence scores can be trusted: ranking stability and the counterfactual audit.

    reports = stability_all(scored_table, query_sizes={"math": 64})   # cheap: from split columns
    result = audit(scored_pool, base="base-model", model="sft-model", queries={"math": examples},
                   out_dir=Path("audit/"))                             # costly: real fine-tunes

Importing this package is cheap: torch and transformers load on first use.
"""

from curate.influence.stability import (
    UNSTABLE_BELOW,
    StabilityReport,
    spearman_brown,
    stability,
    stability_all,
)

__all__ = ["UNSTABLE_BELOW", "StabilityReport", "spearman_brown", "stability", "stability_all"]
