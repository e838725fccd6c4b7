"""`curate reweight`: repeat or drop rows by a weight column."""

from __future__ import annotations

import sys

import click

from curate.cli.options import decontaminated, output_options


@click.command()
@click.argument("pool")
@click.option("-o", "--output", "out", required=True, help="Output: a folder (save_to_disk), .parquet or .jsonl.")
@click.option("--by", required=True, help="Column of non-negative weights (e.g. one you computed from scores).")
@click.option("--keep-size", is_flag=True, help="Rescale the weights to sum to the pool size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fractional-weight coins.")
@click.option("--split", help="Split of the pool (folder or Hub dataset).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN", help="Column roles of the pool (see inspect).")
@output_options
def reweight(pool, out, by, keep_size, seed, split, maps, emit, fmt, push_to_hub, decontaminate) -> None:
    """Each row of POOL appears floor(w) times plus once more with probability frac(w); weight 0
    drops it. Copies get ids `<curate_id>#w<k>`; the manifest lists every copy and drop."""
    from curate.cli.prune import render
    from curate.data import load_pool, parse_mapping, write_pool
    from curate.ops import ReweightConfig
    from curate.ops import reweight as run

    config = ReweightConfig(by, keep_size, seed)  # checked before the pool is loaded
    loaded, removed = decontaminated(load_pool(pool, split=split, mapping=parse_mapping(maps)), decontaminate)
    result = run(loaded, config)
    path = write_pool(result.pool, out, manifest=removed + result.manifest, command=["curate", *sys.argv[1:]],
                      extra_card=result.report.card, emit=emit, fmt=fmt, push_to_hub=push_to_hub)
    render(result.report)
    click.echo(str(path))
