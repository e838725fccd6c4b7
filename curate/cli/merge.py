"""`curate merge`: combine the parts written by `curate score --shard i/N` jobs."""

from __future__ import annotations

import click


@click.command()
@click.argument("work_dir", type=click.Path(exists=True, file_okay=False))
def merge(work_dir) -> None:
    """Combine the factor parts of `curate score --shard i/N` jobs in WORK_DIR (their --work-dir).

    Merges the step the jobs last finished (covariance sums into eigenbases, or eigenvalue
    corrections into factors) and says what to run next. A part from another run, or a missing
    part, is refused.
    """
    from curate.influence.parts import merge as merge_parts

    click.echo(merge_parts(work_dir), err=True)
