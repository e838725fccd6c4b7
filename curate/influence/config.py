"""`ScoreConfig`: every setting of an influence run, shared by the CLI, recipes and the API."""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from curate.data.segments import SEGMENT_METHODS, SEGMENTERS
from curate.errors import UsageError
from curate.settings import Problem, check_settings, raise_problems, setting
from curate.shard import Shard

FISHER = ("true", "empirical")
NORMALIZE = ("none", "query", "train", "both")
DTYPES = ("float32", "float64", "bfloat16")
QUERY_ANSWERS = ("reference", "model")
METHODS = ("ekfac", "embedding")
CHECKPOINT_WEIGHTS = ("lr", "equal")


AUTO_SPLIT_MIN = 4  # query examples per set below which the default scores no splits


@dataclass
class ScoreConfig:
    """Settings of `curate score` (each field's help says what it does; see also METHODS.md).

    Units: `*_gb` in GB (factors are float64), lengths in tokens, `batch_tokens` in padded tokens
    (B x T). `seed` seeds the Fisher label sampling, the fit subsample and the query splits.
    """

    model: str = setting(MISSING, "HF causal LM: local folder, Hub id, or `smollm2-135m` (packaged). Normally "
                         "the model already fine-tuned on the pool (Infra scores the SFT'd model).", model=True)
    method: str = setting("ekfac", "ekfac: EK-FAC influence, curate_influence_<q>; embedding: the RDS+ baseline, "
                          "cosine of each row's mean-pooled last hidden state to query set q's mean direction, "
                          "curate_embedding_<q> (one forward pass per row; only {model}, {max_length}, "
                          "{batch_tokens}, {dtype}, {device} and {trust_remote_code} apply).", choices=METHODS)
    query_answers: str = setting("reference", "What the query answers are: reference solutions, or the model's "
                                 "own verified-correct answers (Infra's reading; `curate query` builds them). "
                                 "Recorded in the card.", choices=QUERY_ANSWERS)
    fisher: str = setting("true", "Labels for the curvature: sampled from the model (true Fisher, seeded; Grosse "
                          "et al.) or the data's own (empirical).", choices=FISHER)
    damping: float | str = setting("auto", "auto = 0.1 x mean corrected eigenvalue per module, or a number >= 0.")
    fit_on: int = setting(5000, "Pool examples (seeded subsample) used to fit the factors; all when fewer.", low=1)
    fit_max_length: int = setting(4096, "Token bound when fitting (Infra: 4096); longer ones are cut and counted.",
                                  low=1)
    max_length: int | None = setting(None, "Token bound when scoring; cut examples are counted and flagged in "
                                     "curate_truncated [default: the model's context].", low=2)
    modules: str = setting("mlp", "Tracked Linears: mlp (the MLP projections, as Infra), all (every Linear but "
                           "the head), or a regex on module names.")
    normalize: str = setting("none", "Per-token log-likelihoods for the query objective, the train example, both "
                             "or neither (summed, as the papers write them).", choices=NORMALIZE)
    query_splits: int | None = setting(None, "Also score K disjoint, seeded splits of each query set (K >= 2; 0 = "
                                       "none); their agreement is the ranking-stability report [default: 2 when "
                                       f"every query set has >= {AUTO_SPLIT_MIN} examples, else 0].", low=0)
    query_rank: int | None = setting(None, "Keep each preconditioned query direction as its best rank-R "
                                     "approximation (truncated SVD, as kronfluence's query_gradient_low_rank): "
                                     "memory and scoring work per layer and function drop from out x in to "
                                     "R (out + in), at the cost of exactness (see benchmarks/RESULTS.md) "
                                     "[default: exact].", low=1, metavar="R")
    checkpoints: tuple[str, ...] = setting(factory=tuple, help="Score with each of these models in turn "
                                           "(checkpoints of one fine-tune, e.g. run/checkpoint-*, or independently "
                                           "trained models; a glob expands in step order) and write their weighted "
                                           "mean, keeping each as curate_influence_<q>_ck<i>; each is fitted and "
                                           "scored on its own, resumable per checkpoint. {model} is then not "
                                           "scored unless listed.", metavar="A,B,...")
    checkpoint_weights: str = setting("lr", "With {checkpoints}: lr weighs each by the mean learning rate its "
                                      "trainer logged since the previous one (LESS; trainer_state.json), equal "
                                      "by 1 each; lr falls back to equal, with a note, where a trainer state is "
                                      "missing.", choices=CHECKPOINT_WEIGHTS)
    seed: int = setting(0, "Seed of the Fisher label sampling, the fit subsample and the query splits.")
    batch_tokens: int = setting(4096, "Padded tokens per batch (B x T); bounds activation memory.", low=1)
    chunk_size: int = setting(128, "Examples per resumable scoring chunk.", low=1)
    dtype: str = setting("float32", "The model's compute dtype; factors are always float64.", choices=DTYPES)
    group_memory_gb: float = setting(8.0, "Factor memory per module group (float64); each group costs one pass.",
                                     low=0, low_open=True, unit="GB")
    trust_remote_code: bool = setting(False, "Let transformers run the model repository's own code.")
    device: str = setting("auto", "auto (cuda when available, else cpu), cpu, cuda:1, ...")
    pair_cache_gb: float | None = setting(None, "Memory for the covariance pass's activations and output "
                                          "gradients, replayed for the eigenvalue correction and the fit examples' "
                                          "scores (skips two model passes when they fit here and in "
                                          "{pair_spill_gb}) [default: 0 on CPU, where they go to the disk spill "
                                          "and the OS page cache serves them back, 2 on GPUs].", low=0, unit="GB")
    pair_spill_gb: float | None = setting(None, "Disk under the work dir for the pairs past {pair_cache_gb}, read "
                                          "back instead of rerunning the model (deleted after use) [default: 32 on "
                                          "CPU, 0 on GPUs, where recomputing is faster]. Both 0: no replay.", low=0,
                                          unit="GB")
    tokens: bool = setting(False, "Also write per-token influence of every response token (OUT/tokens.parquet, "
                           "or NAME.tokens.parquet next to a file output), keyed by curate_id; tokens sum to the "
                           "example's score.")
    tokens_top: int | None = setting(None, "With {tokens}: only the K highest-scoring examples of each query set "
                                     "(what `curate report` shows), after the instance scores; far cheaper than "
                                     "every example on a large pool.", low=1, metavar="K")
    sentences: str | None = setting(None, "Also write counterfactual segment influence I(z) - I(z without y) for "
                                    "each segment y (sentences, blank-line steps, or thought/solution blocks) to "
                                    "OUT/sentences.parquet (or NAME.sentences.parquet); costs one scored variant "
                                    "per segment.", choices=SEGMENTERS)
    sentence_method: str = setting("ablation", "ablation: I(z) - I(z without y), as Infra; linear: sum of the "
                                   "segment's exact token scores (one pass per query set, ignores the segment's "
                                   "role as context).", choices=SEGMENT_METHODS)
    shard: str | None = setting(None, "Run as job i of N independent jobs (SLURM arrays, spot machines) sharing the "
                                "work dir: each run does its part of the next step and stops; `curate merge WORK` "
                                "combines the parts; repeat until the jobs report scores, then run without {shard} "
                                "to write the output. (Under torchrun / accelerate launch the ranks divide the "
                                "work without this.)", metavar="i/N", recipe=False)

    def __post_init__(self) -> None:
        problems = check_settings(self)
        if self.damping != "auto":
            try:
                self.damping = float(self.damping)
            except ValueError:
                problems.append(Problem(f"{{damping}} {self.damping!r}: must be 'auto' or a number"))
            else:
                if self.damping < 0:
                    problems.append(Problem(f"{{damping}} {self.damping}: must be >= 0"))
        if self.query_splits == 1:
            problems.append(Problem("{query_splits} 1: must be 0 (none) or >= 2"))
        if self.tokens_top is not None and not self.tokens:
            problems.append(Problem("{tokens_top} only applies with {tokens}"))
        if self.checkpoints:
            for name in ("tokens", "sentences", "shard"):
                if getattr(self, name):
                    problems.append(Problem(f"{{{name}}} does not combine with {{checkpoints}}: score each "
                                            "checkpoint on its own for it"))
        if self.method == "embedding":
            for name in ("tokens", "sentences", "shard", "checkpoints"):
                if getattr(self, name):
                    problems.append(Problem(f"{{{name}}} applies to {{method}} ekfac, not embedding"))
        if self.shard is not None:
            try:
                Shard.parse(self.shard)
            except UsageError as err:
                problems.append(Problem(f"{{shard}}: {err}"))
        raise_problems(self, problems)

    @property
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import os

        import torch

        # Under torchrun / accelerate each process takes the GPU of its local rank.
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"

    @property
    def resolved_pair_cache_gb(self) -> float:
        if self.pair_cache_gb is not None:
            return self.pair_cache_gb
        return 0.0 if self.resolved_device == "cpu" else 2.0

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
