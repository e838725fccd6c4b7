"""Preconditioned query directions, dense or as low-rank factors.

A direction stack holds, per tracked layer, one [out, in'] matrix V_f per query function f. Kept
dense it is a [F, out, in'] tensor: one tracked-weight copy per function (for Qwen2.5-7B's MLPs,
5.7B numbers, ~23 GB in float32, per function). `LowRank` keeps the best rank-R approximation of
each V_f instead (truncated SVD, Eckart-Young: the closest rank-R matrix in Frobenius norm),
V_f ~= U_f W_f with u [F, out, R] (singular values folded in) and w [F, R, in'], which costs
R (out + in') numbers per function and layer, and lets the scoring hooks compute
s_t^T V_f a_t = (U_f^T s_t) . (W_f a_t) in R (out + in') multiply-adds per token instead of
out x in'. kronfluence offers the same approximation (`query_gradient_low_rank`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass
class LowRank:
    """A stack of F matrices [out, in'] as factors: V_f = u[f] @ w[f]; u [F, out, R], w [F, R, in']."""

    u: torch.Tensor
    w: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        """(F, out, in'), the shape of the dense stack."""
        return self.u.shape[0], self.u.shape[1], self.w.shape[2]

    @property
    def rank(self) -> int:
        return self.u.shape[2]

    def __getitem__(self, index):
        """Like indexing the dense [F, out, in'] tensor: an int gives the dense [out, in'] matrix of
        that function, a list or slice a smaller `LowRank`."""
        if isinstance(index, int):
            return self.u[index] @ self.w[index]
        return LowRank(self.u[index], self.w[index])

    def to(self, *args, **kwargs) -> LowRank:
        return LowRank(self.u.to(*args, **kwargs), self.w.to(*args, **kwargs))

    def dense(self) -> torch.Tensor:
        return self.u @ self.w


Direction = torch.Tensor | LowRank


def truncate(v: torch.Tensor, rank: int | None) -> Direction:
    """`v` [F, out, in'] as its best rank-`rank` factors per function, or unchanged when `rank` is
    None or not below min(out, in') (the factors would be no smaller)."""
    if rank is None or rank >= min(v.shape[1:]):
        return v
    left, sigma, right = torch.linalg.svd(v, full_matrices=False)
    return LowRank((left[..., :rank] * sigma[..., None, :rank]).contiguous(), right[..., :rank, :].contiguous())


def concat(a: Direction, b: Direction) -> Direction:
    """Stack two direction stacks of one layer along the function axis (both dense or both low-rank)."""
    if isinstance(a, LowRank) and isinstance(b, LowRank):
        return LowRank(torch.cat([a.u, b.u]), torch.cat([a.w, b.w]))
    if isinstance(a, LowRank) or isinstance(b, LowRank):
        raise TypeError("cannot stack dense and low-rank directions")
    return torch.cat([a, b])


def nbytes(v: Direction) -> int:
    if isinstance(v, LowRank):
        return v.u.numel() * v.u.element_size() + v.w.numel() * v.w.element_size()
    return v.numel() * v.element_size()


def to_tensors(directions: Mapping[str, Direction]) -> dict[str, torch.Tensor]:
    """Flat tensors for a safetensors file: `layer` (dense) or `layer::u` and `layer::w`."""
    out = {}
    for name, v in directions.items():
        if isinstance(v, LowRank):
            out[f"{name}::u"], out[f"{name}::w"] = v.u, v.w
        else:
            out[name] = v
    return out


def from_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, Direction]:
    """The inverse of `to_tensors`."""
    out: dict[str, Direction] = {}
    for key, t in tensors.items():
        name, _, part = key.partition("::")
        if not part:
            out[name] = t
        elif part == "u":
            out[name] = LowRank(t, tensors[f"{name}::w"])
    return out
