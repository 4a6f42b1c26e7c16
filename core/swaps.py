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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import SystemFault
from core.sparsity import LayerTarget


@dataclass
class SwapResult:
    keep: torch.Tensor  # [out, in] bool, the refined mask
    swaps: int  # swaps taken, over all rows and rounds
    rounds: int  # rounds that took at least one swap
    before: float  # sum over rows of r^T H r with the given mask (H's own scale)
    after: float  # the same with the refined mask

    @property
    def gain(self) -> float:
        """Fraction of the given mask's squared output error that the swaps removed."""
        return 1.0 - self.after / self.before if self.before > 0 else 0.0


def swap_refine(
    W: torch.Tensor, keep: torch.Tensor, H: torch.Tensor, target: LayerTarget, rounds: int
) -> SwapResult:
    """Refine ``keep`` [out, in] (True = survives) for weight W [out, in] and input second moment
    H [in, in] (any positive scale, e.g. X^T X) by at most ``rounds`` rounds of one swap per row.

    Every row keeps its number of zeros; with an N:M ``target`` every group of M inputs keeps its
    count too. The summed error r^T H r never increases (a swap is applied only where its exact
    change is negative; the running u = H r is updated in place, so the figures it reports carry
    float32 rounding of the order of 1e-6 of ``before``).
    """
    if W.dim() != 2 or keep.shape != W.shape or H.shape != (W.shape[1], W.shape[1]):
        raise SystemFault(f"swap_refine: W {tuple(W.shape)}, keep {tuple(keep.shape)}, H {tuple(H.shape)}")
    m = target.m if target.is_nm else None
    if m and W.shape[1] % m:
        raise SystemFault(f"swap_refine: {W.shape[1]} inputs are not a multiple of the group size {m}")
    W = W.detach().to(torch.float32)
    H = H.detach().to(device=W.device, dtype=torch.float32)
    pruned = (~keep.to(device=W.device)).to(torch.float32)  # [out, in], 1 where pruned
    U = (W * pruned) @ H  # [out, in]: u = H r per row (H symmetric)
    before = float(((W * pruned) * U).sum(dtype=torch.float64))
    Wd = W.square() * H.diagonal()  # [out, in]: w_j^2 H_jj, the error of weight j alone
    # A swap must gain more than float32 noise of the row's scale to count: otherwise two
    # nearly equal weights could trade places forever on rounding.
    tol = 1e-6 * Wd.sum(dim=1)  # [out]
    # Weights that cannot take a move are priced out by adding _OUT rather than masked: boolean
    # masking (masked_fill, where) took 20-30x the time of an add on a CPU, most of a round.
    # base_grow / base_drop: w_j^2 H_jj where the move is allowed, _OUT where it is not.
    base_grow = Wd + (1 - pruned).mul_(_OUT)  # kept weights cannot be revived
    base_drop = Wd + pruned * _OUT  # pruned weights cannot be pruned again
    W2 = 2 * W
    rows = torch.arange(W.shape[0], device=W.device)
    change = 0.0
    swaps = used = idle = 0
    for k in range(max(0, rounds)):
        T = W2 * U  # 2 w_j u_j
        grow = torch.sub(base_grow, T)  # change from reviving a pruned weight
        drop = T.add_(base_drop)  # change from pruning a kept weight
        if m:
            g, p, delta = _best_in_group(grow, drop, W, H, m, rows)
        else:
            g, p, delta = _pair(grow, drop, W, H, rows, revive_first=k % 2 == 0)
        take = delta < -tol  # [out], the exact change (a priced-out move is never negative)
        if not bool(take.any()):
            idle += 1
            # the unstructured search alternates two greedy orders: stop when both found nothing
            if m or idle == 2:
                break
            continue
        idle = 0
        r, gt, pt = rows[take], g[take], p[take]
        base_grow[r, gt], base_drop[r, gt] = _OUT, Wd[r, gt]  # g now survives
        base_grow[r, pt], base_drop[r, pt] = Wd[r, pt], _OUT  # p is now pruned
        on = take.to(W.dtype)  # rows that did not swap add zero rows of H
        U.addcmul_((W[rows, p] * on).unsqueeze(1), H.index_select(0, p))
        U.addcmul_((W[rows, g] * on).unsqueeze(1), H.index_select(0, g), value=-1.0)
        change += float(delta[take].sum(dtype=torch.float64))
        swaps += int(take.sum())
        used += 1
    keep = base_grow >= _OUT / 2
    return SwapResult(keep=keep, swaps=swaps, rounds=used, before=before, after=max(0.0, before + change))


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
    """N:M: per row the group where the best revival plus the best pruning, each on its own,
    promise most, and in it the exact best (revive, prune) pair, cross term included; then the
    same in the row's next most promising groups, up to _GROUP_TRIES, keeping the best pair
    (the first group's pair alone left rows stuck where its cross term made it a loss).
    Returns (g, p, exact change). Reductions over the m entries of every group are slow on a
    CPU, so only the values are reduced over all groups; the exact m x m search runs in the one
    chosen group per row. ``rows``: arange(out); the caller checked that M divides in."""
    out, n_in = W.shape
    groups = n_in // m
    promise = grow.view(out, groups, m).amin(dim=2) + drop.view(out, groups, m).amin(dim=2)
    within = torch.arange(m, device=W.device)
    g = p = delta = torch.empty(0)
    for attempt in range(min(_GROUP_TRIES, groups)):
        group = promise.argmin(dim=1)  # [out]
        cols = (group * m).unsqueeze(1) + within  # [out, m]
        Wc = W.gather(1, cols)
        pair = (
            grow.gather(1, cols).unsqueeze(2)
            + drop.gather(1, cols).unsqueeze(1)
            - 2 * Wc.unsqueeze(2) * Wc.unsqueeze(1) * H[cols.unsqueeze(2), cols.unsqueeze(1)]
        )  # [out, m (revive), m (prune)]
        d, at = pair.view(out, m * m).min(dim=1)
        gi, pi = cols[rows, at // m], cols[rows, at % m]
        if attempt == 0:
            g, p, delta = gi, pi, d
        else:  # the best pair over the groups tried so far
            better = d < delta
            g, p, delta = torch.where(better, gi, g), torch.where(better, pi, p), torch.minimum(d, delta)
        promise[rows, group] = _OUT  # next try: the row's next most promising group
    return g, p, delta


# Groups tried per row and round before the row counts as stuck (N:M).
_GROUP_TRIES = 4
