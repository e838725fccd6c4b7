"""`Example`: the canonical view of one pool row, the only thing the engines see."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One row in canonical form.

    `messages` are `{"role", "content"}` dicts in chat order, with any separate system prompt folded
    in as the first message. The last message is the assistant response whose tokens carry the loss
    (or, for a query set, the answer whose likelihood is measured); everything before it is prompt.
    `thought`/`solution` are the two parts of the response where the trace marks them
    (`<|begin_of_thought|>`, `<think>`), else None.
    """

    id: str
    messages: tuple[dict[str, str], ...]
    domain: str | None = None
    thought: str | None = None
    solution: str | None = None

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        return list(self.messages[:-1])

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]
