"""`ScoreConfig`: every setting of an influence run, shared by the CLI, recipes and the API."""

from __future__ import annotations

from dataclasses import dataclass

from curate.errors import UsageError
from curate.shard import Shard

FISHER = ("true", "empirical")
NORMALIZE = ("none", "query", "train", "both")
DTYPES = ("float32", "float64", "bfloat16")


AUTO_SPLIT_MIN = 4  # query examples per set below which the default scores no splits


@dataclass
class ScoreConfig:
    """Settings of `curate score`.

    model: HF causal LM (local path, Hub id, or the alias `smollm2-135m`): the model studied,
        normally the one already fine-tuned on the pool (Infra scores the SFT'd model).
    fisher: "true" samples the labels that form S and Lambda* from the model (Grosse et al.,
        seeded); "empirical" uses the data's own tokens.
    damping: "auto" = 0.1 x mean(Lambda*) per module, or an absolute number.
    fit_on: number of pool examples (seeded subsample) used to fit the factors; all when fewer.
    fit_max_length: tokens per sequence when fitting (Infra: 4096); longer ones are cut and counted.
    max_length: tokens per sequence when scoring; None = the model's context. Cut ones are
        counted and flagged in `curate_truncated`.
    modules: "mlp" (the MLP projections, as Infra), "all" (every Linear but the head), or a
        regular expression on module names.
    normalize: per-token log-likelihoods for the query objective ("query"), the training
        example ("train"), both, or neither (default: summed, as the papers write them).
    query_splits: K >= 2 also scores K disjoint, seeded splits of each query set (0 = none); their
        agreement is the ranking-stability report (`curate.influence.stability`). None (default):
        2 when every query set has at least `AUTO_SPLIT_MIN` examples, else 0.
    query_rank: None (default) keeps each preconditioned query direction exact; R keeps its best
        rank-R approximation (truncated SVD, as kronfluence's `query_gradient_low_rank`), which
        cuts the directions' memory and the scoring hooks' work per token from out x in' to
        R (out + in') per tracked layer and function (`curate.influence.directions`). An
        approximation: benchmarks/RESULTS.md reports its rank correlation with exact scores.
    seed: seeds the Fisher label sampling, the fit subsample and the query splits.
    batch_tokens: padded tokens per batch (B x T); bounds activation memory.
    chunk_size: examples per resumable scoring chunk.
    dtype: the model's compute dtype; factors are always float64.
    group_memory_gb: factor memory per module group (GB, float64); each group costs one pass.
    device: "auto" (cuda when available, else cpu), or a torch device string.
    pair_cache_gb: memory (GB) for keeping the covariance pass's activations and output
        gradients, so the eigenvalue correction replays them instead of running the model a second
        time; when the fit data needs more, the second pass runs as usual. With the empirical
        Fisher the same pairs also score the fit examples (their covariance pass is their
        scoring pass), so a pool that is its own fit set runs through the model once. 0 disables it.
    pair_spill_gb: disk (GB, under the work dir's factors/.pairs, deleted after use) for the pairs
        past `pair_cache_gb`. None (default): 32 on CPU, where reading pairs back is far cheaper
        than recomputing them, and 0 on GPUs, where it is not.
    tokens: also compute exact per-token scores (one forward-mode pass per query set; see
        `curate.influence.token_scores`).
    tokens_top: with `tokens`, score the tokens of only the `tokens_top` highest-scoring examples of
        each query set (what `curate report` shows), after the instance scores, instead of every
        example; None = every example. The forward-mode pass costs several plain forwards per
        query set, so on a large pool this is the difference between minutes and hours.
    sentences: also compute counterfactual segment influence, I(z) - I(z without y), per segment y
        of each response, split by "sentences", "steps" (blank-line paragraphs) or "blocks"
        (thought / solution).
    sentence_method: "ablation" (Infra: I(z) - I(z without y), one extra scored example per
        segment) or "linear" (the sum of the segment's exact token scores; one forward-mode pass
        per query set; see `curate.influence.segment_scores`).
    shard: "i/N" makes this run one of N independent jobs (no process group): it does its part
        of the next unfinished step and stops; `curate merge` combines the parts (see
        `curate.influence.parts`). Under torchrun the ranks divide the work instead.
    """

    model: str
    fisher: str = "true"
    damping: float | str = "auto"
    fit_on: int = 5000
    fit_max_length: int = 4096
    max_length: int | None = None
    modules: str = "mlp"
    normalize: str = "none"
    query_splits: int | None = None
    query_rank: int | None = None
    seed: int = 0
    batch_tokens: int = 4096
    chunk_size: int = 128
    dtype: str = "float32"
    group_memory_gb: float = 8.0
    trust_remote_code: bool = False
    device: str = "auto"
    pair_cache_gb: float = 2.0
    pair_spill_gb: float | None = None
    tokens: bool = False
    tokens_top: int | None = None
    sentences: str | None = None
    sentence_method: str = "ablation"
    shard: str | None = None

    def __post_init__(self) -> None:
        errors = []
        if self.fisher not in FISHER:
            errors.append(f"fisher must be one of {FISHER}, got {self.fisher!r}")
        if self.normalize not in NORMALIZE:
            errors.append(f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if self.dtype not in DTYPES:
            errors.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.damping != "auto":
            try:
                self.damping = float(self.damping)
            except ValueError:
                errors.append(f"damping must be 'auto' or a number, got {self.damping!r}")
            else:
                if self.damping < 0:
                    errors.append("damping must be >= 0")
        if self.query_splits is not None and (self.query_splits == 1 or self.query_splits < 0):
            errors.append("query_splits must be 0 (none) or >= 2")
        if self.tokens_top is not None and (self.tokens_top < 1 or not self.tokens):
            errors.append("tokens_top must be >= 1, and only applies with tokens")
        if self.query_rank is not None and self.query_rank < 1:
            errors.append("query_rank must be >= 1 (or None for exact directions)")
        for name in ("fit_on", "fit_max_length", "batch_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1")
        if self.max_length is not None and self.max_length < 2:
            errors.append("max_length must be >= 2")
        from curate.influence.segments import SEGMENT_METHODS, SEGMENTERS

        if self.sentences is not None and self.sentences not in SEGMENTERS:
            errors.append(f"sentences must be one of {SEGMENTERS}, got {self.sentences!r}")
        if self.shard is not None:
            try:
                Shard.parse(self.shard)
            except UsageError as err:
                errors.append(str(err))
        if self.sentence_method not in SEGMENT_METHODS:
            errors.append(f"sentence_method must be one of {SEGMENT_METHODS}, got {self.sentence_method!r}")
        if self.pair_cache_gb < 0:
            errors.append("pair_cache_gb must be >= 0")
        if self.pair_spill_gb is not None and self.pair_spill_gb < 0:
            errors.append("pair_spill_gb must be >= 0")
        if self.group_memory_gb <= 0:
            errors.append("group_memory_gb must be > 0")
        if errors:
            raise UsageError("; ".join(errors))

    @property
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import os

        import torch

        # Under torchrun / accelerate each process takes the GPU of its local rank.
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"

    @property
    def resolved_pair_spill_gb(self) -> float:
        if self.pair_spill_gb is not None:
            return self.pair_spill_gb
        return 32.0 if self.resolved_device == "cpu" else 0.0

    def with_splits_for(self, query_sizes: list[int]) -> ScoreConfig:
        """This config with `query_splits` resolved for query sets of these sizes."""
        if self.query_splits is not None:
            return self
        import dataclasses

        return dataclasses.replace(self, query_splits=2 if min(query_sizes, default=0) >= AUTO_SPLIT_MIN else 0)

    @property
    def sample_seed(self) -> int | None:
        return self.seed if self.fisher == "true" else None

    @property
    def per_token_query(self) -> bool:
        return self.normalize in ("query", "both")

    @property
    def per_token_train(self) -> bool:
        return self.normalize in ("train", "both")
