"""`Shard`: which part of the work one process does (torchrun ranks and `--shard i/N` jobs alike)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from curate.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Part `rank` (0-based) of `world_size` contiguous parts of a sequence, in order."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and isinstance(self.world_size, int) and 0 <= self.rank < self.world_size):
            raise UsageError(f"shard {self.rank}/{self.world_size}: expected i/N with integers 0 <= i < N, e.g. 0/4")

    def span(self, n: int) -> range:
        """Indices of this part of n items: sizes differ by at most one (the first n % N parts
        get the extra item)."""
        size, extra = divmod(n, self.world_size)
        start = self.rank * size + min(self.rank, extra)
        return range(start, start + size + (self.rank < extra))

    def take(self, items: Sequence[T]) -> list[T]:
        return [items[i] for i in self.span(len(items))]

    def __str__(self) -> str:
        return f"{self.rank}/{self.world_size}"

    @classmethod
    def parse(cls, value: str | Shard | tuple[int, int] | list[int]) -> Shard:
        """`"i/N"`, `(i, N)` or a Shard; anything else is a one-line `UsageError`."""
        if isinstance(value, Shard):
            return value
        if isinstance(value, str):
            rank, sep, world = value.strip().partition("/")
            if not sep or not rank.strip().isdigit() or not world.strip().isdigit():
                raise UsageError(f"shard {value!r}: expected i/N with integers 0 <= i < N, e.g. 0/4")
            return cls(int(rank), int(world))
        rank, world = value
        return cls(rank, world)
