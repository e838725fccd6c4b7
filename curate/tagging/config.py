"""`TagConfig`: every setting of `curate tag`, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from curate.errors import UsageError
from curate.settings import Problem, check_settings, raise_problems, setting
from curate.shard import Shard
from curate.tagging.exploration import PROMPT_NAME, UNITS
from curate.tagging.prompts import BEHAVIORS
from curate.tagging.structured import MODES, constraint

TASKS = ("difficulty", "behaviors", "domain", "exploration_spans")
DEFAULT_TASKS = ("difficulty", "behaviors", "domain")
LONG_POLICIES = ("truncate", "split")


@dataclass
class TagConfig:
    """Settings of one tagging run. Checked in `__post_init__`; all problems reported at once."""

    tasks: tuple[str, ...] = setting(DEFAULT_TASKS, "Which tags to produce (comma-separated or repeated); "
                                     "exploration_spans marks the post-answer exploration `curate strip` deletes.",
                                     choices=TASKS)
    offline: bool = setting(False, "No server: native labels, rule estimates and marker phrases.")
    base_urls: tuple[str, ...] = setting((), "OpenAI-compatible server (.../v1). Repeat (or comma-separate) to "
                                         "share the load over several.", flag="--base-url", metavar="URL",
                                         envvar="CURATE_TAG_BASE_URL")
    model: str = setting("", "Rater model name on the server (e.g. Qwen/Qwen2.5-32B-Instruct).")
    api_key_env: str = setting("OPENAI_API_KEY", "Environment variable holding the API key (never written "
                               "anywhere).")
    concurrency: int = setting(32, "Requests in flight, over all servers.", low=1)
    server_concurrency: int | None = setting(None, "Requests in flight on any one server [default: no bound "
                                             "beyond {concurrency}].", low=1)
    temperature: float = setting(0.0, "Rater sampling temperature.", low=0)
    max_tokens: int = setting(512, "Bound on each rater reply.", low=1)
    timeout: float = setting(120.0, "Time per request before it counts as a timeout, plus {timeout_per_token} "
                             "per prompt token.", low=0, unit="s")
    timeout_per_token: float = setting(0.02, "Time added to {timeout} per (estimated) prompt token: a server's "
                                       "prefill grows with the prompt (0.02 s suits ~50 tokens/s and up).", low=0,
                                       unit="s")
    max_retries: int = setting(6, "Retries per request after the first attempt (429, 5xx, dropped connections).",
                               low=0)
    timeout_retries: int = setting(1, "Retries of a request that timed out (a slow server keeps working on an "
                                   "abandoned request: retrying it only adds load).", low=0)
    structured: str = setting("auto", "Ask the server to constrain each answer's shape: json (a JSON schema in "
                              "response_format), regex (vLLM's guided_regex), off (parse the text), or auto (json, "
                              "and text from the first refusal on; the card says so).", choices=MODES)
    calibrate: int | None = setting(None, "First tag a seeded sample of N rows that carry native difficulty labels "
                                    "(MATH level, TACO/APPS difficulty, --native-map) and report the rater's "
                                    "agreement with them (Spearman, quadratic-weighted kappa, confusion), the parse "
                                    "rate per task and the cost per 1,000 rows; without native labels, the agreement "
                                    "of two samples of each row. The output holds the sample only, unless "
                                    "{then_all}.", low=1, metavar="N")
    then_all: bool = setting(False, "With {calibrate}: go on and tag every row after the calibration.")
    sample_seed: int | None = setting(None, "OpenAI `seed` sent with each request (a second calibration sample).",
                                      cli=False, recipe=False)
    tokenizer: str | None = setting(None, "The rater's tokenizer (path, Hub id or alias) to count prompt tokens "
                                    "[default: the server's /tokenize when it has one, else characters / 2].",
                                    model=True)
    context: int | None = setting(None, "The rater's context in tokens; prompts are clipped so that prompt + "
                                  "{max_tokens} fit [default: from the server's /v1/models when it says].", low=256)
    backoff: float = setting(0.5, "First backoff; doubles per retry, times jitter in [0.5, 1.5).", low=0,
                             unit="s", cli=False)
    max_backoff: float = setting(30.0, "Longest backoff.", low=0, unit="s", cli=False)
    max_chars: int = setting(12000, "Longest text sent per field.", low=200)
    long: str = setting("truncate", "Traces over {max_chars}: keep head and tail, or rate windows and sum counts.",
                        choices=LONG_POLICIES)
    segments: str = setting("steps", "How exploration_spans cuts thoughts: steps (paragraphs) or sentences "
                            "(strip's --unit must match).", choices=UNITS)
    spans_max_chars: int = setting(14000, "Longest numbered thought sent for exploration_spans (about an 8k-token "
                                   "context at 2 characters per token); a longer one gets no spans (and `curate "
                                   "strip` keeps it). It is never clipped: its segment numbers must all be seen.",
                                   low=200)
    prompts_dir: str | None = setting(None, "Folder of templates overriding prompts/<name>.md.", flag="--prompts",
                                      path=True)
    cache: str | None = setting(None, "SQLite request cache [default: OUTPUT.tagcache.sqlite; from Python: in "
                                "memory, nothing kept].", path=True, beside_output=".tagcache.sqlite")
    native: bool = setting(False, "With a server: keep native difficulty labels, rate only the rest.")
    native_map: dict[str, int] = setting(help="Override the native-label table (e.g. EASY=3); levels 1-10.",
                                         factory=dict, low=1, high=10, metavar="RAW=LEVEL")
    price_in: float = setting(0.0, "Price of input tokens, for the cost estimate.", low=0, unit="$ per 1M tokens")
    price_out: float = setting(0.0, "Price of output tokens.", low=0, unit="$ per 1M tokens")
    seed: int = setting(0, "Seed of the backoff jitter.", cli=False)
    shard: Shard | str | None = setting(None, "i/N: tag only shard i (0-based) of N contiguous row ranges; the "
                                        "output holds those rows.", metavar="i/N", recipe=False)
    cache_only: bool = setting(False, "Send nothing: answers come from the cache only (batch export/import).",
                               cli=False, recipe=False)

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = (self.tasks,)
        self.tasks = tuple(t.strip() for item in self.tasks for t in item.split(",") if t.strip())
        if isinstance(self.base_urls, str):
            self.base_urls = (self.base_urls,)
        # "--base-url a,b" and repeated --base-url both work: split every item on commas.
        self.base_urls = tuple(u.strip() for item in self.base_urls for u in item.split(",") if u.strip())
        problems = check_settings(self)
        if self.shard is not None:
            try:
                self.shard = Shard.parse(self.shard)
            except UsageError as err:
                problems.append(Problem(f"{{shard}}: {err}"))
        if not self.offline:
            if not self.base_urls and not self.cache_only:
                problems.append(Problem("give {base_urls} (an OpenAI-compatible server) or {offline}"))
            if not self.model:
                problems.append(Problem("give {model} (the rater model's name on the server) or {offline}"))
        if self.then_all and self.calibrate is None:
            problems.append(Problem("{then_all} applies with {calibrate}"))
        for raw, value in self.native_map.items():
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(Problem(f"{{native_map}} {raw!r}={value!r}: levels are integers 1-10"))
        raise_problems(self, problems)

    @property
    def params(self) -> dict:
        """Sampling parameters sent with every request (and part of every cache key)."""
        seed = {} if self.sample_seed is None else {"seed": self.sample_seed}
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, **seed}

    def request_params(self, task: str) -> dict:
        """`params` plus the answer constraint of `task` under `structured` (all in the cache key)."""
        return {**self.params, **constraint(task, self.structured)}

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
        if "exploration_spans" in self.tasks:
            names.append(PROMPT_NAME)
        return names
