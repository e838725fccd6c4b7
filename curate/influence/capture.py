"""Hooks that hand each tracked Linear's input activations and output gradients to a sink.

Influence needs, per tracked `nn.Linear` (weight W: [out, in]), the layer input `a` and the
gradient `s = dL/d(output)`; the weight gradient of one example is `sum_t s_t a_t^T`. Every pass
of the engine (covariances, eigenvalue correction, query gradients, scoring) is a forward and a
backward through the model with these hooks, and with *parameter* gradients switched off: only
activation gradients are computed, which is cheaper and never materialises weight gradients.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from curate.errors import UsageError

# s: [B, T, out]; a: [B, T, in (+1 for a bias column of ones)].
Sink = Callable[[str, torch.Tensor, torch.Tensor], None]

MODULE_PRESETS = {
    # Infra (following Grosse et al.) tracks the MLP projections only.
    "mlp": r"(^|\.)mlp\.",
}


def select_modules(model: nn.Module, spec: str) -> dict[str, nn.Linear]:
    """Tracked Linear modules by preset (`mlp`, `all`) or regular expression on qualified names.

    `all` is every Linear except the output head and embeddings, whose vocabulary-sized factors
    would not fit in memory.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    if spec == "all":
        chosen = linears
    else:
        pattern = re.compile(MODULE_PRESETS.get(spec, spec))
        chosen = {n: m for n, m in linears.items() if pattern.search(n)}
    if not chosen:
        raise UsageError(f"--modules {spec!r} matches no nn.Linear module of the model")
    return chosen


def with_bias_column(module: nn.Linear, a: torch.Tensor) -> torch.Tensor:
    """Append a column of ones to `a` ([..., in]) when the layer has a bias: W' = [W | b]."""
    if module.bias is None:
        return a
    return torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)


@contextmanager
def tapped(model: nn.Module, modules: dict[str, nn.Linear], sink: Sink) -> Iterator[None]:
    """Within the block, each backward through a tracked module calls `sink(name, s, a)`.

    Parameters are frozen for the duration (restored afterwards). A tracked module whose input
    does not require grad gets it as a fresh leaf that does, so gradients reach its output; this
    cuts only the paths upstream of the earliest tracked layer, which no output gradient uses.
    """
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in saved:
        p.requires_grad_(False)
    handles = []
    for name, module in modules.items():

        def pre_hook(mod, args, name=name):
            x = args[0]
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            return (x, *args[1:])

        def fwd_hook(mod, args, output, name=name):
            a = with_bias_column(mod, args[0].detach())
            output.register_hook(lambda grad: sink(name, grad.detach(), a))

        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(fwd_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
