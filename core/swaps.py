"""Mask refinement by swaps: a local search on one linear's output error, weights untouched.

Wanda ranks the weights of a row by |W_ij| ||X_j||: that is the exact output error of pruning
weight j *alone* (diagonal of H = X^T X), so it ignores how the errors of the pruned weights of
one row add up through the correlations between input channels. The squared output error of
row i with pruned weights r (the row's weights where the mask drops them, zero elsewhere) is the
quadratic r^T H r. ``swap_refine`` lowers it by swaps: revive one pruned weight g and prune one
kept weight p of the same row (for N:M, of the same group of M), so every row keeps its count of
zeros and every group its pattern, and a swap is taken only where it lowers the row's error.
The surviving weights keep their values: the result is still a mask-only pruner (Wanda's
promise), unlike SparseGPT, which also changes the weights it keeps.

With u = H r (kept per row), reviving g changes the error by w_g^2 H_gg - 2 w_g u_g, pruning p by
w_p^2 H_pp + 2 w_p u_p, and doing both by their sum - 2 w_g w_p H_gp. Each round picks one pair
per row and applies it where that exact change is negative: for N:M, the groups whose best g
plus best p (each on its own) promise most, and the exact best pair inside each of them;
unstructured, the best g and then the best p given g, and in the next round the best p and then
the best g given p (the exact best of in x in pairs per row would cost a matrix product per
round). One round costs a few passes over [out, in] and two gathered rows of H per row.

With ``cross`` (``InputStats.cross()``: W (X_d - X)^T X, X the pruned model's inputs, X_d the
dense model's) the target is the dense model's output W X_d instead of the dense layer's W X:
||X_d w - X w_kept||^2 = r^T H r + 2 r^T c + const per row (c the row of ``cross``), a linear term
that only shifts u to H r + c; every move's change above keeps its form (the linear term has no
cross part between two weights). A scaled ``cross`` aims between the two outputs
(``core.pruners.fit_cross``, ``method.fit_share``: Wanda fits a quarter of the drift by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spruce.core.errors import SystemFault
from spruce.core.sparsity import LayerTarget


@dataclass
class SwapResult:
    keep: torch.Tensor  # [out, in] bool, the refined mask
    swaps: int  # swaps taken, over all rows and rounds
    rounds: int  # rounds that took at least one swap
    before: float  # sum over rows of r^T H r (+ 2 r^T c with cross) with the given mask, H's scale
    after: float  # the same with the refined mask

    @property
    def gain(self) -> float:
        """The objective the swaps removed, as a fraction of the given mask's (of its size: with
        ``cross`` the objective leaves out a constant and can be negative)."""
        return (self.before - self.after) / abs(self.before) if self.before != 0 else 0.0


def swap_refine(
    W: torch.Tensor,
    keep: torch.Tensor,
    H: torch.Tensor,
    target: LayerTarget,
    rounds: int,
    cross: torch.Tensor | None = None,
    shrink: float = 0.0,
) -> SwapResult:
    """Refine ``keep`` [out, in] (True = survives) for weight W [out, in] and input second moment
    H [in, in] (any positive scale, e.g. X^T X) by at most ``rounds`` rounds of one swap per row.

    Every row keeps its number of zeros; with an N:M ``target`` every group of M inputs keeps its
    count too. The summed error r^T H r never increases (a swap is applied only where its exact
    change is negative; the running u = H r is updated in place, so the figures it reports carry
    float32 rounding of the order of 1e-6 of ``before``). With ``cross`` [out, in] the objective is
    r^T H r + 2 r^T c per row (the error against the dense model's output, less a constant the
    mask cannot change), and ``before`` / ``after`` report it: it can be negative.
    ``shrink`` in [0, 1] scales H's off-diagonal by 1 - shrink (1: Wanda's diagonal view, no swap
    gains): correlations measured on the calibration text hold less well on other text.
    """
    if W.dim() != 2 or keep.shape != W.shape or H.shape != (W.shape[1], W.shape[1]):
        raise SystemFault(f"swap_refine: W {tuple(W.shape)}, keep {tuple(keep.shape)}, H {tuple(H.shape)}")
    m = target.m if target.is_nm else None
    if m and W.shape[1] % m:
        raise SystemFault(f"swap_refine: {W.shape[1]} inputs are not a multiple of the group size {m}")
    W = W.detach().to(torch.float32)
    H = H.detach().to(device=W.device, dtype=torch.float32)
    if shrink:
        H = _shrunk(H, shrink)
    pruned = (~keep.to(device=W.device)).to(torch.float32)  # [out, in], 1 where pruned
    R = W * pruned  # [out, in]: r per row
    U = R @ H  # [out, in]: u = H r per row (H symmetric)
    if cross is not None:
        if cross.shape != W.shape:
            raise SystemFault(f"swap_refine: cross {tuple(cross.shape)} for W {tuple(W.shape)}")
        C = cross.detach().to(device=W.device, dtype=torch.float32)
        U.add_(C)  # u = H r + c: half the objective's gradient
        before = float((R * (U + C)).sum(dtype=torch.float64))  # r^T H r + 2 r^T c
    else:
        before = float((R * U).sum(dtype=torch.float64))
    del R
    Wd = W.square() * H.diagonal()  # [out, in]: w_j^2 H_jj, the error of weight j alone
    # A swap must gain more than float32 noise of the row's scale to count: otherwise two
    # nearly equal weights could trade places forever on rounding.
    tol = 1e-6 * Wd.sum(dim=1)  # [out]
    # Weights that cannot take a move are priced out by adding _OUT rather than masked: boolean
    # masking (masked_fill, where) cost most of a round on a CPU.
    # base_grow / base_drop: w_j^2 H_jj where the move is allowed, _OUT where it is not.
    base_grow = Wd + (1 - pruned).mul_(_OUT)  # kept weights cannot be revived
    base_drop = Wd + pruned * _OUT  # pruned weights cannot be pruned again
    W2 = 2 * W
    out = W.shape[0]
    rows = torch.arange(out, device=W.device)
    # Rows still searching. A row's moves depend on its own state only, so a row that found no
    # gaining swap (N:M), or none in both greedy orders in a row (unstructured), never will: it
    # leaves the working set, whose tensors are compacted once enough rows have left (the result
    # is the same as searching every row every round; the rounds get cheaper).
    where = rows  # original row of each working row
    fails = torch.zeros(out, dtype=torch.int64, device=W.device)
    limit = 1 if m else 2
    keep_out = torch.empty(W.shape, dtype=torch.bool, device=W.device)
    change = 0.0
    swaps = used = 0
    for k in range(max(0, rounds)):
        T = W2 * U  # 2 w_j u_j
        grow = torch.sub(base_grow, T)  # change from reviving a pruned weight
        drop = T.add_(base_drop)  # change from pruning a kept weight
        if m:
            g, p, delta = _best_in_group(grow, drop, W, H, m, rows)
        else:
            g, p, delta = _pair(grow, drop, W, H, rows, revive_first=k % 2 == 0)
        take = delta < -tol  # [rows], the exact change (a priced-out move is never negative)
        fails = (fails + 1) * (~take)
        n_take = int(take.sum())
        if n_take:
            r, gt, pt = rows[take], g[take], p[take]
            base_grow[r, gt], base_drop[r, gt] = _OUT, Wd[r, gt]  # g now survives
            base_grow[r, pt], base_drop[r, pt] = Wd[r, pt], _OUT  # p is now pruned
            on = take.to(W.dtype)  # rows that did not swap add zero rows of H
            U.addcmul_((W[rows, p] * on).unsqueeze(1), H.index_select(0, p))
            U.addcmul_((W[rows, g] * on).unsqueeze(1), H.index_select(0, g), value=-1.0)
            change += float(delta[take].sum(dtype=torch.float64))
            swaps += n_take
            used += 1
        live = fails < limit
        n_live = int(live.sum())
        if n_live == 0:
            break
        if n_live <= _COMPACT * rows.numel():
            done = ~live
            keep_out[where[done]] = base_grow[done] >= _OUT / 2
            W, W2, U, Wd, base_grow, base_drop, tol, where, fails = (
                t[live] for t in (W, W2, U, Wd, base_grow, base_drop, tol, where, fails)
            )
            rows = torch.arange(n_live, device=W.device)
    keep_out[where] = base_grow >= _OUT / 2
    after = before + change if cross is not None else max(0.0, before + change)
    return SwapResult(keep=keep_out, swaps=swaps, rounds=used, before=before, after=after)


def _shrunk(H: torch.Tensor, shrink: float) -> torch.Tensor:
    """(1 - shrink) H + shrink diag(H): the diagonal kept, the correlations damped."""
    diagonal = H.diagonal().clone()
    out = H * (1.0 - shrink)
    out.diagonal().copy_(diagonal)
    return out


# Compact the working rows once at most this share of them is still searching: a compaction
# copies every working tensor once (about a round's passes), a round touches every working row.
_COMPACT = 0.75


# Added to the change of a move that is not allowed (reviving a kept weight, pruning a pruned
# one): far above any real change, far below float32's overflow even when two are added.
_OUT = 1e30


def _pair(
    grow: torch.Tensor,
    drop: torch.Tensor,
    W: torch.Tensor,
    H: torch.Tensor,
    rows: torch.Tensor,
    *,
    revive_first: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unstructured: per row the best weight to revive, then the best to prune given that one
    (their cross term included), or the other way round; returns (g, p, exact change). The
    exact best pair would cost an [in, in] search per row; the two greedy orders, alternated,
    closed 70-100% of the gap between Wanda's mask and the exhaustive optimum on small random
    rows (one order alone: 33-77%). ``rows``: arange(out)."""
    first, second = (grow, drop) if revive_first else (drop, grow)
    best_a, a = first.min(dim=1)  # [out]
    cross = H.index_select(0, a).mul_(W).mul_((2 * W[rows, a]).unsqueeze(1))  # [out, in]: 2 w_a w_b H_ab
    best_b, b = second.sub_(cross).min(dim=1)  # (second is not read again)
    delta = best_a + best_b
    return (a, b, delta) if revive_first else (b, a, delta)


def _best_in_group(
    grow: torch.Tensor, drop: torch.Tensor, W: torch.Tensor, H: torch.Tensor, m: int, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """N:M: per row the groups where the best revival plus the best pruning, each on its own,
    promise most (up to _GROUP_TRIES of them), and in those the exact best (revive, prune) pair,
    cross term included (the most promising group alone left rows stuck where its cross term made
    the pair a loss). Returns (g, p, exact change). Reductions over the m entries of every group
    are slow on a CPU, so only the values are reduced over all groups; the exact m x m search runs
    in the chosen groups, all of them in one batch. ``rows``: arange(out); the caller checked that
    M divides in."""
    out, n_in = W.shape
    groups = n_in // m
    promise = grow.view(out, groups, m).amin(dim=2) + drop.view(out, groups, m).amin(dim=2)
    tries = min(_GROUP_TRIES, groups)
    chosen = promise.topk(tries, dim=1, largest=False, sorted=True).indices  # [out, tries]
    cols = (chosen * m).unsqueeze(2) + torch.arange(m, device=W.device)  # [out, tries, m]
    flat = cols.view(out, tries * m)
    Wc = W.gather(1, flat).view(out, tries, m)
    Hc = H[cols.unsqueeze(3), cols.unsqueeze(2)]  # [out, tries, m, m]
    pair = (
        grow.gather(1, flat).view(out, tries, m, 1)
        + drop.gather(1, flat).view(out, tries, 1, m)
        - 2 * Wc.unsqueeze(3) * Wc.unsqueeze(2) * Hc
    )  # [out, tries, m (revive), m (prune)]
    delta, at = pair.view(out, tries * m * m).min(dim=1)  # the first best: earlier groups win ties
    t, within = at // (m * m), at % (m * m)
    base = chosen[rows, t] * m
    return base + within // m, base + within % m, delta


# Groups tried per row and round before the row counts as stuck (N:M).
_GROUP_TRIES = 4
