"""`curate flip`: the Infra difficulty flip (harder math in, easier code in) from a donor pool."""

from __future__ import annotations

import sys

import click

from curate.cli.options import write_options


@click.command()
@click.argument("pool")
@click.option("--donor", required=True, help="Donor pool (any shape; OpenThoughts metadata rows are rendered into POOL's).")
@click.option("-o", "--output", "out", required=True, help="Output: a folder (save_to_disk), .parquet or .jsonl.")
@click.option("--swap-frac", type=float, default=0.25, show_default=True, help="Fraction of each flipped domain to swap.")
@click.option("--swap-n", type=int, help="Rows to swap per domain (instead of --swap-frac).")
@click.option("--easy-max", type=float, default=3, show_default=True,
              help="Easy: difficulty <= this (1-10 scale; MATH levels 1-2, TACO EASY).")
@click.option("--hard-min", type=float, default=5, show_default=True,
              help="Hard: difficulty >= this (MATH levels 4-5, TACO MEDIUM_HARD and up).")
@click.option("--domains", default="math,code", show_default=True, help="Domains to flip (comma-separated).")
@click.option("--reverse", is_flag=True, help="The control: harder code, easier math.")
@click.option("--difficulty-col", default="curate_difficulty", show_default=True,
              help="Difficulty column (1-10); without it a MATH `level` L counts as L + 1 (the offline tagger's table).")
@click.option("--allow-mixed-sources", is_flag=True, help="Flip even when pool and donor difficulty sources differ.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the donor draw.")
@click.option("--decontaminate", multiple=True, metavar="BENCH", help="Benchmark file(s): drop pool and donor rows that overlap.")
@click.option("--ngram", type=int, default=13, show_default=True, help="Shared word n-gram that counts as overlap.")
@click.option("--split", help="Split of the pool (folder or Hub dataset).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN", help="Column roles of the pool (see inspect).")
@write_options
def flip(pool, donor, out, domains, decontaminate, split, maps, emit, fmt, push_to_hub, **settings) -> None:
    """Replace POOL's easiest math with harder donor math and its hardest code with easier donor
    code, keeping the size and domain counts. Writes before/after histograms to the card and a PNG."""
    from pathlib import Path

    from curate.cli.prune import render, split_list
    from curate.data import load_pool, parse_mapping, write_pool
    from curate.ops import FlipConfig
    from curate.ops import flip as run
    from curate.ops.donor import load_donor
    from curate.ops.flip import plot_histograms

    config = FlipConfig(domains=split_list((domains,)), decontaminate=split_list(decontaminate), **settings)
    loaded = load_pool(pool, split=split, mapping=parse_mapping(maps))
    result = run(loaded, load_donor(donor), config)
    out_path = Path(out)
    png = out_path / "difficulty.png" if not out_path.suffix else out_path.with_name(f"{out_path.stem}.difficulty.png")
    card = dict(result.report.card)
    card["Difficulty flip"] += f"\n\n![difficulty before and after]({png.name})"
    path = write_pool(result.pool, out, manifest=result.manifest, command=["curate", *sys.argv[1:]], extra_card=card,
                      emit=emit, fmt=fmt, push_to_hub=push_to_hub)
    plot_histograms(result.report.data["histograms"], str(png))  # after write_pool: a folder is replaced whole
    render(result.report)
    click.echo(str(path))
