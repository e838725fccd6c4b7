"""curate: curate reasoning fine-tuning data by measurement.

A library with a thin CLI (`curate.cli`) over it: the data layer (`curate.data`), EK-FAC influence
(`curate.influence`), LLM and offline tagging (`curate.tagging`), rebalancing ops and recipes
(`curate.ops`, `curate.recipes`), evaluation and validation runs (`curate.evaluation`,
`curate.validate`), audits of the scores (`curate.audit`) and reports (`curate.report`).
Importing it is cheap: torch and the model stack load only where a submodule needs them.
"""

__version__ = "0.1.0"
