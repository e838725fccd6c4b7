"""The counterfactual audit: does removing what the scores call helpful actually hurt?

For each seed s, the base model (or a small proxy) is fine-tuned with `curate.training` on:

    full        the whole scored pool (the reference)
    top         the pool without the k most helpful rows by the score column
    bottom      the pool without the k least helpful (most harmful) rows
    random      the pool without k random rows (drawn anew for each seed)
    length      the pool without the k longest rows (curate_tokens, else response characters)
    perplexity  the pool without the k rows of middle curate_nll (what `prune --strategy
                mid-perplexity` keeps first)
    embedding   the pool without the k rows most similar to the objective's query set
                (curate_embedding_<q> from `curate score --method embedding`)

and each fine-tuned model's query objective f_q (the mean over query set q of log p(answer |
prompt), summed over answer tokens, in nats; higher = the answers are more likely) is measured.
Each arm reports delta = f_q(arm) - f_q(full) per seed (negative = the removal hurt), and the
verdict compares arms seed by seed (same training seed, so shared noise cancels): removing the
top rows should hurt more than removing random rows (top - random < 0), and removing the bottom
rows less (bottom - random > 0). z is the mean paired difference over its standard error across
seeds.

Every finished fine-tune + evaluation is one line of `out_dir/audit.jsonl`, keyed by what it
depends on (model trained, training settings and seed, the removed ids, the query sets), not by
the arm's name: a rerun skips it, and another score column that removes the same rows (e.g. the
negated scores, whose top is the original bottom) reuses it. Results go to `out_dir/results.json`.

With `lds` = M > 0 the audit also fine-tunes on M seeded random subsets of the pool and reports
the linear datamodeling score of the score column and of every baseline side by side
(`curate.audit.lds`); those fine-tunes are keyed and reused the same way.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.audit.lds import LDSResult, lds_score, random_null, subset_rows
from curate.audit.parallel import check_workers, default_workers, run_all
from curate.data import Example, Pool
from curate.data.columns import EMBEDDING_PREFIX, INFLUENCE_PREFIX, main_score_columns
from curate.errors import DataError, UsageError
from curate.progress import Progress, Silent
from curate.stages import atomic_write_bytes, fingerprint
from curate.training.config import TrainConfig

if TYPE_CHECKING:
    from curate.training import Start

BASELINES = ("random", "length", "perplexity", "embedding")


@dataclass
class AuditConfig:
    """Settings of `audit`.

    base: the model before fine-tuning (B); every arm starts from it. model: the fine-tuned
        checkpoint the scores were computed on (M); its f_q is reported for reference.
    proxy: a small model of the same family fine-tuned instead of `base` (proxy mode; the result
        says so, and M is then not evaluated).
    score_column: the influence column ranking the pool ("helpful" = highest); None = the only
        `curate_influence_<q>` column (not a split). objective: the query set whose f_q the
        verdict uses; None = the one named by the column, else the only query set.
    k: fraction of the pool removed per arm, in (0, 0.5]. seeds: training seeds per arm (>= 1;
        >= 2 to get a standard deviation). baselines: among "random", "length", "perplexity",
        "embedding"; random is always run (it is the verdict's reference).
    lds: random subsets fine-tuned for the linear datamodeling score (0 = none, else >= 3; each
        subset trains with seed train.seed); subset_frac: fraction of the rows in each, in (0, 1).
    train: the SFT settings of every fine-tune (seed s runs with train.seed + s).
    eval_max_length: token bound for the query objective (None = none); eval_batch_tokens:
        padded tokens per evaluation batch. keep_models: save every arm's final weights to
        runs/<key>/model (default: none written, and each arm's checkpoints deleted once it is
        evaluated; the record in audit.jsonl is what counts).
    workers: fine-tunes run at once, each in a forked process on one thread
        (`curate.audit.parallel`; CPU and Linux only); None = `default_workers` (on a CPU one per
        thread of this process, as many as half the available memory holds; 1 on a GPU). Not part
        of a run's key: a record made with any number of workers is reused.
    """

    base: str
    model: str | None = None
    proxy: str | None = None
    score_column: str | None = None
    objective: str | None = None
    k: float = 0.1
    seeds: int = 5
    baselines: tuple[str, ...] = BASELINES
    lds: int = 0
    subset_frac: float = 0.5
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_max_length: int | None = None
    eval_batch_tokens: int = 4096
    keep_models: bool = False
    workers: int | None = None

    def __post_init__(self) -> None:
        errors = []
        if not 0 < self.k <= 0.5:
            errors.append(f"k must be in (0, 0.5], got {self.k}")
        if self.seeds < 1:
            errors.append(f"seeds must be >= 1, got {self.seeds}")
        self.baselines = tuple(self.baselines)
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            errors.append(f"unknown baselines {bad}; choose among {BASELINES}")
        if self.lds < 0 or self.lds in (1, 2):
            errors.append(f"lds must be 0 (none) or >= 3 subsets, got {self.lds}")
        if not 0 < self.subset_frac < 1:
            errors.append(f"subset_frac must be in (0, 1), got {self.subset_frac}")
        if self.eval_batch_tokens < 1 or (self.eval_max_length is not None and self.eval_max_length < 2):
            errors.append("eval_batch_tokens must be >= 1 and eval_max_length >= 2")
        if self.workers is not None and self.workers < 1:
            errors.append(f"workers must be >= 1, got {self.workers}")
        if errors:
            raise UsageError("; ".join(errors))

    @property
    def trained(self) -> str:
        """The model every arm fine-tunes: the proxy in proxy mode, else the base."""
        return self.proxy or self.base


@dataclass
class Comparison:
    """Paired difference of two arms' deltas over seeds: diff = delta(a) - delta(b) (nats).

    diff_mean, diff_std (sample std over seeds, 0 with one seed); z = diff_mean / (diff_std /
    sqrt(seeds)), None when the std is 0 (one seed, or identical runs).
    """

    a: str
    b: str
    diffs: list[float]
    diff_mean: float
    diff_std: float
    z: float | None


@dataclass
class ArmResult:
    """One arm. removed: rows left out. f: per seed, f_q of every query set (nats, mean over the
    set of the summed answer log-likelihood). delta: per seed, f_objective(arm) -
    f_objective(full) (0 for `full`; negative = removing the rows hurt). tokens_seen: per seed."""

    name: str
    description: str
    removed: int
    f: list[dict[str, float]]
    delta: list[float]
    delta_mean: float
    delta_std: float
    tokens_seen: list[int]


@dataclass
class Verdict:
    """helpful_vs_random = top - random (< 0: removing "helpful" rows hurt more, as it should);
    harmful_vs_random = bottom - random (> 0: removing "harmful" rows hurt less);
    helpful_vs_harmful = top - bottom (< 0 when the ranking orders rows the right way).
    helpful_hurts_more / harmful_hurts_less: the signs of the first two means. supported: both,
    with helpful_vs_random's z <= -2 (or, with no spread, every seed agreeing). summary: one line."""

    helpful_vs_random: Comparison
    harmful_vs_random: Comparison
    helpful_vs_harmful: Comparison
    baselines_vs_random: dict[str, Comparison]
    helpful_hurts_more: bool
    harmful_hurts_less: bool
    supported: bool
    summary: str


@dataclass
class AuditResult:
    """What `audit` measured; `to_dict` is results.json. f_start: f_q of the model before any
    fine-tuning (base or proxy); f_model: of M (None in proxy mode). fine_tunes / tokens: the
    run's cost (tokens = prompt + completion tokens over all fine-tunes)."""

    score_column: str
    objective: str
    trained: str
    proxy: bool
    rows: int
    removed: int
    queries: dict[str, int]
    f_start: dict[str, float]
    f_model: dict[str, float] | None
    arms: dict[str, ArmResult]
    verdict: Verdict
    fine_tunes: int
    tokens: int
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    lds: LDSResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditCost:
    """Planned cost, stated before anything runs: fine_tunes (total / still to run) and an
    estimate of the tokens they process (steps x examples per step x mean example length)."""

    fine_tunes: int
    pending: int
    tokens: int
    trained: str
    proxy: bool

    def render(self) -> str:
        where = f"proxy {self.trained!r} (not the base model)" if self.proxy else f"{self.trained!r}"
        return (f"audit cost: {self.fine_tunes} fine-tunes of {where} ({self.pending} to run, "
                f"{self.fine_tunes - self.pending} done), ~{self.tokens:,} training tokens in all")


def query_objective(model, tokenizer, queries: dict[str, Sequence[Example]], *, max_length: int | None = None,
                    batch_tokens: int = 4096) -> dict[str, float]:
    """f_q per query set: the mean over its examples of log p(answer | prompt), summed over the
    answer tokens (nats; <= 0, higher = more likely). The same objective `curate score` differentiates."""
    import torch

    from curate.influence.batches import make_batches, response_logprobs
    from curate.influence.tokens import tokenize_all

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = {}
    for name, examples in queries.items():
        items = [z for z in tokenize_all(tokenizer, examples, max_length) if z.scorable]
        if not items:
            raise DataError(f"query set {name!r}: no example has an answer token within the length bound")
        total = 0.0
        with torch.no_grad():
            for batch in make_batches(items, batch_tokens, pad_id):
                logp, _ = response_logprobs(model, batch.to(device))
                total += float(logp.sum(dim=1).double().sum())
        out[name] = total / len(items)
    return out


def resolve_column(columns: Sequence[str], column: str | None) -> str:
    """The score column to audit; DataError naming the available influence columns otherwise."""
    available = main_score_columns(columns)
    if column is None:
        if len(available) == 1:
            return available[0]
        raise DataError("give the score column to audit (--column); available: " + (", ".join(available) or "none"))
    if column not in columns:
        raise DataError(f"score column {column!r} not in the pool; available: " + (", ".join(available) or "none"))
    return column


def ranking_values(table, column: str, baselines: Sequence[str], objective: str | None = None) -> dict[str, Any]:
    """Ranking name -> per-row values (polars Series, null = unranked), higher = ranked first:
    "score" the column; "length" curate_tokens (else response characters); "perplexity" -|pct -
    0.5| of curate_nll (middle first); "embedding" curate_embedding_<objective>. A baseline whose
    column the table lacks is left out. "random" is not a ranking here (see `removal_sets`)."""
    import polars as pl

    values = {"score": table[column].cast(pl.Float64).fill_nan(None)}
    if "length" in baselines:
        values["length"] = table["curate_tokens" if "curate_tokens" in table.columns else "curate_response_chars"]
    if "perplexity" in baselines and "curate_nll" in table.columns:
        pct = (table["curate_nll"].rank("average") - 1) / max(table["curate_nll"].drop_nulls().len() - 1, 1)
        values["perplexity"] = -(pct - 0.5).abs()
    embedding = f"{EMBEDDING_PREFIX}{objective}"
    if "embedding" in baselines and embedding in table.columns:
        values["embedding"] = table[embedding]
    return {name: v.cast(pl.Float64).rename(name) for name, v in values.items()}


def removal_sets(table, column: str, n: int, *, seeds: int, seed: int, baselines: Sequence[str],
                 objective: str | None = None) -> dict[str, Any]:
    """Arm name -> removed curate_ids (a list per seed for random, one list otherwise).

    `table` (polars) has curate_id, `column` and optionally curate_tokens, curate_nll,
    curate_response_chars, curate_embedding_<objective>. Ties break by curate_id; rows with a
    null value are never removed by that ranking.
    """
    import numpy as np
    import polars as pl

    def top(values, descending: bool = True) -> list[str]:
        f = pl.DataFrame({"curate_id": table["curate_id"], "s": values.fill_nan(None)}).drop_nulls("s")
        return f.sort(["s", "curate_id"], descending=[descending, False]).head(n)["curate_id"].to_list()

    values = ranking_values(table, column, baselines, objective)
    ids = sorted(table["curate_id"].to_list())
    sets: dict[str, Any] = {"full": [], "top": top(values["score"]), "bottom": top(values["score"], descending=False)}
    sets["random"] = [sorted(np.random.default_rng([seed, s]).choice(ids, n, replace=False).tolist())
                      for s in range(seeds)]
    sets.update({name: top(v) for name, v in values.items() if name != "score"})
    return sets


DESCRIPTIONS = {
    "full": "whole pool (reference)", "top": "without the top-k (most helpful by the scores)",
    "bottom": "without the bottom-k (most harmful by the scores)", "random": "without k random rows",
    "length": "without the k longest rows", "perplexity": "without the k mid-perplexity rows",
    "embedding": "without the k rows most similar to the query set",
}


def audit(scored: Pool, *, queries: dict[str, Sequence[Example]], out_dir: Path, config: AuditConfig | None = None,
          progress: Progress | None = None, **settings) -> AuditResult:
    """Run the counterfactual audit (see the module doc); `settings` are `AuditConfig` fields,
    used when `config` is None. Writes out_dir/audit.jsonl (one line per finished fine-tune)
    and out_dir/results.json; returns the result (`curate.report.render_audit_card` writes its card)."""

    config = config or AuditConfig(**settings)
    progress = progress or Silent()
    out_dir = Path(out_dir)
    if not queries:
        raise UsageError("give at least one query set")
    column = resolve_column(scored.dataset.column_names, config.score_column)
    objective = config.objective or _objective_for(column, list(queries))
    if objective not in queries:
        raise UsageError(f"objective {objective!r} is not a query set; have {sorted(queries)}")
    table = _table(scored, column, objective)
    n = max(1, math.floor(config.k * len(table) + 0.5))
    if n >= len(table):
        raise DataError(f"k={config.k} of {len(table)} rows leaves nothing to train on")
    sets = removal_sets(table, column, n, seeds=config.seeds, seed=config.train.seed, baselines=config.baselines,
                        objective=objective)
    notes = []
    if "perplexity" in config.baselines and "perplexity" not in sets:
        notes.append("perplexity baseline skipped: the pool has no curate_nll column")
    if "embedding" in config.baselines and "embedding" not in sets:
        notes.append(f"embedding baseline skipped: the pool has no {EMBEDDING_PREFIX}{objective} column "
                     "(`curate score --method embedding`)")
    if config.proxy:
        notes.append(f"PROXY MODE: every arm fine-tunes {config.proxy!r}, not the base {config.base!r}; the "
                     "verdict holds for the proxy and transfers to the scored model only as far as the two agree")

    from curate.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(config.trained))
    queries_fp = fingerprint({q: [e.messages for e in ex] for q, ex in queries.items()}, config.eval_max_length)
    pool_fp = fingerprint(sorted(table["curate_id"].to_list()))
    jobs = [(arm, s, ids[s] if arm == "random" else ids) for arm, ids in sets.items() for s in range(config.seeds)]
    subsets = subset_rows(len(table), config.lds, config.subset_frac, config.train.seed) if config.lds else []
    all_ids = table["curate_id"].to_list()
    jobs += [(f"subset{j}", 0, _complement(all_ids, rows)) for j, rows in enumerate(subsets)]
    keyed = [(arm, s, removed, _key(config, s, removed, pool_fp, queries_fp)) for arm, s, removed in jobs]
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "audit.jsonl"
    done = _read_log(log)
    pending = sorted({key for *_, key in keyed if key not in done})
    cost = AuditCost(len({key for *_, key in keyed}), len(pending), _tokens_per_run(scored, tokenizer, config.train)
                     * len({key for *_, key in keyed}), config.trained, bool(config.proxy))
    progress.note(cost.render())

    by_key = {key: (arm, s, removed) for arm, s, removed, key in keyed}
    from curate.training import prepare_start

    # the model loaded and the pool tokenised on the first run, then shared by every arm
    start = functools.cache(lambda: prepare_start(config.trained, scored, config.train))
    workers = _workers(config, start, len(pending))
    if workers > 1:
        progress.note(f"{workers} fine-tunes at a time, one thread each")

    def run(key: str) -> dict[str, Any]:
        arm, s, removed = by_key[key]
        record = _run_arm(scored, set(removed), config, s, queries, out_dir / "runs" / key,
                          progress if workers == 1 else Silent(), start)
        return {**record, "key": key, "arm": arm, "seed": s, "removed": len(removed)}

    with progress.task("audit fine-tunes", len(pending), unit="run") as advance:
        for key, record in run_all(pending, run, workers=workers):
            done[key] = record
            with log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            advance(1)

    f_start = _reference("start", config.trained, queries, config, done, log, queries_fp)
    f_model = None if config.proxy or not config.model else _reference("model", config.model, queries, config, done,
                                                                        log, queries_fp)
    arms = {}
    for arm in sets:
        records = [done[key] for a, _, _, key in sorted(keyed, key=lambda j: j[1]) if a == arm]
        full = [done[key]["f"][objective] for a, _, _, key in sorted(keyed, key=lambda j: j[1]) if a == "full"]
        delta = [r["f"][objective] - f for r, f in zip(records, full, strict=True)]
        arms[arm] = ArmResult(arm, DESCRIPTIONS[arm], 0 if arm == "full" else n, [r["f"] for r in records], delta,
                              _mean(delta), _std(delta), [r["tokens_seen"] for r in records])
    records = [done[key] for a, _, _, key in keyed if a.startswith("subset")]
    lds = _lds(table, column, objective, config, subsets, records, notes) if subsets else None
    result = AuditResult(
        score_column=column, objective=objective, trained=config.trained, proxy=bool(config.proxy), rows=len(table),
        removed=n, queries={q: len(ex) for q, ex in queries.items()}, f_start=f_start, f_model=f_model, arms=arms,
        verdict=verdict(arms), fine_tunes=cost.fine_tunes,
        tokens=sum(done[key]["tokens_seen"] for key in {key for *_, key in keyed}),
        config={**asdict(config), "train": config.train.to_dict()}, notes=notes, lds=lds,
    )
    atomic_write_bytes(out_dir / "results.json", json.dumps(result.to_dict(), indent=2).encode())
    return result


def _complement(ids: list[str], rows) -> list[str]:
    """The ids not at positions `rows`, sorted: what a subset fine-tune leaves out."""
    kept = set(rows.tolist())
    return sorted(cid for i, cid in enumerate(ids) if i not in kept)


def _lds(table, column: str, objective: str, config: AuditConfig, subsets: list, records: list[dict],
         notes: list[str]) -> LDSResult:
    """The LDS of the score column and of each baseline (and the random rankings' null
    distribution) over the subset fine-tunes `records` (in subset order); a subset left out is
    said in `notes`."""
    kept = [(r["f"][objective], rows) for r, rows in zip(records, subsets, strict=True)
            if math.isfinite(r["f"][objective])]
    if len(kept) < len(records):
        notes.append(f"LDS: {len(records) - len(kept)} subset fine-tune(s) with a non-finite f_q({objective}) left out")
    if len(kept) < 3:
        raise DataError(f"LDS: only {len(kept)} subset fine-tunes have a finite f_q({objective}); need >= 3")
    f, subsets = [x for x, _ in kept], [rows for _, rows in kept]
    values = {name: v.to_numpy() for name, v in ranking_values(table, column, config.baselines, objective).items()}
    scores = {name: lds_score(name, f, v, subsets, seed=config.train.seed) for name, v in values.items()}
    scores["random"] = random_null(f, subsets, len(table), seed=config.train.seed)
    return LDSResult(objective, len(subsets), config.subset_frac, len(subsets[0]), len(table), f, scores)


def compare(a: ArmResult, b: ArmResult) -> Comparison:
    """Paired comparison of two arms' deltas, seed by seed (see `Comparison`)."""
    diffs = [x - y for x, y in zip(a.delta, b.delta, strict=True)]
    mean, std = _mean(diffs), _std(diffs)
    z = mean / (std / math.sqrt(len(diffs))) if std > 0 else None
    return Comparison(a.name, b.name, diffs, mean, std, z)


def verdict(arms: dict[str, ArmResult]) -> Verdict:
    """The verdict from the arms' deltas (see `Verdict`); needs full, top, bottom and random."""
    helpful, harmful = compare(arms["top"], arms["random"]), compare(arms["bottom"], arms["random"])
    spread = compare(arms["top"], arms["bottom"])
    baselines = {a: compare(arms[a], arms["random"]) for a in arms if a in ("length", "perplexity")}
    hurts_more, hurts_less = helpful.diff_mean < 0, harmful.diff_mean > 0
    strong = (helpful.z is not None and helpful.z <= -2) or (helpful.z is None and all(d < 0 for d in helpful.diffs)
                                                             and len(helpful.diffs) > 1)
    supported = hurts_more and hurts_less and strong
    z = f"z = {helpful.z:+.1f}" if helpful.z is not None else "no spread over seeds"
    if supported:
        summary = (f"supported: removing the top-k 'helpful' rows lowered f_q by {-helpful.diff_mean:.3g} nats more "
                   f"than removing random rows ({z}), and removing the bottom-k hurt less")
    elif hurts_more:
        summary = (f"weak: removing the top-k 'helpful' rows lowered f_q {-helpful.diff_mean:.3g} nats more than random "
                   f"({z})" + ("" if hurts_less else ", but removing the bottom-k hurt more than random too"))
    else:
        than = "less than" if helpful.diff_mean > 0 else "no more than"
        summary = (f"not supported: removing the top-k 'helpful' rows hurt f_q {than} removing random rows "
                   f"(difference {helpful.diff_mean:+.3g} nats, {z})")
    return Verdict(helpful, harmful, spread, baselines, hurts_more, hurts_less, supported, summary)


def steps_of(model: str) -> int | None:
    """Optimizer steps that produced `model`, when it is a `curate.training` output (train.json next
    to its folder); None otherwise."""
    for path in (Path(model) / "train.json", Path(model).parent / "train.json"):
        if path.is_file():
            return int(json.loads(path.read_text())["steps"])
    return None


def _objective_for(column: str, names: list[str]) -> str:
    q = column.removeprefix(INFLUENCE_PREFIX)
    if q in names:
        return q
    if len(names) == 1:
        return names[0]
    raise UsageError(f"cannot tell which query set {column!r} scores; name it (objective / --objective)")


def _table(scored: Pool, column: str, objective: str):
    import polars as pl

    ds = scored.dataset
    keep = [c for c in ("curate_id", column, "curate_tokens", "curate_nll", f"{EMBEDDING_PREFIX}{objective}")
            if c in ds.column_names]
    table = pl.DataFrame(ds.select_columns(keep).to_dict())
    if table["curate_id"].n_unique() != table.height:
        raise DataError("the scored pool has repeated curate_id values")
    if "curate_tokens" not in table.columns:
        table = table.with_columns(pl.Series("curate_response_chars", [len(e.response) for e in scored.examples()]))
    return table


def _key(config: AuditConfig, seed: int, removed: Sequence[str], pool_fp: str, queries_fp: str) -> str:
    train = replace(config.train, seed=config.train.seed + seed).to_dict()
    return fingerprint(_identity(config.trained), train, pool_fp, sorted(removed), queries_fp)


def _identity(model: str) -> str:
    """A local folder by its absolute path (so `a/../b` and `b` share records); anything else as is."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def _read_log(path: Path) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["key"]] = record
    return done


def _run_arm(scored: Pool, removed: set[str], config: AuditConfig, seed: int, queries, run_dir: Path,
             progress: Progress, start: Callable[[], Start]) -> dict[str, Any]:
    """Fine-tune a copy of `start()`'s model on its rows of the pool minus `removed`, evaluate f_q
    on the trained model in memory, free it; the record to log."""
    from curate.training import fine_tune

    keep = [i for i, cid in enumerate(scored.dataset["curate_id"]) if cid not in removed]
    pool = scored.with_dataset(scored.dataset.select(keep))
    train = replace(config.train, seed=config.train.seed + seed)
    result, model = fine_tune(config.trained, pool, train, run_dir, progress, start=start(),
                              save_model=config.keep_models)
    model.eval()
    f = query_objective(model, start().tokenizer, queries, max_length=config.eval_max_length,
                        batch_tokens=config.eval_batch_tokens)
    del model
    if not config.keep_models:
        for path in run_dir.glob("checkpoint-*"):
            shutil.rmtree(path, ignore_errors=True)
    return {"f": f, "steps": result.steps, "tokens_seen": result.tokens_seen, "final_loss": result.final_loss,
            "runtime_s": result.runtime_s}


def _reference(kind: str, name: str, queries, config: AuditConfig, done: dict, log: Path, queries_fp: str):
    """f_q of an untrained-by-the-audit model (the start point or M), cached in the log."""
    from curate.models import load_model

    key = fingerprint(kind, _identity(name), queries_fp)
    if key not in done:
        model, tokenizer = load_model(name, device=_device(config.train))
        f = query_objective(model, tokenizer, queries, max_length=config.eval_max_length,
                            batch_tokens=config.eval_batch_tokens)
        done[key] = {"key": key, "arm": kind, "model": name, "f": f}
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(done[key]) + "\n")
    return done[key]["f"]


def _workers(config: AuditConfig, start: Callable[[], Start], runs: int) -> int:
    """Fine-tunes at once for `runs` pending fine-tunes (`curate.audit.parallel`); with more than
    one the start is prepared here, before the fork, so that every child inherits it."""
    import torch

    device = _device(config.train)
    check_workers(config.workers or 1, device)
    if runs < 2 or config.workers == 1:
        return 1
    prepared = start()
    threads = torch.get_num_threads()  # set by the model's loading (curate.cpu.configure_threads)
    return min(config.workers or default_workers(prepared.model, config.train, runs, device=device, threads=threads),
               runs)


def _device(train: TrainConfig) -> str:
    if train.device != "auto":
        return train.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _tokens_per_run(scored: Pool, tokenizer, train: TrainConfig) -> int:
    """Estimated tokens of one fine-tune: steps x examples per step x mean tokenised length."""
    from curate.influence.tokens import tokenize_all

    sample = [e for _, e in zip(range(256), scored.examples(), strict=False)]
    lengths = [min(len(z.input_ids), train.max_length) for z in tokenize_all(tokenizer, sample, None)]
    return int(train.max_steps * train.batch_size * train.grad_accum * sum(lengths) / max(len(lengths), 1))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
