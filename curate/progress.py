"""Progress reporting that the library can call without printing: the CLI plugs in rich."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    """What long-running library functions report to. `task` yields an `advance(n)` callable."""

    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]: ...

    def note(self, message: str) -> None: ...


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Hide `datasets`' own progress bars (e.g. "Flattening the indices") during an internal step,
    then restore their previous state; curate's own progress is unaffected."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


class Silent:
    """The library default: report nothing."""

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def note(self, message: str) -> None:
        pass


class RichProgress:
    """Progress bars with rate and ETA on stderr (rich)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed:.2f} {unit}/s" if task.speed else f"- {unit}/s")

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task_id = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task_id, n)

    def note(self, message: str) -> None:
        self.console.print(message)
