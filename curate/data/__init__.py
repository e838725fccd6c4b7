"""The data layer: load pools of any common shape, view rows canonically, write them back.

    pool = load_pool("train.jsonl")                 # or a save_to_disk folder, or a Hub id
    pool.dataset                                    # input columns + curate_id/_domain/_domain_source
    for example in pool.examples(): ...             # canonical `Example`s, id == curate_id
    write_pool(pool, "out.parquet", annotations=scores, manifest=entries, command=sys.argv)

Importing this package is cheap: `datasets`, `pyarrow` and `polars` load on first use.
"""

from curate.data.example import Example
from curate.data.load import load_pool, read_dataset
from curate.data.manifest import ManifestEntry, read_manifest
from curate.data.pool import Pool
from curate.data.shapes import ROLES, Shape, parse_mapping
from curate.data.stats import PoolStats, pool_stats
from curate.data.write import side_path, write_pool

__all__ = [
    "ROLES",
    "Example",
    "ManifestEntry",
    "Pool",
    "PoolStats",
    "Shape",
    "load_pool",
    "parse_mapping",
    "pool_stats",
    "read_dataset",
    "read_manifest",
    "side_path",
    "write_pool",
]
