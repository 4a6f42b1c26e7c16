"""Channel permutations for N:M sparsity: an exact transform that decides which inputs share a group.

An N:M pattern keeps N weights in every M *consecutive* inputs of a row. Which channels share a
group therefore decides what can be kept: two important channels in one 2:4 group force a third,
unimportant one to survive in a neighbouring group instead. Every pruner here is invariant to an
exact per-channel rescaling at N:M (docs/induction.md section 2), but none is invariant to a
permutation, and two permutations per decoder layer fold exactly:

==============  ===============================================================================
group           fold
==============  ===============================================================================
down (fc2)      its input columns, with the output rows (and biases) of gate and up, or fc1.
                Any elementwise activation commutes with a permutation.
o               per kv head, v's output rows (and bias) and the same columns of o in every
                q head that reads that kv head (GQA); attention mixes tokens, not channels.
==============  ===============================================================================

Every other prunable linear reads the residual stream, whose channel order all layers share.
Row permutations (gate/up, v) never change a per-row N:M mask, so the fold changes the pruning of
o and down only. The permutation is chosen to minimise the pruner's own estimate of the error it
will cause, the sum over rows and groups of the costs N:M drops (``pruned_cost``), by a seeded
local search over swaps between groups (Pool & Yu, "Channel Permutations for N:M Sparsity",
NeurIPS 2021, with the cost taken from the pruner's score rather than from |W|). The search only
accepts swaps that lower the cost, and starts from the identity or a spread-out order, whichever
costs less: so the cost never rises above the layer's own order. Where the walk permutes after
its statistics, ``guarded_permutation`` keeps a permutation only where the pruner's own fit
error comes out lower with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from spruce.core.induction.transform import LayerPlan
from spruce.core.pruners import PruneResult, fit_cross, prune_weight, reconstruction_error
from spruce.core.sparsegpt import dense_target, inverse_hessian_factor
from spruce.core.sparsity import LayerTarget
from spruce.core.spec import traits
from spruce.core.stats import InputStats

if TYPE_CHECKING:
    from spruce.core.spec import CompressionSpec

# A swap round compares all M x M swaps of P group pairs over R rows: R * P * M^2 numbers at once.
# Chunks over P keep that near this many floats (64 MiB) whatever the layer's size.
_CHUNK_ELEMENTS = 1 << 24


def pruned_cost(C: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Sum over rows and groups of the ``m - n`` smallest costs of each group of ``m`` consecutive
    columns of ``C`` [rows, cols]: what an N:M mask that keeps the ``n`` largest drops."""
    g = C.reshape(C.shape[0], -1, m)  # [rows, groups, m]
    return g.sort(dim=-1).values[..., : m - n].sum()


def spread_order(C: torch.Tensor, m: int) -> torch.Tensor:
    """[cols] a permutation that deals the columns, ranked by total cost, round robin over the
    groups: each group gets one column of each rank band, so the heaviest never compete."""
    cols = C.shape[1]
    ranked = C.sum(dim=0).argsort(descending=True)  # [cols]
    return ranked.reshape(m, cols // m).T.reshape(-1)  # group g: ranks g, g + G, g + 2G, ...


def nm_permutation(
    C: torch.Tensor, n: int, m: int, *, rounds: int = 200, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[cols] permutation ``p`` such that ``pruned_cost(C[:, p])`` is as low as the search finds,
    never above ``pruned_cost(C)``. ``C`` [rows, cols] >= 0 are the pruner's per-weight costs.

    Each round pairs the groups at random and makes the best of the M x M column swaps between
    the two groups of each pair, if it lowers their cost. It stops after ``rounds`` rounds, or
    once a round gains less than a millionth of the cost.
    """
    rows, cols = C.shape
    if cols % m or cols < 2 * m:
        return torch.arange(cols, device=C.device)
    C = C.to(torch.float32)
    identity = torch.arange(cols, device=C.device)
    spread = spread_order(C, m)
    perm = spread if pruned_cost(C[:, spread], n, m) < pruned_cost(C, n, m) else identity
    groups = cols // m
    P_all = groups // 2
    Cg = C[:, perm].reshape(rows, groups, m).clone()  # [rows, G, m], columns in perm's order
    pg = perm.reshape(groups, m).clone()  # [G, m] original channel at each slot
    total = float(pruned_cost(Cg.reshape(rows, cols), n, m))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, rows * m * m))
    for _ in range(rounds):
        order = torch.randperm(groups, generator=generator).to(C.device)
        A, B = order[0 : 2 * P_all : 2], order[1 : 2 * P_all : 2]  # [P]
        gained = 0.0
        for lo in range(0, P_all, chunk):
            a_idx, b_idx = A[lo : lo + chunk], B[lo : lo + chunk]
            gained += _swap_round(Cg, pg, a_idx, b_idx, n, m)
        total -= gained
        if gained <= 1e-6 * max(total, 1e-30):
            break
    return pg.reshape(-1)


def _swap_round(
    Cg: torch.Tensor,
    pg: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    n: int,
    m: int,
) -> float:
    """Apply, in place, the best cost-lowering swap between groups A[p] and B[p] for each p.

    A group that gives up column a and takes a value v drops the k - 1 smallest of its other
    columns plus min(v, their k-th smallest) (k = m - n): so all m x m swaps of a pair cost
    [rows, m, m] minimums, with no sort of the swapped groups."""
    CA, CB = Cg[:, A], Cg[:, B]  # [rows, P, m]
    base_A, thr_A, drop_A = _without_each(CA, m - n)  # [rows, P, m], [rows, P, m], [rows, P]
    base_B, thr_B, drop_B = _without_each(CB, m - n)
    # new[p, a, b]: cost of both groups after swapping A's column a with B's column b.
    new = (
        base_A.sum(0).unsqueeze(2)
        + torch.minimum(CB.unsqueeze(2), thr_A.unsqueeze(3)).sum(0)  # A takes B's b: [P, m(a), m(b)]
        + base_B.sum(0).unsqueeze(1)
        + torch.minimum(CA.unsqueeze(3), thr_B.unsqueeze(2)).sum(0)  # B takes A's a
    )
    old = drop_A.sum(0) + drop_B.sum(0)  # [P]
    P = A.shape[0]
    gain, flat = (old.view(P, 1) - new.reshape(P, m * m)).max(dim=1)  # [P]
    take = gain > 1e-7 * old.clamp_min(1e-30)
    if not bool(take.any()):
        return 0.0
    p = take.nonzero().squeeze(1)
    a, b = flat[p] // m, flat[p] % m
    ga, gb = A[p], B[p]
    col_a, col_b = Cg[:, ga, a].clone(), Cg[:, gb, b].clone()  # [rows, k]
    Cg[:, ga, a], Cg[:, gb, b] = col_b, col_a
    ch_a, ch_b = pg[ga, a].clone(), pg[gb, b].clone()
    pg[ga, a], pg[gb, b] = ch_b, ch_a
    return float(gain[p].sum())


def _without_each(G: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For groups G [..., m] and each column a: (sum of the k - 1 smallest of the other columns,
    the k-th smallest of the other columns), each [..., m], and each group's own dropped cost, the
    sum of its k smallest [...]. All read off one sort of the group and each column's rank in it."""
    srt, order = G.sort(dim=-1)  # [..., m]
    rank = order.argsort(dim=-1)  # [..., m] where each column sits in the sorted group
    prefix = srt.cumsum(dim=-1)  # [..., m]
    smallest_k = prefix[..., k - 1 : k]  # [..., 1]
    smallest_k1 = prefix[..., k - 2 : k - 1] if k >= 2 else torch.zeros_like(smallest_k)
    # a among the k - 1 smallest: the others' k - 1 smallest are the k smallest without a
    base = torch.where(rank >= k - 1, smallest_k1, smallest_k - G)
    # a among the k smallest: the others' k-th smallest is the group's (k+1)-th
    thr = torch.where(rank > k - 1, srt[..., k - 1 : k], srt[..., k : k + 1])
    return base, thr, smallest_k.squeeze(-1)


def tied_head_permutation(
    C: torch.Tensor,
    n_kv: int,
    groups: int,
    head_dim: int,
    n: int,
    m: int,
    *,
    rounds: int = 200,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[n_heads * head_dim] permutation of o's input columns that moves channels only inside each
    head and alike in every q head of one kv head (v's rows are shared by them). ``C`` is
    [rows, n_heads * head_dim]; the q heads of a kv head are searched as one matrix with their
    rows stacked. A head_dim that is not a multiple of ``m`` is left in place."""
    rows = C.shape[0]
    perm = torch.arange(C.shape[1], device=C.device).reshape(n_kv, groups, head_dim)
    if head_dim % m:
        return perm.reshape(-1)
    heads = C.reshape(rows, n_kv, groups, head_dim)
    out = []
    for g in range(n_kv):
        stacked = heads[:, g].permute(1, 0, 2).reshape(groups * rows, head_dim)  # [groups*rows, hd]
        p = nm_permutation(stacked, n, m, rounds=rounds, generator=generator)
        out.append(perm[g][:, p])  # every q head of kv head g: the same order
    return torch.stack(out).reshape(-1)


def kv_rows(o_perm: torch.Tensor, n_kv: int, groups: int, head_dim: int) -> torch.Tensor:
    """[n_kv * head_dim] v's output-row order matching o's column order ``o_perm``."""
    first_q = o_perm.reshape(n_kv, groups, head_dim)[:, 0]  # [n_kv, hd] in q-head coordinates
    within = first_q % head_dim  # channel inside the head
    base = torch.arange(n_kv, device=o_perm.device).unsqueeze(1) * head_dim
    return (base + within).reshape(-1)


# ------------------------------------------------------------------------------------------------
# One decoder layer: costs, the choice, the fold


@dataclass
class LayerPermutation:
    """The two permutations of one layer (None = left in place) and a JSON-able summary."""

    down: torch.Tensor | None  # [inter] new down input j reads old channel down[j]
    o: torch.Tensor | None  # [n_heads * head_dim] the same for o's input
    info: dict[str, Any] = field(default_factory=dict)


def weight_costs(
    W: torch.Tensor,
    pruner: str,
    stats: InputStats | None,
    *,
    col_weight: torch.Tensor | None = None,
    dampening: float = 0.01,
) -> torch.Tensor:
    """[out, in] each weight's cost of being pruned, as its pruner estimates it: w^2 (magnitude),
    w^2 ||X_j||^2 (Wanda's score squared: the output energy it removes on a diagonal Hessian), or
    w^2 / [H^-1]_jj (SparseGPT's optimal-brain-surgeon error of removing it alone, H^-1 of the full
    inverse, which unlike the Cholesky diagonal does not depend on the column order). Times
    ``col_weight[j]^2`` where induction hands the pruner an importance."""
    C = W.detach().to(torch.float32).square()
    if col_weight is not None:
        C = C * col_weight.to(device=C.device, dtype=torch.float32).square()
    score = traits(pruner).score
    if score == "norm":
        assert stats is not None
        C = C * stats.sq_sum.to(C.device)
    elif score == "obs":
        assert stats is not None and stats.H is not None and stats.n > 0  # (SparseGPT: H of every token)
        U = inverse_hessian_factor(stats.H * (2.0 / stats.n), dampening=dampening).Hinv  # H^-1 = U^T U
        C = C / U.square().sum(dim=0).clamp_min(1e-30).to(C.device)
    return C


def choose_permutations(
    layer: nn.Module,
    plan: LayerPlan,
    target: LayerTarget,
    pruner: str,
    stats: Mapping[str, InputStats],
    col_weights: Mapping[str, torch.Tensor],
    *,
    dampening: float = 0.01,
    rounds: int = 200,
    generator: torch.Generator | None = None,
) -> LayerPermutation:
    """The down and o permutations of ``layer`` for an N:M ``target`` (None for unstructured)."""
    if not target.is_nm:
        return LayerPermutation(None, None, {})
    start = time.perf_counter()
    a = plan.arch
    info: dict[str, Any] = {}
    kw: dict[str, Any] = {"dampening": dampening, "rounds": rounds, "generator": generator}
    down, info["down"] = writer_permutation(
        layer, plan, target, pruner, "down", stats.get(a.mlp_out), col_weights.get(a.mlp_out), **kw
    )
    o, info["o"] = writer_permutation(
        layer, plan, target, pruner, "o", stats.get(a.o), col_weights.get(a.o), **kw
    )
    info["seconds"] = round(time.perf_counter() - start, 4)
    return LayerPermutation(down, o, info)


def writer_permutation(
    layer: nn.Module,
    plan: LayerPlan,
    target: LayerTarget,
    pruner: str,
    group: str,
    stats: InputStats | None,
    col_weight: torch.Tensor | None,
    *,
    dampening: float = 0.01,
    rounds: int = 200,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The permutation of one writer's inputs (``group`` "down" or "o", head-tied for o) for an N:M
    ``target``, and its cost before and after (``choose_permutations`` does both writers)."""
    assert target.n is not None and target.m is not None
    n, m = target.n, target.m
    path = plan.arch.mlp_out if group == "down" else plan.arch.o
    W = layer.get_submodule(path).weight
    assert isinstance(W, torch.Tensor)
    C = weight_costs(W, pruner, stats, col_weight=col_weight, dampening=dampening)
    if group == "down":
        p = nm_permutation(C, n, m, rounds=rounds, generator=generator)
    else:
        p = tied_head_permutation(
            C, plan.n_kv, plan.groups, plan.head_dim, n, m, rounds=rounds, generator=generator
        )
    return p, _gain(C, p, n, m)


def _gain(C: torch.Tensor, p: torch.Tensor, n: int, m: int) -> dict[str, float]:
    before, after = float(pruned_cost(C, n, m)), float(pruned_cost(C[:, p], n, m))
    return {"cost_before": before, "cost_after": after, "change": round(after / max(before, 1e-30) - 1.0, 6)}


@torch.no_grad()
def fold_permutation_(layer: nn.Module, plan: LayerPlan, perm: LayerPermutation) -> None:
    """Permute the layer's weights in place: the dense layer computes the same function."""
    a = plan.arch
    if perm.down is not None:
        _permute(layer, a.mlp_out, cols=perm.down)
        for path in a.mlp_in:  # gate and up (their product is elementwise), or fc1
            _permute(layer, path, rows=perm.down)
    if perm.o is not None:
        _permute(layer, a.o, cols=perm.o)
        _permute(layer, a.v, rows=kv_rows(perm.o, plan.n_kv, plan.groups, plan.head_dim))


def _permute(
    layer: nn.Module, path: str, *, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> None:
    lin = layer.get_submodule(path)
    assert isinstance(lin, nn.Linear), f"{path} is {type(lin).__name__}, expected Linear"
    W = lin.weight
    if cols is not None:
        W.copy_(W[:, cols.to(W.device)])
    if rows is not None:
        W.copy_(W[rows.to(W.device)])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[rows.to(W.device)])


def permute_inputs_(
    plan: LayerPlan,
    perm: LayerPermutation,
    stats: dict[str, InputStats],
    col_weights: dict[str, torch.Tensor],
) -> None:
    """Reorder the already collected input statistics (and induction's importances) of o and down
    as the fold reordered their inputs, so no second calibration pass is needed."""
    a = plan.arch
    for path, p in ((a.mlp_out, perm.down), (a.o, perm.o)):
        if p is None:
            continue
        st = stats.get(path)
        if st is not None:
            stats[path] = st.permuted(p)
        if path in col_weights:
            col_weights[path] = col_weights[path][p.to(col_weights[path].device)]


def guarded_permutation(
    W: torch.Tensor,
    st: InputStats,
    p: torch.Tensor,
    target: LayerTarget,
    spec: CompressionSpec,
    col_weight: torch.Tensor | None,
    info: dict[str, Any],
) -> tuple[PruneResult, InputStats, bool, float]:
    """The pruner (SparseGPT, or Wanda with its swaps) on W in its own order and with its inputs
    permuted by ``p``; the permutation is kept only where the pruner's own fit error
    (``fit_error``) comes out lower. Both errors and the choice go into ``info``. Returns (the
    chosen pruning, the statistics in its order, whether ``p`` is kept, the seconds of the one
    pruning the step would do anyway)."""
    t0 = time.perf_counter()
    plain, plain_err = fit_error(W, st, target, spec, col_weight)
    t1 = time.perf_counter()
    moved_stats = st.permuted(p)
    cw = None if col_weight is None else col_weight[p.to(col_weight.device)]
    moved, moved_err = fit_error(W[:, p.to(W.device)], moved_stats, target, spec, cw)
    t2 = time.perf_counter()
    keep = moved_err < plain_err
    info.update(fit_error_before=round(plain_err, 8), fit_error_after=round(moved_err, 8), kept=keep)
    if keep:
        return moved, moved_stats, True, t2 - t1
    return plain, st, False, t1 - t0


def fit_error(
    W: torch.Tensor,
    st: InputStats,
    target: LayerTarget,
    spec: CompressionSpec,
    col_weight: torch.Tensor | None,
) -> tuple[PruneResult, float]:
    """The pruning of W and its error against the dense model's output (SparseGPT fitting it)
    or the dense layer's (without cross statistics: the objective of Wanda's swaps), relative,
    from the statistics."""
    result = prune_weight(
        W, spec.pruner, target, st, blocksize=spec.blocksize, dampening=spec.dampening, col_weight=col_weight,
        order=spec.order, swap_rounds=spec.swaps, swap_shrink=spec.resolve().swap_shrink, fit_share=spec.fit_weight, selection=spec.selection,
    )  # fmt: skip
    H, cross = st.hessian(), fit_cross(st, spec.fit_weight)
    goal = W if cross is None else dense_target(W, H, cross)
    return result, reconstruction_error(goal, result.W, H)
