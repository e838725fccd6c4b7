"""`score_pool`: EK-FAC influence of every pool example on every query set, resumably.

Stages, each under `work_dir` with its own manifest (reused on rerun, refused when its inputs or
settings changed):
  factors/   EK-FAC factors, one safetensors file per module (fitted group by group: covariance
             pass, eigendecomposition, Lambda* pass; a finished group is not refitted)
  queries/   preconditioned query directions, one file per query set (a new set costs one pass)
  scores/    per-chunk score tables; a killed run resumes at the first missing chunk
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from curate.data.example import Example
from curate.errors import UsageError
from curate.influence.batches import make_batches
from curate.influence.capture import select_modules
from curate.influence.config import ScoreConfig
from curate.influence.context import ScoreContext
from curate.influence.directions import concat
from curate.influence.distributed import Collective
from curate.influence.fitting import (
    fit_factor_part,
    fit_factors,
    query_directions,
    tokens_fingerprint,
)
from curate.influence.plan import Plan, group_modules, make_plan
from curate.influence.scoring import score_batches
from curate.influence.segment_scores import segment_table
from curate.influence.stability import StabilityReport, stability_all
from curate.influence.token_scores import token_scores
from curate.influence.tokens import Tokenized, tokenize_all
from curate.progress import Progress, Silent
from curate.shard import Shard
from curate.stages import atomic_write, fingerprint


@dataclass
class ScoreResult:
    """`table`: one row per pool example (curate_id, curate_influence_<q>[_split<k>], curate_nll,
    curate_tokens, curate_truncated). `plan`: what was run. `columns`: the influence columns.
    `tokens` (with `config.tokens`): per scorable example, `token_ids` of its response and
    `token_influence_<q>`, the influence of each response token's log-likelihood on query set q
    (lists of equal length that sum to the instance score). `sentences` (with
    `config.sentences`): per segment of each response, its span and `segment_influence_<q>` =
    I(z) - I(z without the segment). `stability` (with query splits): how alike the disjoint
    splits rank the pool, per query set (`curate.influence.stability`). `config`: the settings as run, defaults resolved."""

    table: pl.DataFrame
    plan: Plan
    columns: list[str] = field(default_factory=list)
    tokens: pl.DataFrame | None = None
    sentences: pl.DataFrame | None = None
    pending: str | None = None  # a `--shard` job that did its part: what it wrote (no table then)
    stability: dict[str, StabilityReport] = field(default_factory=dict)  # per query set with splits
    config: ScoreConfig | None = None  # the settings as run (query_splits resolved); set by score_pool
    checkpoints: list | None = None  # with --checkpoints: the ensemble's members (`curate.influence.ensemble`)


def influence_columns(query_names: Sequence[str], splits: int) -> list[str]:
    cols = []
    for q in query_names:
        cols.append(f"curate_influence_{q}")
        cols.extend(f"curate_influence_{q}_split{k}" for k in range(splits))
    return cols


def model_identity(model) -> str:
    """A cheap fingerprint of a model's config and weights (a strided sample of every tensor)."""
    parts = [model.config.to_dict()]
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().flatten()
            parts.append((name, list(p.shape), float(flat[:: max(1, flat.numel() // 257)].double().sum())))
    return fingerprint(*parts)


def score_pool(
    examples: Sequence[Example],
    queries: dict[str, Sequence[Example]],
    config: ScoreConfig,
    work_dir: Path,
    *,
    model=None,
    tokenizer=None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ScoreResult:
    """Score `examples` against each query set; see `curate.influence.scoring` for the sign.

    Named stages over one `ScoreContext`: factors (`fitting.fit_factors`), queries
    (`fitting.query_directions`), then scores (`_score_stage`: chunk tables, optional token and
    segment tables). `model`/`tokenizer` may be passed in (tests, notebooks); otherwise
    `config.model` is loaded. Memory does not grow with the pool: examples are tokenised and
    scored chunk by chunk.
    """
    progress = progress or Silent()
    coll = Collective.from_env(config.resolved_device)
    job = Shard.parse(config.shard) if config.shard else None
    if job and coll.distributed:
        raise UsageError("--shard makes independent jobs; under torchrun / accelerate the ranks divide the work")
    if not coll.is_main:
        progress = Silent()
    if model is None:
        from curate.models import load_model

        model, tokenizer = load_model(config.model, dtype=getattr(torch, config.dtype), device=config.resolved_device,
                                      trust_remote_code=config.trust_remote_code)
    max_length = config.max_length or getattr(model.config, "max_position_embeddings", None)
    modules = select_modules(model, config.modules)

    # Fit subsample (seeded) and query sets are small enough to hold tokenised.
    fit_rows = sorted(random.Random(config.seed).sample(range(len(examples)), min(config.fit_on, len(examples))))
    fit_items = [z for z in tokenize_all(tokenizer, (examples[i] for i in fit_rows), config.fit_max_length) if z.scorable]
    query_items = {q: _scorable_queries(q, tokenize_all(tokenizer, ex, max_length)) for q, ex in queries.items()}
    config = config.with_splits_for([len(items) for items in query_items.values()])
    ctx = ScoreContext(model, tokenizer, config, modules, group_modules(modules, config.group_memory_gb),
                       tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                       max_length, influence_columns(list(queries), config.query_splits), Path(work_dir), coll,
                       progress, overwrite)
    pool_lengths = [(z.full_length, z.truncated, z.scorable) for z in tokenize_all(tokenizer, examples, max_length)]
    plan = make_plan(model, modules, ctx.groups, config, pool_lengths, fit_items, query_items, max_length)
    progress.note(plan.render() + (f"\n{coll.shard.world_size} ranks (torch.distributed)" if coll.distributed else ""))

    factors_fp = fingerprint(model_identity(model), list(modules), tokens_fingerprint(fit_items), config.fisher,
                             config.seed, config.dtype)
    if job:
        factor_files, pending = fit_factor_part(ctx, fit_items, factors_fp, job)
        if pending:
            return ScoreResult(pl.DataFrame(), plan, ctx.columns, config=config, pending=f"{pending}; when all "
                               f"{job.world_size} parts are written, run `curate merge {ctx.work_dir}`")
        replay = None
    else:
        factor_files, replay = fit_factors(ctx, fit_items, factors_fp)

    query_fps = []
    try:  # the replay's spilled pairs are deleted whatever happens
        for q, items in query_items.items():
            qdir, qfp = query_directions(ctx, factor_files, items, q, factors_fp)
            query_fps.append(qfp)
            for name, v in qdir.items():
                ctx.directions[name] = v if name not in ctx.directions else concat(ctx.directions[name], v)
        local = replay.scores(ctx.directions, per_token=config.per_token_train) if replay else {}
    finally:
        if replay:
            replay.close()
    replayed = {z: v for part in coll.gather_objects(local) for z, v in part.items()}
    scores_fp = fingerprint(factors_fp, query_fps, [z.id for z in examples], max_length, config.normalize,
                            config.chunk_size, config.batch_tokens)
    tables = _score_stage(ctx, examples, replayed, scores_fp, job)
    if isinstance(tables, str):
        return ScoreResult(pl.DataFrame(), plan, ctx.columns, config=config, pending=tables)
    stability = stability_all(tables["scores"], ctx.columns, query_sizes={q: len(v) for q, v in query_items.items()})
    return ScoreResult(tables["scores"], plan, ctx.columns, tables.get("tokens"), tables.get(config.sentences),
                       stability=stability, config=config)


def _score_stage(ctx: ScoreContext, examples: Sequence[Example], replayed: dict, scores_fp: str,
                 job: Shard | None) -> dict[str, pl.DataFrame] | str:
    """Stage "scores": per chunk of `examples`, the score table and the optional token and segment
    tables, each a resumable file under `ctx.work_dir / "scores"`; then the top examples' token
    table with `tokens_top`. Returns {kind: table over all chunks}, or for a `--shard` job that
    did its part, what it wrote."""
    config, coll = ctx.config, ctx.coll
    n_chunks = (len(examples) + config.chunk_size - 1) // config.chunk_size
    stage = coll.open_stage(ctx.work_dir / "scores", {"scores": scores_fp, "columns": ctx.columns, "chunks": n_chunks},
                            overwrite=ctx.overwrite)
    kinds = {"scores": lambda chunk: _score_chunk(ctx, chunk, replayed)}
    if config.tokens and config.tokens_top is None:
        kinds["tokens"] = lambda chunk: _token_chunk(ctx, chunk)
    if config.sentences:
        kinds[config.sentences] = lambda chunk: segment_table(ctx, chunk)

    def chunk_of(c: int):
        return examples[c * config.chunk_size : (c + 1) * config.chunk_size]

    def chunk_path(c: int, kind: str) -> Path:
        return stage / f"chunk-{c:05d}{'' if kind == 'scores' else f'.{kind}'}.parquet"

    # This rank's contiguous range of chunks; then, after every rank has written its part, all.
    mine = (job or coll.shard).span(n_chunks)
    total = sum(min(config.chunk_size, len(examples) - c * config.chunk_size) for c in mine)
    with ctx.progress.task("scoring", total, unit="ex") as advance:
        for c in mine:
            chunk = chunk_of(c)  # read once: the pool may stream from disk
            for kind, compute in kinds.items():
                _chunk_table(chunk_path(c, kind), compute, chunk)
            advance(len(chunk))
    coll.barrier()
    if job:
        missing = sum(not chunk_path(c, "scores").exists() for c in range(n_chunks))
        return (f"scores part {job} written ({len(mine)} of {n_chunks} chunks); "
                + (f"{missing} chunks still missing" if missing else "all chunks written")
                + ": when every job is done, run the same command without --shard to write the output")
    tables = {kind: pl.concat([pl.read_parquet(chunk_path(c, kind)) for c in range(n_chunks)]) for kind in kinds}
    if config.tokens_top is not None:  # only what a report shows: each query set's top examples, on that set
        path = stage / f"tokens-top{config.tokens_top}.parquet"
        if coll.is_main:
            _chunk_table(path, lambda scores: _top_token_table(ctx, examples, scores), tables["scores"])
        coll.barrier()
        tables["tokens"] = pl.read_parquet(path)
    return tables


def _top_token_table(ctx: ScoreContext, examples: Sequence[Example], scores: pl.DataFrame) -> pl.DataFrame:
    """Token scores of the `config.tokens_top` highest-scoring examples of each query set, on that
    set only (one forward-mode pass per example and set): `token_influence_<q>` is null for an
    example outside q's top. One row per example chosen by any set."""
    main = [c for c in ctx.columns if "_split" not in c]
    top = {c: set(scores.drop_nulls(c).sort(c, descending=True).head(ctx.config.tokens_top)["curate_id"]) for c in main}
    parts = []
    with ctx.progress.task("token scores (top examples)", sum(map(len, top.values())), unit="ex") as advance:
        for c in main:
            chosen = [z for z in examples if z.id in top[c]]
            parts.append(_token_chunk(ctx, chosen, only=c))
            advance(len(chosen))
    keys = [c.replace("curate_influence_", "token_influence_") for c in main]
    parts = [p for p in parts if p.height]
    if not parts:  # every score null: nothing to show
        return pl.DataFrame(schema={"curate_id": pl.Utf8, "token_ids": pl.List(pl.Int64),
                                    **{k: pl.List(pl.Float64) for k in keys}})
    return (pl.concat(parts, how="diagonal").group_by("curate_id", maintain_order=True)
            .agg(pl.col("token_ids").first(), *[pl.col(k).drop_nulls().first() for k in keys]))


def _chunk_table(path: Path, compute, chunk) -> None:
    """Write `compute(chunk)` to `path` atomically unless it is there (the resume unit)."""
    if not path.exists():
        table = compute(chunk)
        atomic_write(path, table.write_parquet)


def _token_chunk(ctx: ScoreContext, chunk: Sequence[Example], only: str | None = None) -> pl.DataFrame:
    """Per example: its response token ids and, per query set (or the `only` column's), each
    token's influence (a list)."""
    columns = ctx.columns
    items = [z for z in tokenize_all(ctx.tokenizer, chunk, ctx.max_length) if z.scorable]
    batches = make_batches(items, ctx.config.batch_tokens, ctx.pad_id)
    main = [j for j, c in enumerate(columns) if "_split" not in c and only in (None, c)]
    scores = token_scores(ctx.model, ctx.modules, batches, {n: v[main] for n, v in ctx.directions.items()}, len(items))
    data: dict[str, list] = {"curate_id": [z.id for z in items],
                             "token_ids": [list(z.input_ids[z.loss_start:]) for z in items]}
    for k, j in enumerate(main):
        per_example = [s[k] / (z.n_loss_tokens if ctx.config.per_token_train else 1.0)
                       for s, z in zip(scores, items, strict=True)]
        data[columns[j].replace("curate_influence_", "token_influence_")] = [s.tolist() for s in per_example]
    return pl.DataFrame(data)


def _scorable_queries(name: str, items) -> list[Tokenized]:
    items = list(items)
    bad = [z.id for z in items if not z.scorable]
    if bad:
        raise UsageError(f"query set {name!r}: {len(bad)} example(s) have no answer token within the length "
                         f"bound (first: {bad[0]}); raise --max-length")
    return items


def _score_chunk(ctx: ScoreContext, chunk: Sequence[Example],
                 replayed: dict[Tokenized, tuple[torch.Tensor, float]]) -> pl.DataFrame:
    """Scores, NLL and token counts of one chunk of examples (one pass per module group).

    Examples found in `replayed` (fit examples scored from the fit pass's pairs, tokenised
    identically) take those scores and skip the model.
    """
    columns = ctx.columns
    items = list(tokenize_all(ctx.tokenizer, chunk, ctx.max_length))
    scores = torch.full((len(items), len(columns)), float("nan"), dtype=torch.float64)
    nll = torch.full((len(items),), float("nan"), dtype=torch.float64)
    for i, z in enumerate(items):
        if z in replayed:
            scores[i], nll[i] = replayed[z]
    # Rows with no response token inside the bound get null scores (reported, never dropped).
    rows = [i for i, z in enumerate(items) if z.scorable and z not in replayed]
    batches = make_batches([items[i] for i in rows], ctx.config.batch_tokens, ctx.pad_id)
    for b in batches:
        b.rows = [rows[r] for r in b.rows]

    def record_nll(batch, logp):
        per_token = -logp.sum(dim=1).to(torch.float64) / batch.loss_mask.sum(dim=1).to(torch.float64)
        nll[torch.tensor(batch.rows)] = per_token.cpu()

    if rows:
        scores[rows] = 0.0
        for g, group in enumerate(ctx.groups):
            scores += score_batches(ctx.model, group, batches, {n: ctx.directions[n] for n in group}, len(items),
                                    per_token=ctx.config.per_token_train, on_batch=record_nll if g == 0 else None)
    data = {"curate_id": [z.id for z in items]}
    data.update({c: scores[:, j].tolist() for j, c in enumerate(columns)})
    data["curate_nll"] = nll.tolist()
    data["curate_tokens"] = [z.n_loss_tokens for z in items]
    data["curate_truncated"] = [z.truncated for z in items]
    return pl.DataFrame(data).fill_nan(None)
