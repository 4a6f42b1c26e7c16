"""Sparsity masks and checks: which weights of a linear layer survive.

A *keep* mask is a bool tensor shaped like the weight W [out, in], True where the weight
survives. Selection is always per output row (the Wanda paper's comparison group) and exact:
every row loses exactly ``round(ratio * in)`` weights, ties broken by ``torch.topk``.
N:M follows the NVIDIA / PyTorch semi-structured convention: at most N non-zeros in every
group of M consecutive inputs, so 2:4 keeps the 2 highest scores of each group of 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spruce.core.errors import SpecError
from spruce.core.spec import Sparsity


@dataclass(frozen=True)
class LayerTarget:
    """What one linear layer must reach: a ratio of zeros, or an N:M pattern (ratio 1 - N/M)."""

    ratio: float  # fraction of zeros
    n: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise SpecError(f"sparsity ratio {self.ratio} is not in [0, 1)", param="sparsity")
        if (self.n is None) != (self.m is None):
            raise SpecError("an N:M target needs both N and M", param="sparsity")
        if self.n is not None and self.m is not None and not 0 < self.n < self.m:
            raise SpecError(f"{self.n}:{self.m}: N:M needs 0 < N < M", param="sparsity")

    @property
    def is_nm(self) -> bool:
        return self.n is not None

    @classmethod
    def from_sparsity(cls, s: Sparsity, ratio: float | None = None) -> LayerTarget:
        """The target of one layer; ``ratio`` overrides the spec's ratio (OWL's per-layer ratios)."""
        if s.is_nm:
            if ratio is not None:
                raise SpecError(
                    f"a per-layer ratio cannot be combined with the N:M pattern {s}", param="sparsity"
                )
            return cls(ratio=s.ratio, n=s.n, m=s.m)
        return cls(ratio=s.ratio if ratio is None else float(ratio))

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.ratio:g}"


def pruned_per_row(in_features: int, ratio: float) -> int:
    """How many weights each row loses at ``ratio``: ``round(ratio * in)``."""
    return round(ratio * in_features)


def unstructured_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """[out, in] keep mask that drops the ``round(ratio * in)`` lowest scores of every row."""
    k = pruned_per_row(scores.shape[-1], ratio)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        drop = torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices  # [out, k]
        keep.scatter_(-1, drop, False)
    return keep


def layer_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """[out, in] keep mask with one threshold for the whole matrix (llm-compressor's unstructured
    magnitude): the ``int(ratio * numel)`` lowest scores, and any tied with the highest of them, drop."""
    k = int(ratio * scores.numel())
    if k == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.topk(scores.reshape(-1), k, largest=False, sorted=False).values.max()
    return scores > threshold


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """[out, in] keep mask with the ``n`` highest scores of every ``m`` consecutive inputs."""
    out_features, in_features = scores.shape
    if in_features % m != 0:
        raise SpecError(
            f"{n}:{m} sparsity needs the input size to be a multiple of {m}, but a layer has {in_features}",
            param="sparsity",
        )
    groups = scores.reshape(out_features, in_features // m, m)  # [out, in/m, m]
    top = torch.topk(groups, n, dim=-1, sorted=False).indices  # [out, in/m, n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(out_features, in_features)


def mask_for(scores: torch.Tensor, target: LayerTarget) -> torch.Tensor:
    """The keep mask ``target`` asks for, from importance ``scores`` [out, in] (higher = keep)."""
    if target.n is not None and target.m is not None:
        return nm_mask(scores, target.n, target.m)
    return unstructured_mask(scores, target.ratio)


def nm_ok(W_or_keep: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of ``m`` consecutive inputs has at most ``n`` non-zeros (or kept weights).

    A weight whose input size is not a multiple of ``m`` cannot follow the pattern: False.
    """
    in_features = W_or_keep.shape[-1]
    if in_features % m != 0:
        return False
    nonzero = W_or_keep if W_or_keep.dtype == torch.bool else W_or_keep != 0
    per_group = nonzero.reshape(-1, in_features // m, m).sum(dim=-1)  # [out, in/m]
    return bool((per_group <= n).all())


def sparsity_of(W: torch.Tensor) -> float:
    """Fraction of exact zeros in ``W``."""
    return float((W == 0).sum().item()) / max(W.numel(), 1)


def weight_counts(W: torch.Tensor, sparsity: Sparsity) -> tuple[int, int, bool]:
    """One pruned matrix's zeros, size and whether it obeys the N:M pattern (True if not N:M)."""
    ok = True
    if sparsity.is_nm:
        assert sparsity.n is not None and sparsity.m is not None
        ok = nm_ok(W, sparsity.n, sparsity.m)
    return int((W == 0).sum()), W.numel(), ok


def sparsity_summary(counts: list[tuple[int, int, bool]], sparsity: Sparsity) -> dict[str, Any]:
    """The report's sparsity block from every pruned linear's ``weight_counts``."""
    zeros, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    ratios = [z / n for z, n, _ in counts]
    return {
        "target": sparsity.to_json(),
        "overall": round(zeros / max(total, 1), 6),
        "mean": round(sum(ratios) / max(len(ratios), 1), 6),
        "min": round(min(ratios, default=0.0), 6),
        "max": round(max(ratios, default=0.0), 6),
        "nm_ok": all(c[2] for c in counts) if sparsity.is_nm else None,
        "pruned_params": total,
    }
