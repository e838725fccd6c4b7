"""`TagConfig`: every setting of `curate tag`, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field

from curate.errors import UsageError
from curate.shard import Shard
from curate.tagging.prompts import BEHAVIORS

TASKS = ("difficulty", "behaviors", "domain")
LONG_POLICIES = ("truncate", "split")


@dataclass
class TagConfig:
    """Settings of one tagging run. Checked in `__post_init__`; all errors reported at once."""

    tasks: tuple[str, ...] = TASKS  # which tags to produce: difficulty, behaviors, domain
    offline: bool = False  # native labels + rules, no server
    base_urls: tuple[str, ...] = ()  # OpenAI-compatible servers (…/v1) sharing the load (a string: comma list)
    model: str = ""  # rater model name as the server knows it
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key (the key itself is never stored)
    concurrency: int = 32  # HTTP requests in flight, over all base URLs
    server_concurrency: int | None = None  # requests in flight on any one server (None: only the total bound)
    temperature: float = 0.0
    max_tokens: int = 512  # rater reply bound
    timeout: float = 120.0  # seconds per request before it counts as a timeout
    max_retries: int = 6  # retries per request after the first attempt
    backoff: float = 0.5  # first backoff (s); doubles per retry, times jitter in [0.5, 1.5)
    max_backoff: float = 30.0
    max_chars: int = 12000  # longest text sent per field; longer: head/tail truncation or windows
    long: str = "truncate"  # long-trace policy: truncate (head + tail) or split (windows, counts summed)
    prompts_dir: str | None = None  # user templates overriding prompts/<name>.md
    cache: str | None = None  # SQLite cache path (None: in-memory, nothing kept)
    native: bool = False  # with a server: use native difficulty labels where present, ask only the rest
    native_map: dict[str, int] = field(default_factory=dict)  # overrides of offline.NATIVE_DIFFICULTY
    price_in: float = 0.0  # $ per 1M input tokens, for the cost estimate
    price_out: float = 0.0  # $ per 1M output tokens
    seed: int = 0  # backoff jitter
    shard: Shard | str | None = None  # "i/N" or a Shard: tag only rows of shard i (0-based) of N
    cache_only: bool = False  # send nothing: answers come from the cache only (batch export/import)

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = tuple(t.strip() for t in self.tasks.split(",") if t.strip())
        self.tasks = tuple(self.tasks)
        if isinstance(self.base_urls, str):
            self.base_urls = (self.base_urls,)
        # "--base-url a,b" and repeated --base-url both work: split every item on commas.
        self.base_urls = tuple(u.strip() for item in self.base_urls for u in item.split(",") if u.strip())
        errors = []
        if self.shard is not None:
            try:
                self.shard = Shard.parse(self.shard)
            except UsageError as err:
                errors.append(str(err))
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            errors.append(f"tasks {', '.join(bad) or '(none)'}: choose from {', '.join(TASKS)}")
        if not self.offline:
            if not self.base_urls and not self.cache_only:
                errors.append("give --base-url (an OpenAI-compatible server) or --offline")
            if not self.model:
                errors.append("give --model (the rater model's name on the server) or --offline")
        if self.concurrency < 1:
            errors.append(f"concurrency {self.concurrency}: must be >= 1")
        if self.server_concurrency is not None and self.server_concurrency < 1:
            errors.append(f"server_concurrency {self.server_concurrency}: must be >= 1")
        if self.max_chars < 200:
            errors.append(f"max_chars {self.max_chars}: must be >= 200")
        if self.long not in LONG_POLICIES:
            errors.append(f"long {self.long!r}: choose from {', '.join(LONG_POLICIES)}")
        for name in ("timeout", "backoff", "max_backoff", "price_in", "price_out", "temperature"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0")
        if self.max_retries < 0 or self.max_tokens < 1:
            errors.append("max_retries must be >= 0 and max_tokens >= 1")
        for raw, value in self.native_map.items():
            if not (isinstance(value, int) and 1 <= value <= 10):
                errors.append(f"native_map {raw!r}={value!r}: levels are integers 1-10")
        if errors:
            raise UsageError("; ".join(errors))

    @property
    def params(self) -> dict:
        """Sampling parameters sent with every request (and part of every cache key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def shard_range(self, rows: int) -> range:
        """The row indices this run tags: all `rows`, or its shard's contiguous range."""
        return self.shard.span(rows) if self.shard else range(rows)

    def prompt_names(self) -> list[str]:
        names = []
        if "domain" in self.tasks:
            names.append("domain")
        if "difficulty" in self.tasks:
            names += ["difficulty_math", "difficulty_code"]
        if "behaviors" in self.tasks:
            names += [f"behavior_{b}" for b in BEHAVIORS]
        return names
