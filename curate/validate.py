"""`curate validate`: fine-tune one base model on each variant of a pool, evaluate each, compare.

    config = ValidateConfig(base_model="smollm2-135m", variants={"pool": "pool.jsonl", "flip": "flip/"},
                            evals=("gsm8k", "mbpp"), train=TrainConfig(max_steps=200))
    results = validate(config, Path("runs/flip"))

Every variant is trained from the same base model with the same `TrainConfig` (seed, optimizer
steps, examples per step; see `curate.training`), then every model (the untrained base first,
unless `base_eval=False`) answers the same benchmark problems (`curate.evaluation`). The first
variant is the baseline: each other one is reported as its pass@1 minus the baseline's, with a
paired bootstrap 95% interval over problems. The pieces live in `curate.training` (SFT),
`curate.evaluation` (generation, grading), `curate.evaluation.contamination` (the refusal) and
`curate.evaluation.compare` (the table and plot); this module runs them as resumable stages.

Layout of the run folder (`RUN_DIR`):

    RUN_DIR/<variant>/   manifest.json, checkpoint-*/, log.jsonl, model/, train.json,
                         generations.jsonl, eval.json
    RUN_DIR/base/        manifest.json, generations.jsonl, eval.json
    RUN_DIR/results.json every variant's training summary and evaluation, the comparison
    RUN_DIR/results.png  pass@1 per benchmark and model with its 95% interval

Each folder's `manifest.json` records its inputs' fingerprint (base model, dataset content,
settings): a rerun skips finished work (`train.json`, `eval.json` present), resumes interrupted
training from its last checkpoint, and refuses a folder made from other inputs unless `overwrite`.

Several GPUs: training is data-parallel under accelerate (examples per step = batch size x grad
accum x processes); evaluation runs on the main process only. For FSDP:

    accelerate launch --config_file fsdp.yaml -m curate validate --model Qwen/Qwen2.5-7B-Instruct \\
        pool=pool.jsonl flip=flip.jsonl --eval math500,gsm8k,humaneval,mbpp --max-steps 500 -o runs/flip
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import DataError, StageMismatchError, UsageError
from curate.evaluation.compare import comparison, plot_comparison
from curate.evaluation.contamination import check_contamination, describe
from curate.progress import Progress, Silent
from curate.settings import ConfigError, Problem
from curate.stages import atomic_write_bytes, fingerprint
from curate.training.config import TrainConfig

BASE = "base"


@dataclass
class ValidateConfig:
    """Settings of `validate`.

    base_model: local folder, Hub id or alias (`smollm2-135m`) every variant starts from.
    variants: name -> dataset (any pool `curate.data.load_pool` reads), in order; the first is the
        baseline of the comparison. Names are folder names: letters, digits, `-`, `_`, `.`.
    evals: benchmark names (`gsm8k`, `math500`, `humaneval`, `mbpp`: packaged slices) or paths/Hub ids.
    train: the SFT settings shared by every variant.
    limit: problems per benchmark (a seeded subset; None = all). samples: generations per problem
        (pass@1 is averaged over them: avg@k; unbiased pass@k is reported too). max_new_tokens:
        generation budget (tokens); temperature: 0 = greedy; top_p: nucleus mass. Those four left
        None take each benchmark's long-CoT defaults (`curate.evaluation.evaluate.BENCHMARK_SAMPLING`:
        e.g. MATH500 32k tokens, temperature 0.6, top-p 0.95, 4 samples). eval_batch_size: prompts
        per generation batch. timeout_s: seconds
        per code test run. seed: the benchmark subset and the sampling.
    base_eval: also evaluate the untrained base model (row `base`).
    allow_contamination: run even when an evaluated problem appears in a variant (recorded in
        results.json); otherwise that refuses to start. ngram: shared word run that counts as
        overlap (see `curate.ops.decontam`).
    overwrite: replace folders made from other inputs instead of refusing.
    engine: how answers are generated (`curate.evaluation.engines`): "hf" (transformers here),
        "server" (the OpenAI-compatible `base_url`, which must serve the base model as `base` and
        each variant under its name, e.g. LoRA modules), or "vllm" (curate starts `vllm serve` on
        the base model with every LoRA variant as a module, or one server per fully fine-tuned
        variant, and stops it after). Through a server, answers are cached per model folder
        (`generations.sqlite`), so a killed evaluation resumes.
    """

    base_model: str
    variants: dict[str, str]
    evals: tuple[str, ...] = ("gsm8k", "mbpp")
    train: TrainConfig = field(default_factory=TrainConfig)
    limit: int | None = None
    samples: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    eval_batch_size: int = 8
    timeout_s: float = 10.0
    seed: int = 0
    base_eval: bool = True
    allow_contamination: bool = False
    ngram: int = 13
    overwrite: bool = False
    engine: str = "hf"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16

    def __post_init__(self) -> None:
        from curate.evaluation.engines import ENGINES

        errors = []
        if self.engine not in ENGINES:
            errors.append(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if (self.engine == "server") != bool(self.base_url):
            errors.append("engine server needs base_url (and base_url needs engine server)")
        if not self.variants:
            errors.append("give at least one variant NAME=DATASET")
        for name in self.variants:
            if not name or name == BASE or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
                errors.append(f"bad variant name {name!r} (letters, digits, -_. ; not {BASE!r})")
        if not self.evals:
            errors.append("give at least one benchmark to evaluate on")
        if len(set(self.evals)) != len(self.evals):
            errors.append(f"a benchmark is named twice in {list(self.evals)}")
        if self.limit is not None and self.limit < 1:
            errors.append(f"limit must be >= 1, got {self.limit}")
        for name in ("samples", "max_new_tokens", "eval_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature is not None and self.temperature < 0:
            errors.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            errors.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.timeout_s <= 0:
            errors.append(f"timeout_s must be > 0, got {self.timeout_s}")
        if (self.samples or 1) > 1 and self.temperature == 0:
            errors.append("samples > 1 needs temperature > 0 (greedy answers would all be the same)")
        if self.ngram < 1:
            errors.append(f"ngram must be >= 1, got {self.ngram}")
        if errors:
            raise ConfigError(type(self), [Problem(e) for e in errors])

    def eval_settings(self) -> dict[str, Any]:
        keys = ("evals", "limit", "samples", "max_new_tokens", "temperature", "top_p", "eval_batch_size", "timeout_s",
                "seed", "engine")
        return {k: getattr(self, k) for k in keys}


def validate(config: ValidateConfig, run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Train, evaluate and compare every variant (see the module doc); returns results.json's dict.

    Raises `DataError` when an evaluated problem appears in a variant (unless
    `allow_contamination`) and `StageMismatchError` for a folder made from other inputs.
    Under a multi-process launch, processes other than the main one return `{}` after training.
    """
    from curate.data import load_pool
    from curate.evaluation.benchmarks import load_benchmark
    from curate.models import model_fingerprint

    progress = progress or Silent()
    run_dir = Path(run_dir)
    base_fp = model_fingerprint(config.base_model)
    pools = {name: load_pool(path) for name, path in config.variants.items()}
    problems = [p for bench in config.evals for p in load_benchmark(bench, limit=config.limit, seed=config.seed)]
    contamination = check_contamination(pools, problems, config.ngram)
    if contamination and not config.allow_contamination:
        listed = "; ".join(f"variant {name!r} contains {sum(found.values())} evaluated problem(s) ({describe(found)})"
                           for name, found in contamination.items())
        raise DataError(f"{listed}; decontaminate it or pass --allow-contamination")
    for name, found in contamination.items():
        progress.note(f"[bold red]WARNING: CONTAMINATED[/] variant {name!r} contains evaluated problems "
                      f"({describe(found)}); its scores are not a fair measurement")

    trained = {}
    for name, pool in pools.items():
        folder = run_dir / name
        manifest = {"stage": "train", "base_model": base_fp, "dataset": config.variants[name],
                    "dataset_fingerprint": pool_fingerprint(pool), "train": config.train.to_dict()}
        _open_stage(folder, manifest, config.overwrite)
        trained[name] = _train(config, pool, folder, progress)
    if not _main_process():
        return {}

    evals: dict[str, dict] = {}
    eval_fp = fingerprint(config.eval_settings(), [p.id for p in problems])
    models = ([BASE] if config.base_eval else []) + list(pools)
    with _Servers() as servers:  # vllm servers stop when the evaluations end, however they end
        for name in models:
            folder = run_dir / name
            if name == BASE:
                _open_stage(folder, {"stage": "base", "base_model": base_fp}, config.overwrite)
            evals[name] = _evaluate(config, name, folder, problems, eval_fp, progress,
                                    lambda name=name: _engine(config, name, trained, run_dir, servers))

    results = {
        "base_model": config.base_model, "base_model_fingerprint": base_fp,
        "benchmarks": list(config.evals), "baseline": next(iter(pools)),
        "train_config": config.train.to_dict(), "eval_config": config.eval_settings(),
        "allow_contamination": config.allow_contamination, "contamination": contamination,
        "variants": {name: {"dataset": config.variants[name], "card": dataset_card(config.variants[name]),
                            "train": trained[name], "eval": evals[name]["summary"]} for name in pools},
        "base": {"eval": evals[BASE]["summary"]} if config.base_eval else None,
        "comparison": comparison(evals, next(iter(pools))),
    }
    atomic_write_bytes(run_dir / "results.json", json.dumps(results, indent=2, default=str).encode())
    plot_comparison(results, run_dir / "results.png")
    return results


class _Servers:
    """The vllm servers of one evaluation loop: one for the base model and every LoRA variant (as
    modules), started once; one per fully fine-tuned variant, stopped before the next starts; all
    stopped on exit."""

    def __init__(self) -> None:
        self.stack, self.own = ExitStack(), ExitStack()
        self.shared: str | None = None

    def shared_url(self, launch) -> str:
        from curate.evaluation.vllm import serving

        if self.shared is None:
            self.shared = self.stack.enter_context(serving(launch))
        return self.shared

    def own_url(self, launch) -> str:
        from curate.evaluation.vllm import serving

        self.own.close()
        return self.own.enter_context(serving(launch))

    def __enter__(self) -> _Servers:
        return self

    def __exit__(self, *exc) -> None:
        self.own.close()
        self.stack.close()


def _engine(config: ValidateConfig, name: str, trained: dict[str, dict], run_dir: Path, servers: _Servers):
    """The engine that evaluates model `name` (`BASE` or a variant) under `config.engine`."""
    from curate.evaluation.engines import HFEngine, ServerEngine, ServerSettings

    cache = str(run_dir / name / "generations.sqlite")
    if config.engine == "server":
        return _ServerChecked(ServerSettings(config.base_url, name, config.api_key_env, config.concurrency, cache=cache),
                              config, trained)
    if config.engine == "vllm":
        from curate.evaluation.vllm import VLLMLaunch

        lora = {n: t["model_dir"] for n, t in trained.items() if (Path(t["model_dir"]) / "adapter_config.json").is_file()}
        if name == BASE or name in lora:
            from curate.models import resolve_model

            url = servers.shared_url(VLLMLaunch(resolve_model(config.base_model), BASE, lora=lora,
                                                log=run_dir / "vllm.log"))
        else:
            url = servers.own_url(VLLMLaunch(trained[name]["model_dir"], name, log=run_dir / name / "vllm.log"))
        return ServerEngine(ServerSettings(url, name, cache=cache))
    import torch

    from curate.models import load_model
    from curate.training import load_trained

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else None
    if name not in trained:
        model, tokenizer = load_model(config.base_model, device=device, dtype=dtype)
    else:
        model, tokenizer = load_trained(Path(trained[name]["model_dir"]), config.base_model, device=device, dtype=dtype)
    return HFEngine(model, tokenizer, config.eval_batch_size)


class _ServerChecked:
    """A `ServerEngine` whose refusal (the server does not serve this model) says how to serve them all."""

    def __init__(self, settings, config: ValidateConfig, trained: dict[str, dict]) -> None:
        from curate.evaluation.engines import ServerEngine

        self.engine, self.config, self.trained = ServerEngine(settings), config, trained
        self.name = "server"

    def generate(self, user_turns, **kwargs):
        try:
            return self.engine.generate(user_turns, **kwargs)
        except UsageError as err:
            modules = " ".join(f"{n}={t['model_dir']}" for n, t in self.trained.items())
            raise UsageError(f"{err}; serve the base model as `base` and each variant under its name, e.g. "
                             f"`vllm serve {self.config.base_model} --served-model-name base --enable-lora "
                             f"--lora-modules {modules}`, then run this command again (finished training is "
                             "skipped)") from None


def pool_fingerprint(pool) -> str:
    """sha256 (16 hex) over every row's id and canonical messages: the training content itself."""
    h = hashlib.sha256()
    for example in pool.examples():
        h.update(json.dumps([example.id, list(example.messages)], sort_keys=True).encode())
    return h.hexdigest()[:16]


def dataset_card(path: str) -> str | None:
    """The dataset card curate wrote beside (file: `<stem>.README.md`) or inside (folder) a pool."""
    p = Path(path)
    candidates = [p / "README.md"] if p.is_dir() else [
        p.with_name(p.name[: len(p.name) - sum(len(s) for s in p.suffixes[k:])] + ".README.md")
        for k in range(len(p.suffixes) - 1, -1, -1)]
    return next((str(c) for c in candidates if c.is_file()), None)


def _open_stage(folder: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Create `folder` for these inputs; one made from others is refused, or emptied with `overwrite`."""
    path = folder / "manifest.json"
    manifest = json.loads(json.dumps(manifest, default=str))
    if path.is_file():
        old = json.loads(path.read_text())
        if old == manifest:
            return
        if not overwrite:
            changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise StageMismatchError(f"{folder} was made from other inputs (changed: {', '.join(changed)}); "
                                     "pass --overwrite to redo it or choose another run folder")
        if _main_process():
            shutil.rmtree(folder)
    if _main_process():
        atomic_write_bytes(path, json.dumps(manifest, indent=2, sort_keys=True).encode())


def _main_process() -> bool:
    """True on the single process, or on rank 0 of a torchrun / accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


def _train(config: ValidateConfig, pool, folder: Path, progress: Progress) -> dict[str, Any]:
    from curate.training import train_variant

    done = folder / "train.json"
    if done.is_file() and (folder / "model").is_dir():
        result = json.loads(done.read_text())
        if result.get("steps") == config.train.max_steps:
            progress.note(f"{folder.name}: trained already ({result['steps']} steps), skipped")
            return result
    result = train_variant(config.base_model, pool, config.train, folder, progress)
    if result.rows_dropped or result.rows_at_max_length:
        progress.note(f"{folder.name}: {result.rows_at_max_length} of {result.rows} rows cut at max_length "
                      f"{config.train.max_length} tokens, {result.rows_dropped} dropped (no response token left)")
    return result.to_dict()


def _evaluate(config: ValidateConfig, name: str, folder: Path, problems: list, eval_fp: str, progress: Progress,
              engine) -> dict[str, Any]:
    """Evaluate one model with `engine()` (made only when the evaluation is not done already);
    `eval.json` = {fingerprint, summary, scores: {problem id: score}}."""
    done = folder / "eval.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved.get("fingerprint") == eval_fp:
            progress.note(f"{name}: evaluated already, skipped")
            return saved
        if not config.overwrite:
            raise StageMismatchError(f"{done} was made with other evaluation settings or problems; "
                                     "pass --overwrite to redo it or choose another run folder")
    from curate.evaluation.evaluate import EvalConfig, evaluate

    eval_config = EvalConfig(max_new_tokens=config.max_new_tokens, samples=config.samples,
                             temperature=config.temperature, top_p=config.top_p, seed=config.seed,
                             batch_size=config.eval_batch_size, timeout_s=config.timeout_s)
    progress.note(f"evaluate {name} on {len(problems)} problem(s)")
    result = evaluate(engine(), problems, eval_config, progress)
    rows = result.to_rows()
    atomic_write_bytes(folder / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    saved = {"fingerprint": eval_fp, "summary": result.summary(), "scores": {r["id"]: r["score"] for r in rows},
             "sources": {r["id"]: r["source"] for r in rows}}
    atomic_write_bytes(done, json.dumps(saved, indent=2).encode())
    return saved


