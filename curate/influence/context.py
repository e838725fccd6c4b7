"""`ScoreContext`: what every stage of one scoring run shares, in one typed object.

`score_pool` builds it once (model, tokenizer, the tracked modules and their groups, the settings,
padding and length bounds, the score columns, the work folder, the process group, progress) and
passes it to each named stage: `fitting.fit_factors` (or `fit_factor_part` for a `--shard` job),
`fitting.query_directions`, then the chunk stages of `engine` and `segment_scores`. The stage
that makes the query directions stores them here for the stages after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from curate.influence.config import ScoreConfig
    from curate.influence.directions import Direction
    from curate.influence.distributed import Collective
    from curate.progress import Progress


@dataclass
class ScoreContext:
    """One scoring run.

    `modules`: tracked Linear layers by name; `groups`: the same, split into the groups that each
    cost one pass (`plan.group_modules`). `max_length`: the scoring bound in tokens (None: none).
    `columns`: the score columns, `curate_influence_<q>[_split<k>]`, in the order of the last axis
    of `directions` (layer -> [F, out, in'] or its low-rank factors, F = len(columns)), which
    `query_directions` fills. `work_dir`: the run's stage folder; `overwrite`: recompute stages
    made from other inputs instead of refusing them.
    """

    model: Any
    tokenizer: Any
    config: ScoreConfig
    modules: dict[str, torch.nn.Module]
    groups: list[dict[str, torch.nn.Module]]
    pad_id: int
    max_length: int | None
    columns: list[str]
    work_dir: Path
    coll: Collective
    progress: Progress
    overwrite: bool = False
    directions: dict[str, Direction] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
