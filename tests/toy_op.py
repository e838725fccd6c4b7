"""A toy operation registered only by the tests (`test_registry.py`): keep the first `n` rows.

It is what adding an operation takes: this module (a config declared with `setting` and a `run`
of the registry's call shape) and one registry entry."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from curate.data import ManifestEntry, Pool
from curate.results import OpContext, OpReport, OpResult
from curate.settings import Problem, check_settings, raise_problems, setting


@dataclass(frozen=True)
class HeadConfig:
    n: int = setting(MISSING, "Rows to keep, from the top.", low=1)
    note: str = setting("", "A note for the card; must not be 'bad' when {n} is 1.")

    def __post_init__(self) -> None:
        problems = check_settings(self)
        if self.n == 1 and self.note == "bad":
            problems.append(Problem("{note} 'bad' with {n} 1"))
        raise_problems(self, problems)


def run(pool: Pool, inputs: dict, config: HeadConfig, context: OpContext) -> OpResult:
    ids = pool.dataset["curate_id"]
    kept = pool.with_dataset(pool.dataset.select(range(min(config.n, len(pool)))))
    manifest = [ManifestEntry(i, "removed", f"head: past the first {config.n}") for i in ids[config.n:]]
    return OpResult(kept, manifest, OpReport({"kept": len(kept)}, card={"Head": config.note or "-"}))
