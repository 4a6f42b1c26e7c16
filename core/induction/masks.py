"""Differentiable pruning masks: the hard mask of ``core.sparsity`` with a gradient to the scores.

Scores are handled in log space, L = log(base score) + log(s_j): a per-input-channel scale s
multiplies every pruner's score (magnitude through the folded weight |W diag(s)|, Wanda and
SparseGPT through ``col_weight``), so it shifts column j of L by log s_j. The keep mask is the
same selection the pruner makes (``mask_for``: per output row, or per group of m inputs for N:M).

Two ways to give the scales a gradient through that discrete choice:

- ``"ste"`` (straight-through): the forward pass uses the hard mask; the backward pass uses the
  derivative of sigmoid((L - thr) / tau), thr being the midpoint between the last pruned and
  the first kept score of the weight's comparison group.
- ``"soft"``: the forward pass uses sigmoid((L - thr) / tau) itself, a relaxed mask whose
  weights near the threshold are partly kept.

Either way dLoss/dlog s_j = sum_i g_ij * sigmoid'_ij / tau with g_ij = W_ij * dLoss/dW_eff_ij:
the loss change of keeping weight (i, j), which is non-zero for pruned weights too.
"""

from __future__ import annotations

from typing import Any

import torch

from spruce.core.sparsity import LayerTarget, mask_for, pruned_per_row

_TINY = 1e-30  # floor inside log: a zero weight has score 0, log 0 = -inf would poison gradients


def log_base_scores(W: torch.Tensor, col: torch.Tensor | None) -> torch.Tensor:
    """[out, in] log(|W_ij| * col_j) in float32 (``col`` None: magnitude)."""
    L = W.detach().abs().to(torch.float32).clamp_min(_TINY).log()  # [out, in]
    return L if col is None else L + col.clamp_min(_TINY).log()  # [out, in] + [in]


def hard_and_threshold(
    L: torch.Tensor, target: LayerTarget, *, segment: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruner's exact keep mask of scores L [out, in] and, broadcast to L's shape, the
    midpoint between the last pruned and the first kept score of each comparison group (no
    gradient: a rank statistic). One top-k per group shape.

    Groups: N:M groups of m inputs; else each row (``mask_for``), or, with ``segment``, each
    row's runs of ``segment`` columns with SparseGPT's per-block counts (its "row" selection
    drops round(ratio * i2) - round(ratio * i1) weights of each row in the block [i1, i2))."""
    L = L.detach()
    out_f, in_f = L.shape
    if target.n is not None and target.m is not None:
        n, m = target.n, target.m
        if in_f % m:
            return mask_for(L, target), L  # raises the pruner's own error
        G = L.reshape(out_f, in_f // m, m)  # [out, in/m, m]
        top = torch.topk(G, n + 1, dim=-1)  # [out, in/m, n+1] descending
        keep = torch.zeros_like(G, dtype=torch.bool).scatter_(-1, top.indices[..., :n], True)
        thr = 0.5 * (top.values[..., n - 1] + top.values[..., n])  # [out, in/m]
        return keep.reshape(out_f, in_f), thr.unsqueeze(-1).expand(out_f, in_f // m, m).reshape(out_f, in_f)
    if segment is None or segment >= in_f:
        return _row_select(L, pruned_per_row(in_f, target.ratio))
    keeps, thrs = [], []
    for i1 in range(0, in_f, segment):
        i2 = min(i1 + segment, in_f)
        k = pruned_per_row(i2, target.ratio) - pruned_per_row(i1, target.ratio)
        keep, thr = _row_select(L[:, i1:i2], k)
        keeps.append(keep)
        thrs.append(thr)
    return torch.cat(keeps, dim=1), torch.cat(thrs, dim=1)


def _row_select(L: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the k lowest of every row of L [out, cols]; the threshold midway between the k-th and
    (k+1)-th lowest, broadcast to [out, cols]."""
    out_f, cols = L.shape
    if k <= 0 or k >= cols:
        keep = torch.full_like(L, k <= 0, dtype=torch.bool)
        return keep, torch.full_like(L, float("-inf") if k <= 0 else float("inf"))
    # the pruner's own unsorted selection (core.sparsity.unstructured_mask): a sorted top-k costs
    # far more, and magnitude's guard runs it on every linear twice
    low = torch.topk(L, k, dim=1, largest=False, sorted=False)  # [out, k]
    keep = torch.ones_like(L, dtype=torch.bool).scatter_(1, low.indices, False)
    first_kept = L.masked_fill(~keep, float("inf")).amin(dim=1)  # [out]
    thr = 0.5 * (low.values.amax(dim=1) + first_kept)  # [out]
    return keep, thr.unsqueeze(1).expand(out_f, cols)


def keep_mask(
    L: torch.Tensor, target: LayerTarget, *, mode: str, tau: float, segment: int | None = None
) -> torch.Tensor:
    """[out, in] float mask (1 keep, 0 prune) with a gradient to L; see the module docstring.
    ``mode`` "hard": the hard mask alone, no gradient (the guard's checks need no threshold)."""
    if mode == "hard" and segment is None:
        return mask_for(L.detach(), target).to(L.dtype)
    hard, thr = hard_and_threshold(L, target, segment=segment)
    if mode == "hard":
        return hard.to(L.dtype)
    if mode == "soft":
        return torch.sigmoid((L - thr) / tau)
    return _StraightThrough.apply(L, hard, thr, tau)


class _StraightThrough(torch.autograd.Function):
    """Forward: the hard mask. Backward: the derivative of sigmoid((L - thr) / tau), computed only
    in the backward pass (one elementwise sweep instead of keeping three [out, in] tensors)."""

    @staticmethod
    def forward(ctx: Any, L: torch.Tensor, hard: torch.Tensor, thr: torch.Tensor, tau: float) -> torch.Tensor:
        ctx.save_for_backward(L, thr)
        ctx.tau = tau
        return hard.to(L.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        L, thr = ctx.saved_tensors
        sig = torch.sigmoid((L - thr) / ctx.tau)
        return grad * sig * (1.0 - sig) / ctx.tau, None, None, None


def obs_chain(Hinv_factor: torch.Tensor) -> torch.Tensor:
    """[in, in] A = D^-1 U_strict from SparseGPT's upper Cholesky factor U of H^-1 (D = diag U).

    Pruning column j of a row w with error e_j = w_j / U_jj moves the later columns by -e_j U_j,k:
    SparseGPT's update, written as one matrix."""
    return torch.triu(Hinv_factor, diagonal=1) / Hinv_factor.diagonal().unsqueeze(1)


def sparsegpt_weights(W: torch.Tensor, keep: torch.Tensor, A: torch.Tensor, hops: int) -> torch.Tensor:
    """[out, in] SparseGPT's result for a FIXED mask ``keep`` (float, may carry a gradient).

    With p = 1 - keep, SparseGPT's column sweep solves w~ = w - (p * w~) A for every row (each
    pruned weight's error is spread over the later columns, including later pruned ones). The
    solution is the Neumann series w sum_k (-diag(p) A)^k; ``hops`` terms of it are one matmul
    each, differentiable in the mask. On SmolLM2 layers 3 hops match the exact sweep's
    reconstruction error to within 1-4%, 5 hops to <0.5% (docs/induction.md)."""
    P = 1.0 - keep
    w = W
    for _ in range(hops):
        w = W - (P * w) @ A  # [out, in] @ [in, in]
    return keep * w
