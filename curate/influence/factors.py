"""EK-FAC factors per tracked Linear: Kronecker eigenbases and corrected eigenvalues.

For a Linear with weight W: [out, in'] (in' = in + 1 with a bias), with layer input a and
s = dL/d(output), the Fisher block is approximated by (Q_S (x) Q_A) diag(vec Lambda*) (Q_S (x) Q_A)^T
where A = E[a a^T] = Q_A diag(.) Q_A^T and S = E[s s^T] = Q_S diag(.) Q_S^T are averaged over all
non-padding token positions, and Lambda*[o, i] = E_n[(Q_S^T G_n Q_A)[o, i]^2] is the eigenvalue
correction over examples n, with G_n = sum_t s_nt a_nt^T the example's weight gradient
(George et al. 2018; Grosse et al. 2023). vec is row-major: vec(G)[o * in' + i] = G[o, i].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from curate.influence.batches import Batch
from curate.influence.passes import PairCache, run_pass


@dataclass
class ModuleFactors:
    """EK-FAC factors of one Linear, float64. Shapes: q_a [in', in'], q_s [out, out], lam [out, in']."""

    q_a: torch.Tensor
    q_s: torch.Tensor
    lam: torch.Tensor

    def damping(self, spec: float | str) -> float:
        """`"auto"`: 0.1 x mean(Lambda*) of this module (the common heuristic); else an absolute value."""
        return 0.1 * float(self.lam.mean()) if spec == "auto" else float(spec)

    def precondition(self, grad: torch.Tensor, damping: float) -> torch.Tensor:
        """(EK-FAC + damping I)^{-1} applied to gradients `grad`: [..., out, in'] (any float dtype).

        Returns float64 of the same shape: Q_S [(Q_S^T G Q_A) / (Lambda* + damping)] Q_A^T.
        """
        g = grad.to(torch.float64)
        rotated = self.q_s.T @ g @ self.q_a
        return self.q_s @ (rotated / (self.lam + damping)) @ self.q_a.T

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"q_a": self.q_a.cpu().contiguous(), "q_s": self.q_s.cpu().contiguous(), "lam": self.lam.cpu().contiguous()}


@dataclass
class Covariance:
    """Running sums for A and S of one module (float64) and the number of positions counted."""

    a_sum: torch.Tensor
    s_sum: torch.Tensor
    count: int = 0


def _masked_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d] -> [N, d]: the non-padding positions of a batch."""
    return x[mask.bool()]


# One product of x^T x's blocks: (rows, cols, block in x's dtype).
GramBlock = tuple[slice, slice, torch.Tensor]
GRAM_LEAF = 128  # blocks are halved down to below this size


def gram_layout(d: int) -> list[tuple[int, int, int, int]]:
    """The blocks (row start, row stop, col start, col stop) of a d x d Gram matrix that
    `gram_blocks` multiplies: the upper triangle by recursive halving (each half's diagonal
    blocks, and the one off-diagonal block between them) down to diagonal blocks below
    GRAM_LEAF; shared with the benchmarks' FLOP count. For d = 1536: 31 products, 0.53 of the
    whole product's FLOPs."""

    def split(lo: int, hi: int) -> list[tuple[int, int, int, int]]:
        if hi - lo < GRAM_LEAF:
            return [(lo, hi, lo, hi)]
        mid = lo + (hi - lo) // 2
        return [*split(lo, mid), (lo, mid, mid, hi), *split(mid, hi)]

    return split(0, d)


def gram_blocks(x: torch.Tensor) -> list[GramBlock]:
    """x^T x for x [N, d] (products in x's dtype) as the blocks `add_gram` adds to a running sum.
    It is symmetric, so only blocks on and above the diagonal are multiplied (`gram_layout`;
    0.59-0.71x the time of one product here for d = 256-1536 and 1,024 rows, one thread); the
    rest is filled once the sums are complete (`mirror_gram`)."""
    return [(slice(r0, r1), slice(c0, c1), x[:, r0:r1].T @ x[:, c0:c1]) for r0, r1, c0, c1 in gram_layout(x.shape[1])]


def add_gram(total: torch.Tensor, blocks: list[GramBlock]) -> None:
    """total[d, d] (float64) += the blocks, in place: no [d, d] temporary (a fresh float64 matrix
    per module and batch cost more in page faults than its products on a CPU)."""
    for rows, cols, block in blocks:
        total[rows, cols] += block


def mirror_gram(total: torch.Tensor) -> None:
    """Complete a sum of `gram_blocks` in place: the strict lower triangle becomes the transpose of
    the upper (exactly symmetric)."""
    total.copy_(total.triu() + total.triu(1).T)


def fit_covariances(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    *,
    sample_seed: int | None,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
    cache: PairCache | None = None,
    score_pairs: bool = False,
) -> dict[str, Covariance]:
    """First pass: A = E[a a^T] and S = E[s s^T] over all non-padding positions.

    Every position counts, prompt included: a weight is used there and receives gradient from
    later tokens' losses; the loss mask only decides which log-probabilities are summed.
    `sample_seed` set: s comes from labels sampled from the model (true Fisher); None: data labels.
    `cache`: also keep the pass's (s, a) pairs for `fit_lambdas` to replay. `score_pairs` (with
    `cache` and sampled labels): a second backward per batch keeps the data labels' s as well, so
    the cache can also stand in for the fit examples' scoring pass (`replay_scores`); `on_batch`
    then receives the data labels' log-probs.
    """
    covs: dict[str, Covariance] = {}

    def sink(batch: Batch):
        # gate and up share one input (two views of one tensor) and their hooks fire one after the
        # other: the last a^T a is reused when the next module's input is the same memory
        last: list = [None, None]

        def accumulate(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
            a2, s2 = _masked_rows(a, batch.attention_mask), _masked_rows(s, batch.attention_mask)
            if name not in covs:
                covs[name] = Covariance(
                    torch.zeros(a2.shape[1], a2.shape[1], dtype=torch.float64, device=a2.device),
                    torch.zeros(s2.shape[1], s2.shape[1], dtype=torch.float64, device=s2.device),
                )
            c = covs[name]
            if last[0] is None or last[0].data_ptr() != a.data_ptr() or last[0].shape != a.shape:
                last[:] = [a, gram_blocks(a2)]  # held, so its memory cannot be reused under the same pointer
            add_gram(c.a_sum, last[1])
            add_gram(c.s_sum, gram_blocks(s2))
            c.count += a2.shape[0]

        return accumulate

    run_pass(model, modules, batches, cache.record(sink) if cache else sink, sample_seed=sample_seed, on_batch=on_batch,
             data_sink=cache.record_data() if cache is not None and score_pairs else None)
    if cache is not None:
        cache.finish()
    for c in covs.values():
        mirror_gram(c.a_sum)
        mirror_gram(c.s_sum)
    return covs


def eigenbases(cov: Covariance) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q_A, Q_S): eigenvectors of A and S, computed in float64."""
    a = cov.a_sum / cov.count
    s = cov.s_sum / cov.count
    return torch.linalg.eigh((a + a.T) / 2).eigenvectors, torch.linalg.eigh((s + s.T) / 2).eigenvectors


def fit_lambdas(
    model: nn.Module,
    modules: dict[str, nn.Linear],
    batches: Sequence[Batch],
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    sample_seed: int | None,
    on_batch: Callable[[Batch, torch.Tensor], None] | None = None,
    cache: PairCache | None = None,
) -> dict[str, tuple[torch.Tensor, int]]:
    """Second pass: sums of (Q_S^T G_n Q_A)^2 over examples n, and the number of examples.

    Per batch, the cheaper of two equal forms: rotate the activations first,
    G'_n = (S_n Q_S)^T (A_n Q_A), costing T (out^2 + in^2 + out in) per example, or form G_n and
    rotate it, Q_S^T (S_n^T A_n) Q_A, costing out in (T + out + in); the first wins below
    roughly out in / (out + in) tokens (~420 for a 1536 x 576 layer). With a usable `cache` from
    `fit_covariances`, the pairs are replayed instead of running the model again.
    """
    sums: dict[str, tuple[torch.Tensor, int]] = {}
    cast: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def sink(batch: Batch):
        def accumulate(name: str, s: torch.Tensor, a: torch.Tensor) -> None:
            if name not in cast:
                q_a, q_s = bases[name]
                cast[name] = (q_a.to(a.device, a.dtype), q_s.to(s.device, s.dtype))
            q_a, q_s = cast[name]
            t, d_out, d_in = s.shape[1], s.shape[2], a.shape[2]
            if t * (d_out * d_out + d_in * d_in) <= d_out * d_in * (d_out + d_in):
                g = torch.bmm((s @ q_s).transpose(1, 2), a @ q_a)
            else:
                g = q_s.T @ torch.bmm(s.transpose(1, 2), a) @ q_a
            sq = torch.zeros_like(g[0])  # per batch in the model's dtype, summed in float64
            for g_n in g:  # in place: no [B, out, in'] temporary for the squares
                sq.addcmul_(g_n, g_n)
            prev, n = sums.get(name, (0.0, 0))
            sums[name] = (prev + sq.to(torch.float64), n + g.shape[0])

        return accumulate

    if cache is not None and cache.usable:
        cache.replay(sink, on_batch=on_batch)  # the same pairs as a second pass, without the model
    else:
        run_pass(model, modules, batches, sink, sample_seed=sample_seed, on_batch=on_batch)
    return sums
