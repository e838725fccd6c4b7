"""`curate inspect POOL`: shape, size, domains, native and tagged difficulty and response lengths of a pool."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("pool")
@click.option("--split", help="Split of a folder or Hub dataset (default: train, or the only one).")
@click.option("--map", "maps", multiple=True, metavar="ROLE=COLUMN",
              help="Say which column plays a role (prompt, response, system, messages, "
                   "conversations, domain, difficulty, id, thought, solution, input); repeatable.")
@click.option("--source", help="Qualifier of row ids (default: the file or folder name, or Hub id).")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False),
              help="Local tokenizer folder: also report response lengths in tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON on stdout.")
def inspect(pool: str, split: str | None, maps: tuple[str, ...], source: str | None,
            tokenizer: str | None, as_json: bool) -> None:
    """Show a pool's shape, size, domains, difficulties and response lengths.

    POOL is a .jsonl/.json/.parquet/.csv file (optionally .gz), a save_to_disk folder, a folder of
    data files or a Hugging Face Hub id. Tables go to stderr; with --json, a JSON object to stdout.
    """
    from curate.data import load_pool, parse_mapping, pool_stats

    loaded = load_pool(pool, split=split, mapping=parse_mapping(maps), source=source)
    stats = pool_stats(loaded, tokenizer=tokenizer).as_dict()
    if as_json:
        click.echo(json.dumps(stats, ensure_ascii=False, indent=2))
    else:
        render(stats)


def render(stats: dict) -> None:
    """Print the stats as rich tables on stderr."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    overview = Table(title=f"pool {stats['origin']}", show_header=False)
    overview.add_row("split", str(stats["split"] or "-"))
    overview.add_row("ids", f"qualified by {stats['source']!r}" if stats["source"] else "from the rows (own id or content hash)")
    overview.add_row("shape", stats["shape"]["name"])
    columns = ", ".join(f"{r}={c}" for r, c in stats["shape"]["columns"].items())
    overview.add_row("columns", columns)
    overview.add_row("rows", str(stats["rows"]))
    console.print(overview)

    domains = Table(title="domains")
    for name in ("domain", "source", "rows", "share"):
        domains.add_column(name, justify="right" if name in ("rows", "share") else "left")
    for d in stats["domains"]:
        domains.add_row(d["domain"], d["source"], str(d["rows"]), f"{d['rows'] / stats['rows']:.1%}")
    console.print(domains)

    if stats["difficulty"]:
        difficulty = Table(title=f"native difficulty (column {stats['difficulty']['column']})")
        difficulty.add_column("value")
        difficulty.add_column("rows", justify="right")
        for value, count in stats["difficulty"]["values"].items():
            difficulty.add_row(value, str(count))
        console.print(difficulty)

    if stats.get("tagged_difficulty"):
        tagged = stats["tagged_difficulty"]
        sources = ", ".join(f"{k} {v}" for k, v in tagged["sources"].items())
        title = f"tagged difficulty 1-10 (column {tagged['column']})"
        difficulty = Table(title=title, caption=f"sources: {sources}" if sources else None, min_width=len(title))
        difficulty.add_column("level")
        difficulty.add_column("rows", justify="right")
        for value, count in tagged["values"].items():
            difficulty.add_row(value, str(count))
        console.print(difficulty)

    lengths = Table(title="response length")
    for name in ("unit", "p10", "p50", "p90", "max"):
        lengths.add_column(name, justify="left" if name == "unit" else "right")
    for unit, key in (("chars", "response_chars"), ("tokens", "response_tokens")):
        if stats[key]:
            lengths.add_row(unit, *(str(stats[key][q]) for q in ("p10", "p50", "p90", "max")))
    console.print(lengths)
