"""What a scoring run will do and roughly what it needs, printed before any work starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

GB = 1024**3
HINT_RANK = 64  # the --query-rank the plan suggests when exact directions are large
HINT_ABOVE = 4 * GB  # exact query directions above this get the suggestion


def layer_dims(module: nn.Linear) -> tuple[int, int]:
    """(out, in') of a tracked Linear; in' counts the bias column."""
    return module.out_features, module.in_features + (module.bias is not None)


def factor_bytes(module: nn.Linear) -> int:
    """float64 bytes of one layer's EK-FAC factors: Q_A, Q_S, Lambda*, plus the covariance sums
    alive during fitting (same sizes as Q_A, Q_S)."""
    out, inp = layer_dims(module)
    return 8 * (2 * inp * inp + 2 * out * out + out * inp)


def direction_numbers(module: nn.Linear, rank: int | None) -> int:
    """Numbers kept per query function for one layer's direction: out x in' dense, R (out + in')
    as rank-R factors (when smaller; see `curate.influence.directions.truncate`)."""
    out, inp = layer_dims(module)
    return out * inp if rank is None or rank >= min(out, inp) else rank * (out + inp)


def group_modules(modules: dict[str, nn.Linear], budget_gb: float) -> list[dict[str, nn.Linear]]:
    """Split tracked modules, in model order, into groups whose factors fit `budget_gb`.

    Each group costs one covariance pass and one eigenvalue-correction pass over the fit data (and
    one scoring pass per chunk), so a small budget trades time for memory. A single module larger
    than the budget forms a group of its own.
    """
    groups: list[dict[str, nn.Linear]] = [{}]
    used = 0
    for name, module in modules.items():
        size = factor_bytes(module)
        if groups[-1] and used + size > budget_gb * GB:
            groups.append({})
            used = 0
        groups[-1][name] = module
        used += size
    return groups


@dataclass
class Plan:
    """Counts and memory estimates of a scoring run (bytes, tokens, examples)."""

    pool_examples: int
    pool_tokens: int
    pool_truncated: int
    pool_unscorable: int
    max_length: int | None
    fit_examples: int
    fit_tokens: int
    fit_truncated: int
    fit_max_length: int
    query_examples: dict[str, int]
    functions: int
    tracked_modules: int
    tracked_params: int
    groups: int
    factor_bytes: int
    direction_bytes: int
    query_rank: int | None
    hint_bytes: int  # query directions at --query-rank HINT_RANK
    model_bytes: int
    activation_bytes: int
    pair_bytes: int  # the fit pass's (s, a) pairs, an upper bound (inputs shared by layers counted per layer)
    pair_memory_bytes: int  # --pair-cache-gb
    pair_disk_bytes: int  # --pair-spill-gb (resolved)

    @property
    def peak_bytes(self) -> int:
        return self.model_bytes + self.factor_bytes // self.groups + self.direction_bytes + self.activation_bytes

    def render(self) -> str:
        def gb(n: int) -> str:
            return f"{n / GB:.2f} GB"

        queries = ", ".join(f"{q}={n}" for q, n in self.query_examples.items())
        return "\n".join([
            "[bold]curate score plan[/bold]",
            f"  pool: {self.pool_examples} examples, {self.pool_tokens:,} tokens, "
            f"{self.pool_truncated} truncated at max_length={self.max_length}"
            + (f", {self.pool_unscorable} with no response token inside it (null scores)" if self.pool_unscorable else ""),
            f"  fit:  {self.fit_examples} examples, {self.fit_tokens:,} tokens, "
            f"{self.fit_truncated} truncated at fit_max_length={self.fit_max_length}",
            f"  queries: {queries}; {self.functions} query functions (sets x splits)",
            f"  tracked: {self.tracked_modules} Linear modules, {self.tracked_params:,} parameters, "
            f"{self.groups} module group(s)",
            f"  memory: model {gb(self.model_bytes)}, factors {gb(self.factor_bytes)} "
            f"({gb(self.factor_bytes // self.groups)} per group), query directions {gb(self.direction_bytes)}"
            f"{'' if self.query_rank is None else f' (rank {self.query_rank})'}, "
            f"activations ~{gb(self.activation_bytes)}; estimated peak ~{gb(self.peak_bytes)}",
            f"  replay: ~{gb(self.pair_bytes)} of fit-pass activations and gradients kept ({gb(self.pair_memory_bytes)} "
            f"in memory, then up to {gb(self.pair_disk_bytes)} on disk) instead of two more passes over the fit data"
            + ("" if self.pair_bytes <= self.pair_memory_bytes + self.pair_disk_bytes
               else ": too many, those passes run (--pair-spill-gb keeps more)"),
            *([f"  hint: the exact query directions take {gb(self.direction_bytes)}; --query-rank {HINT_RANK} keeps "
               f"them in {gb(self.hint_bytes)} and cuts the scoring hooks' work alike (an approximation: "
               "see benchmarks/RESULTS.md)"] if self.query_rank is None and self.direction_bytes > HINT_ABOVE else []),
        ])


def make_plan(model, modules, groups, config, pool_lengths: Sequence[tuple[int, bool, bool]], fit_items,
              query_items: dict, max_length) -> Plan:
    """Estimate the run. Activation memory is a rough bound: per padded token of a batch, each
    layer keeps ~34 hidden-size activations (forward and backward) and the head ~3 vocab-size
    rows of logits, in the compute dtype."""
    import torch

    elem = torch.finfo(getattr(torch, config.dtype)).bits // 8
    labels = 2 if config.sample_seed is not None else 1  # the true Fisher keeps two output gradients
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", 0)
    layers = getattr(cfg, "num_hidden_layers", 0)
    vocab = getattr(cfg, "vocab_size", 0)
    functions = len(query_items) * (1 + config.query_splits)
    tracked = sum(direction_numbers(m, None) for m in modules.values())
    return Plan(
        pool_examples=len(pool_lengths),
        pool_tokens=sum(min(n, max_length or n) for n, _, _ in pool_lengths),
        pool_truncated=sum(t for _, t, _ in pool_lengths),
        pool_unscorable=sum(not ok for _, _, ok in pool_lengths),
        max_length=max_length,
        fit_examples=len(fit_items),
        fit_tokens=sum(len(z.input_ids) for z in fit_items),
        fit_truncated=sum(z.truncated for z in fit_items),
        fit_max_length=config.fit_max_length,
        query_examples={q: len(v) for q, v in query_items.items()},
        functions=functions,
        tracked_modules=len(modules),
        tracked_params=tracked,
        groups=len(groups),
        factor_bytes=sum(factor_bytes(m) for m in modules.values()),
        direction_bytes=4 * functions * sum(direction_numbers(m, config.query_rank) for m in modules.values()),
        query_rank=config.query_rank,
        hint_bytes=4 * functions * sum(direction_numbers(m, HINT_RANK) for m in modules.values()),
        model_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        activation_bytes=config.batch_tokens * (34 * hidden * layers + 3 * vocab) * elem,
        pair_bytes=sum(len(z.input_ids) for z in fit_items) * elem
        * sum(labels * layer_dims(m)[0] + layer_dims(m)[1] for m in modules.values()),
        pair_memory_bytes=int(config.resolved_pair_cache_gb * GB),
        pair_disk_bytes=int(config.resolved_pair_spill_gb * GB),
    )
