"""Tagging: domain, difficulty (1-10) and cognitive-behaviour counts for every row of a pool.

    from curate.tagging import TagConfig, tag_pool
    annotations, report = tag_pool(pool, TagConfig(base_urls=("http://localhost:8000/v1",), model="Qwen/Qwen2.5-32B-Instruct"))
    annotations, report = tag_pool(pool, TagConfig(offline=True))
    tag_pool(pool, TagConfig(..., shard="0/4", cache="tags.sqlite"))     # one of 4 jobs sharing a cache
    export_batch(pool, config, "requests.jsonl"); import_batch(pool, config, "results.jsonl")  # Batch API

`openai` is imported only when a request is sent.
"""

from curate.tagging.batch import BatchExport, BatchImport, export_batch, import_batch
from curate.tagging.config import LONG_POLICIES, TASKS, TagConfig
from curate.tagging.prompts import BEHAVIORS, Prompt, load_prompts
from curate.tagging.tagger import Estimate, TagReport, estimate, shard_pool, tag_pool

__all__ = ["BEHAVIORS", "LONG_POLICIES", "TASKS", "BatchExport", "BatchImport", "Estimate", "Prompt", "TagConfig",
           "TagReport", "estimate", "export_batch", "import_batch", "load_prompts", "shard_pool",
           "tag_pool"]
