"""Tagging: domain, difficulty (1-10) and cognitive-behaviour counts for every row of a pool.

    from curate.tagging import TagConfig, tag_pool
    annotations, report = tag_pool(pool, TagConfig(base_urls=("http://localhost:8000/v1",), model="Qwen/Qwen2.5-32B-Instruct"))
    annotations, report = tag_pool(pool, TagConfig(offline=True))

`openai` is imported only when a request is sent.
"""

from curate.tagging.config import LONG_POLICIES, TASKS, TagConfig
from curate.tagging.prompts import BEHAVIORS, Prompt, load_prompts
from curate.tagging.tagger import Estimate, TagReport, estimate, tag_pool

__all__ = ["BEHAVIORS", "LONG_POLICIES", "TASKS", "Estimate", "Prompt", "TagConfig", "TagReport",
           "estimate", "load_prompts", "tag_pool"]
