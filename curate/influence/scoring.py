"""Query gradients, their preconditioning, and the scoring pass.

Sign convention: the score of training example z for a query function f is
    I_f(z) = grad f(theta)^T (EK-FAC + damping I)^{-1} grad log p(z; theta),
positive when up-weighting z raises f (z helps). f is the mean log-likelihood of a query set's
answers, so grad f is one vector per query set (or split): it is preconditioned once into a
direction V_f (one [out, in'] matrix per tracked layer) and each training score is the inner
product <V_f, grad log p(z)>, which the scoring pass computes inside the layer hooks as
-sum_t s_t^T V_f a_t without ever forming a per-example weight gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from curate.influence.batches import Batch
from curate.influence.directions import Direction, LowRank
from curate.influence.passes import PairCache, run_pass


def _per_token_weights(batch: Batch) -> torch.Tensor:
    """1 / (number of loss tokens) per example, in float64 so the division is exact to roundoff."""
    return 1.0 / batch.loss_mask.sum(dim=1).to(torch.float64)


def query_gradient_sums(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    split_of: Sequence[int],
    n_splits: int,
    *,
    per_token: bool,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per layer, sums over each split's examples of grad log p(y|x): [n_splits, out, in'] float64.

    `split_of[row]` assigns each query example (by its row in the batched list) to a split.
    `per_token`: each example's log-likelihood is divided by its number of answer tokens.
    """
    sums: dict[str, torch.Tensor] = {}

    def sink(batch: Batch):
        index = torch.tensor([split_of[r] for r in batch.rows], device=batch.input_ids.device)

        def accumulate(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
            # L = -sum log p, so grad log p of each example is -sum_t s_t a_t^T.
            g = -torch.einsum("bto,bti->boi", s, a).to(torch.float64)
            if name not in sums:
                sums[name] = torch.zeros(n_splits, *g.shape[1:], dtype=torch.float64, device=g.device)
            sums[name].index_add_(0, index, g)

        return accumulate

    run_pass(model, modules, batches, sink, weights=_per_token_weights if per_token else None, on_batch=on_batch)
    return sums


def split_functions(sums: torch.Tensor, split_sizes: Sequence[int]) -> torch.Tensor:
    """Gradients of the query functions from per-split sums [K, out, in'].

    Returns [1 + K', out, in']: first the full set's mean gradient (sum over all / n), then, when
    there are several splits (K > 1), each split's own mean gradient. The full-set gradient equals
    the split gradients averaged with weights n_k / n.
    """
    n = sum(split_sizes)
    full = sums.sum(dim=0, keepdim=True) / n
    if len(split_sizes) == 1:
        return full
    per_split = sums / torch.tensor(split_sizes, dtype=sums.dtype).view(-1, 1, 1)
    return torch.cat([full, per_split])


def score_sink(
    directions: dict[str, Direction],
    out: torch.Tensor,
    *,
    weights: Callable[[Batch], torch.Tensor] | None = None,
) -> Callable[[Batch], Callable[[str, torch.Tensor, torch.Tensor], None]]:
    """A sink adding each batch row's scores to `out` [n_rows, F] (float64, in place).

    Each row's score for function f is -sum_layers sum_t s_t^T V_f a_t = <V_f, grad log p(z)>
    for directions V: layer -> [F, out, in'] (`curate.influence.directions`). A dense V is
    contracted on whichever side of the layer is narrower, so the transient is
    [B, T, F, min(out, in')]; a `LowRank` V = U W as (U^T s_t) . (W a_t), transient [B, T, F, R].
    `weights(batch)` ([B]) scales the rows' contributions (for pairs whose loss was not already
    weighted).
    """
    cast: dict[str, Direction] = {}

    def sink(batch: Batch):
        rows = torch.tensor(batch.rows)
        scale = None if weights is None else weights(batch).to(torch.float64).cpu().view(-1, 1)

        def accumulate(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
            v = cast.get(name)
            if v is None:
                v = cast[name] = directions[name].to(s.device, s.dtype)
            contrib = -_contract(v, s, a).to(torch.float64).cpu()
            out.index_add_(0, rows, contrib if scale is None else contrib * scale)

        return accumulate

    return sink


def _contract(v: Direction, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """[B, F]: sum_t s_t^T V_f a_t for s [B, T, out], a [B, T, in'] and V [F, out, in']."""
    f, d_out, d_in = v.shape
    b, t = s.shape[:2]
    if isinstance(v, LowRank):  # [BT, out] @ [out, F*R] and [BT, in] @ [in, F*R], dotted per function
        r = v.rank
        left = (s.reshape(b * t, d_out) @ v.u.permute(1, 0, 2).reshape(d_out, f * r)).view(b, t, f, r)
        right = (a.reshape(b * t, d_in) @ v.w.permute(2, 0, 1).reshape(d_in, f * r)).view(b, t, f, r)
        return torch.einsum("btfr,btfr->bf", left, right)
    if d_in <= d_out:  # project s: [BT, out] @ [out, F*in] -> [B, T, F, in], dot a
        proj = (s.reshape(b * t, d_out) @ v.permute(1, 0, 2).reshape(d_out, f * d_in)).view(b, t, f, d_in)
        return torch.einsum("btfi,bti->bf", proj, a)
    # project a: [BT, in] @ [in, F*out] -> [B, T, F, out], dot s
    proj = (a.reshape(b * t, d_in) @ v.permute(2, 0, 1).reshape(d_in, f * d_out)).view(b, t, f, d_out)
    return torch.einsum("btfo,bto->bf", proj, s)


def score_batches(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    directions: dict[str, Direction],
    n_rows: int,
    *,
    per_token: bool,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Scores [n_rows, F] (float64) of the batched examples along directions V: layer -> [F, out, in'],
    by one forward+backward over `batches` (see `score_sink`)."""
    out = torch.zeros(n_rows, next(iter(directions.values())).shape[0], dtype=torch.float64)
    run_pass(model, modules, batches, score_sink(directions, out), weights=_per_token_weights if per_token else None,
             on_batch=on_batch)
    return out


def replay_scores(cache: PairCache, directions: dict[str, Direction], n_rows: int, *, per_token: bool) -> torch.Tensor:
    """The scores `score_batches` would give the cached batches, from the (s, a) pairs a pass kept.

    Uses each pair's last s, which must come from the data's own labels and unweighted summed
    log-likelihoods: the empirical-Fisher covariance pass's only s, or the true-Fisher pass's
    second backward (`fit_covariances(score_pairs=True)`). Those s are exactly the scoring pass's,
    so the model need not run again. Rows index the list the cached batches were made from.
    """
    out = torch.zeros(n_rows, next(iter(directions.values())).shape[0], dtype=torch.float64)
    cache.replay(score_sink(directions, out, weights=_per_token_weights if per_token else None), label=-1)
    return out
