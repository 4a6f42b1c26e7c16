"""The three pruners: magnitude, Wanda and SparseGPT, as pure functions of tensors.

Magnitude and Wanda score every weight once and keep the best per output row
(``core.sparsity``). SparseGPT (Frantar & Alistarh, 2023) prunes column by column and updates
the not-yet-pruned columns to compensate, using the inverse Hessian of the layer's inputs;
it follows the reference ``sparsegpt.py`` (lazy block updates, mask chosen per block, N:M per
group as it is reached), with exact counts per layer or per row (see ``sparsegpt``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, cast

import torch

from spruce.core.errors import FactorizationError, SpecError, SystemFault
from spruce.core.sparsity import LayerTarget, layer_mask, mask_for, pruned_per_row
from spruce.core.spec import PRUNER_TRAITS, SweepOrder
from spruce.core.stats import InputStats, OutputSensitivity
from spruce.core.swaps import SwapResult, swap_refine

log = logging.getLogger(__name__)

Selection = Literal["layer", "row", "block"]

# Ridge of the dense-model fit (``dense_target``), as a fraction of mean(diag(H)): the measured
# best on held-out text (docs/pruners.md, "Fitting the dense model, not the dense layer").
FIT_DAMPENING = 0.1

# Dampening fraction of the first retry when the caller asked for none (10x of zero is zero).
_FIRST_RETRY_DAMPENING = 0.01


def magnitude_scores(W: torch.Tensor) -> torch.Tensor:
    """[out, in] |W| in float64, exact ties broken towards the input column with the smaller norm.

    Weights dequantized from a few levels tie often, and how ties break matters; the smaller
    column is a data-free stand-in for Wanda's ||x_j|| (docs/pruners.md, "Magnitude").
    Score |w| (1 + 2^-26 r_j), r_j in [0, 1) the column's rank by descending norm over ``in``:
    distinct float32 magnitudes are at least 2^-24 apart relatively, so their order is kept.
    """
    A = W.detach().abs().to(torch.float64)  # [out, in]
    d = A.shape[1]
    order = A.square().sum(dim=0).argsort(descending=True, stable=True)  # [in] largest norm first
    rank = torch.empty(d, dtype=torch.float64, device=A.device)
    rank[order] = torch.arange(d, dtype=torch.float64, device=A.device) / d
    return A * (1.0 + rank * 2.0**-26)


def wanda_scores(W: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """[out, in] Wanda's |W_ij| * ||X_j||_2 in float32."""
    return W.detach().abs().to(torch.float32) * col_norm.to(device=W.device, dtype=torch.float32)


@dataclass
class PruneResult:
    W: torch.Tensor  # pruned weight, same dtype and device as the input weight
    keep: torch.Tensor  # [out, in] bool, True where the weight survives
    damp: float | None = None  # SparseGPT: the dampening fraction finally used
    retries: int = 0  # SparseGPT: how many times the dampening had to be raised
    swaps: SwapResult | None = None  # Wanda with swap rounds: what the refinement did


@dataclass
class HinvFactor:
    """SparseGPT's inverse Hessian, factorised once per input (shared by linears reading it)."""

    Hinv: torch.Tensor  # [in, in] upper Cholesky factor of (H + lambda I)^-1
    dead: torch.Tensor  # [in] bool: inputs that were always zero (diag(H) == 0)
    damp: float  # dampening fraction used: lambda = damp * mean(diag(H))
    retries: int  # how many times the dampening was raised by 10x


def inverse_hessian_factor(
    H: torch.Tensor, *, dampening: float = 0.01, max_retries: int = 4, textbook: bool = False
) -> HinvFactor:
    """Factorise ``H`` [in, in] as SparseGPT needs it, raising the dampening 10x on failure
    (``textbook``: by llm-compressor's route, see ``_try_factor``).

    A factorisation fails when a Cholesky step reports a non-positive pivot or yields a
    non-finite value. After ``max_retries`` raised attempts this raises ``FactorizationError``:
    there is no silent fallback to an identity Hinv (that would be magnitude pruning in disguise).
    """
    if dampening < 0:
        raise SpecError(f"dampening {dampening} is negative", param="method.dampening")
    H = H.detach().to(torch.float32).clone()  # [in, in], never the caller's tensor
    dead = H.diagonal() == 0  # [in]
    # A dead input carries no signal: give it a unit diagonal so H stays invertible; its
    # weights are zeroed by the caller, which costs nothing on the calibration data.
    H[dead, dead] = 1.0
    mean_diag = float(H.diagonal().mean())
    damp = dampening
    for attempt in range(max_retries + 1):
        Hinv = _try_factor(H, damp * mean_diag, textbook=textbook)
        if Hinv is not None:
            return HinvFactor(Hinv=Hinv, dead=dead, damp=damp, retries=attempt)
        next_damp = damp * 10.0 if damp > 0 else _FIRST_RETRY_DAMPENING
        if attempt < max_retries:
            log.warning(
                "SparseGPT: factorising H (%d x %d) failed at dampening %g; retrying at %g",
                H.shape[0], H.shape[1], damp, next_damp,
            )  # fmt: skip
            damp = next_damp
    raise FactorizationError(
        f"SparseGPT could not factorise the Hessian ({H.shape[0]} x {H.shape[1]}, mean diagonal "
        f"{mean_diag:.3g}) even at dampening {damp:g} after {max_retries} retries: the calibration "
        "inputs are degenerate or non-finite. Use more calibration samples or a larger dampening."
    )


def _try_factor(H: torch.Tensor, lam: float, *, textbook: bool = False) -> torch.Tensor | None:
    """Upper Cholesky factor U of (H + lam I)^-1 = U^T U, or None if a step fails.

    The textbook route is cholesky -> cholesky_inverse -> cholesky(upper). This takes the
    Cholesky factor of H with rows and columns reversed (J H J = L L^T), so H = R R^T with
    R = J L J upper triangular, and H^-1 = R^-T R^-1: U = R^-1, the same unique factor, from
    one factorisation and one triangular solve (3-5x faster on CPU, and one rounding step fewer).
    ``textbook`` takes the textbook route (llm-compressor's): its extra rounding moves N:M results
    by a few percent on a small model (docs/spec.md, "The reference preset against llm-compressor").
    """
    if textbook:
        Hl = H.clone()
        Hl.diagonal().add_(lam)
        L, info = torch.linalg.cholesky_ex(Hl)  # H + lam I = L L^T
        if int(info) != 0 or not bool(torch.isfinite(L).all()):
            return None
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)  # (H + lam I)^-1 = U^T U
        return U if int(info) == 0 and bool(torch.isfinite(U).all()) else None
    Hd = H.flip(0, 1)  # [in, in] J H J (a copy)
    Hd.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(Hd)  # J (H + lam I) J = L L^T
    if int(info) != 0 or not bool(torch.isfinite(L).all()):
        return None
    R = L.flip(0, 1)  # [in, in] upper: H + lam I = R R^T
    eye = torch.eye(R.shape[0], dtype=R.dtype, device=R.device)
    U = torch.linalg.solve_triangular(R, eye, upper=True)  # [in, in] R^-1, upper
    if not bool(torch.isfinite(U).all()):
        return None
    return U


def sparsegpt(
    W: torch.Tensor,
    H: torch.Tensor,
    target: LayerTarget,
    *,
    blocksize: int = 128,
    dampening: float = 0.01,
    col_weight: torch.Tensor | None = None,
    max_retries: int = 4,
    selection: Selection = "layer",
    factor: HinvFactor | None = None,
    cross: torch.Tensor | None = None,
    order: SweepOrder = "natural",
    row_weight: torch.Tensor | None = None,
    textbook_inverse: bool = False,
) -> PruneResult:
    """SparseGPT on one weight W [out, in] with input Hessian H [in, in] (float32 math).

    Columns are pruned left to right in blocks of ``blocksize``; each pruned weight's error is
    spread over the remaining columns of its row through the upper Cholesky factor of H^-1.
    The selection score of weight (i, j) is w_ij^2 / [Hinv]_jj^2 (times ``col_weight[j]^2``).
    Unstructured masks are chosen at the start of each block from the updated weights, as in
    the reference; ``selection`` says how many weights each row drops in each block:

    - ``"layer"`` (default): the counts of a layer-wide selection on the initial scores, so
      rows and blocks that matter less give more; exact per layer.
    - ``"row"``: the counts of a per-row selection on the initial scores; exact per row
      (``round(ratio * in)`` zeros in every row), and rows are pruned independently.
    - ``"block"``: the reference: the lowest scores of the whole block; exact per layer.

    On real SmolLM2 layers "layer" gave the lowest reconstruction error, on the calibration
    text and on held-out text alike. N:M groups are chosen as they are reached (a block never
    splits a group). ``factor`` reuses a factorisation
    from ``inverse_hessian_factor`` (same H) instead of computing one.

    ``cross`` (``InputStats.cross()``, [out, in] = W (X_d - X)^T X with X the pruned model's inputs
    and X_d the dense model's) makes the target the dense model's output W X_d instead of W X:
    see ``dense_target``.

    ``order`` sweeps the columns by their input's activity diag(H) instead of as stored, and
    returns the result in W's own order: "ascending" (least active first), "descending", or
    "auto", the measured best per structure (docs/pruners.md, "Sweep order"): ascending when
    unstructured, and with N:M whole groups by their total activity, descending (a group stays M
    consecutive columns, so the pattern holds in W's order). On SmolLM2 each lowered the layer
    error of every linear against the stored order, the other direction raised it. ``factor``
    belongs to the stored order and is only used with "natural".

    ``row_weight`` [out] (positive) multiplies the score of every weight of output row i by
    row_weight[i]^2: how much an error in that row's output costs downstream, relative to the
    other rows (``mlp_row_weights`` for gate/up). Within a row nothing changes, so it only moves
    the unstructured "layer" and "block" selections' counts between rows; N:M groups and the
    "row" selection are per row and ignore it. It is the same as pruning diag(r) W and
    dividing the rows again: SparseGPT's updates are per row.
    """
    p = sweep_order(H, target, order)
    if p is not None:
        inv = p.argsort()
        r = sparsegpt(
            W[:, p], H[p][:, p], target, blocksize=blocksize, dampening=dampening,
            col_weight=None if col_weight is None else col_weight[p.to(col_weight.device)],
            max_retries=max_retries, selection=selection,
            cross=None if cross is None else cross[:, p.to(cross.device)], row_weight=row_weight,
            textbook_inverse=textbook_inverse,
        )  # fmt: skip
        return PruneResult(
            W=r.W[:, inv].contiguous(), keep=r.keep[:, inv].contiguous(), damp=r.damp, retries=r.retries
        )
    if factor is None:
        factor = inverse_hessian_factor(
            H.to(W.device), dampening=dampening, max_retries=max_retries, textbook=textbook_inverse
        )
    W_fit = W.detach() if cross is None else dense_target(W, H, cross)
    Wt = W_fit.to(torch.float32).T.contiguous()  # [in, out]: a column of W is a contiguous row
    Wt[factor.dead] = 0.0
    cw2 = None if col_weight is None else col_weight.to(device=W.device, dtype=torch.float32).square()  # [in]
    rw2 = None
    if row_weight is not None and target.m is None:  # N:M picks per row: nothing to move
        rw2 = row_weight.to(device=W.device, dtype=torch.float32).square()  # [out]
    keep_t = _prune_columns(Wt, factor.Hinv, target, blocksize, cw2, selection, rw2)  # [in, out]
    keep_t[factor.dead] = False
    if not bool(torch.isfinite(Wt).all()):
        raise FactorizationError("SparseGPT produced non-finite weights: the Hessian is ill-conditioned")
    return PruneResult(
        W=Wt.T.to(W.dtype).contiguous(), keep=keep_t.T.contiguous(), damp=factor.damp, retries=factor.retries
    )


def sweep_order(H: torch.Tensor, target: LayerTarget, order: SweepOrder) -> torch.Tensor | None:
    """[in] the column order ``order`` asks for (see ``sparsegpt``), or None for the stored one."""
    if order == "auto":
        order = "ascending" if target.m is None else "descending"
    if order == "natural":
        return None
    d = H.detach().diagonal().to(torch.float32)  # [in]
    m = target.m
    if m is None or d.shape[0] % m:
        return d.argsort(descending=order == "descending", stable=True)
    totals = d.reshape(-1, m).sum(dim=1)  # [G]
    first = totals.argsort(descending=order == "descending", stable=True)  # [G]
    return (first.unsqueeze(1) * m + torch.arange(m, device=d.device)).reshape(-1)


def dense_target(
    W: torch.Tensor, H: torch.Tensor, cross: torch.Tensor, *, dampening: float = FIT_DAMPENING
) -> torch.Tensor:
    """[out, in] the dense weight that, applied to the pruned model's inputs X, best reproduces the
    dense model's output W X_d (ridge least squares; H and ``cross`` on the scale of
    ``InputStats.hessian()``):

        W* = W + W (X_d - X)^T X (X^T X + lambda I)^-1,   lambda = dampening * mean(diag(H))

    ||W X_d - W' X|| = ||W* X - W' X|| + const for every W', so SparseGPT run on W* (same
    Hessian) fits the pruned layer to the dense model instead of to the dense layer on already
    pruned inputs, correcting the error the earlier layers left (asymmetric calibration, as in
    GPTAQ, Li et al. 2025). The correction is relative to W: equal inputs give W* = W exactly.
    Its ridge is stronger than SparseGPT's dampening: the correction is a regression on the
    calibration tokens, and with 0.01 it fitted them at the cost of held-out text.
    """
    W32 = W.detach().to(torch.float32)  # cross already holds W (X_d - X)^T X: [out, in]
    A = H.detach().to(device=W.device, dtype=torch.float32).clone()  # [in, in]
    dead = A.diagonal() == 0
    A[dead, dead] = 1.0
    A.diagonal().add_(dampening * float(A.diagonal().mean()))
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise FactorizationError("the dense-model fit could not factorise the Hessian: degenerate inputs")
    rhs = cross.to(device=W.device, dtype=torch.float32).T  # [in, out]
    return W32 + torch.cholesky_solve(rhs, L).T


def _obs_scores(
    Wt: torch.Tensor, d: torch.Tensor, cw2: torch.Tensor | None, rw2: torch.Tensor | None = None
) -> torch.Tensor:
    """[cols, out] SparseGPT's saliency w^2 / [Hinv]_jj^2 of the rows of Wt (columns of W), times
    the squared column weight ``cw2`` [cols] and row weight ``rw2`` [out] where given."""
    S = Wt.square() / d.square().unsqueeze(1)  # [cols, out]
    if cw2 is not None:
        S = S * cw2.unsqueeze(1)
    return S if rw2 is None else S * rw2.unsqueeze(0)


def _prune_columns(
    Wt: torch.Tensor,
    Hinv: torch.Tensor,
    target: LayerTarget,
    blocksize: int,
    cw2: torch.Tensor | None,
    selection: Selection,
    rw2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prune ``Wt`` [in, out] (W transposed) in place; returns the [in, out] keep mask."""
    in_f = Wt.shape[0]
    d = Hinv.diagonal()  # [in]
    keep = torch.ones_like(Wt, dtype=torch.bool)  # [in, out]
    m = target.m
    if m is not None:
        if in_f % m != 0:
            raise SpecError(
                f"{target} sparsity needs the input size to be a multiple of {m}, but a layer has {in_f}",
                param="sparsity",
            )
        blocksize = max(m, blocksize // m * m)  # a block never splits an N:M group
    counts = None
    if m is None and selection != "block":
        counts = _block_counts(Wt, d, cw2, rw2, target.ratio, blocksize, per_row=selection == "row")
    for b, i1 in enumerate(range(0, in_f, blocksize)):
        i2 = min(i1 + blocksize, in_f)
        W1 = Wt[i1:i2]  # [count, out] view: updated in place
        Hinv1 = Hinv[i1:i2, i1:i2]  # [count, count]
        d1 = d[i1:i2]  # [count]
        keep1 = keep[i1:i2]  # [count, out] view
        if m is None:
            S = _obs_scores(W1, d1, None if cw2 is None else cw2[i1:i2], rw2)  # [count, out]
            if counts is None:
                k = round(target.ratio * W1.shape[1] * i2) - round(target.ratio * W1.shape[1] * i1)
                keep1.copy_(_drop_lowest_of_block(S, k))
            else:
                keep1.copy_(_drop_lowest_per_row(S, counts[b]))
        # (pruned / d) per weight: the error of a column is one multiply away.
        scale1 = (~keep1).to(torch.float32) / d1.unsqueeze(1)  # [count, out]
        Err1 = torch.empty_like(W1)  # [count, out]
        for i in range(i2 - i1):
            if m is not None and i % m == 0:
                assert target.n is not None
                g = slice(i, i + m)
                S = _obs_scores(W1[g], d1[g], None if cw2 is None else cw2[i1 + i : i1 + i + m])  # [m, out]
                top = torch.topk(S, target.n, dim=0, sorted=False).indices  # [n, out]
                keep1[g] = torch.zeros_like(S, dtype=torch.bool).scatter_(0, top, True)
                scale1[g] = (~keep1[g]).to(torch.float32) / d1[g].unsqueeze(1)
            torch.mul(W1[i], scale1[i], out=Err1[i])  # [out] (w - q) / d
            W1[i + 1 :].addr_(Hinv1[i, i + 1 :], Err1[i], alpha=-1.0)  # [count-i-1, out]
        W1.mul_(keep1)  # pruned weights become exact zeros
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1, alpha=-1.0)  # [in-i2, out] lazy update
    return keep


def _block_counts(
    Wt: torch.Tensor,
    d: torch.Tensor,
    cw2: torch.Tensor | None,
    rw2: torch.Tensor | None,
    ratio: float,
    blocksize: int,
    per_row: bool,
) -> list[torch.Tensor]:
    """For each block, how many weights each row of W drops there ([out] per block).

    Taken from a selection on the initial scores: over the whole layer (exact per layer) or
    per row (exact per row). Only the counts are kept; which weights go is decided per block.
    """
    S = _obs_scores(Wt, d, cw2, rw2)  # [in, out]
    drop = torch.zeros_like(S, dtype=torch.bool)
    if per_row:
        k = pruned_per_row(S.shape[0], ratio)
        if k > 0:
            drop.scatter_(0, torch.topk(S, k, dim=0, largest=False, sorted=False).indices, True)
    else:
        k = round(ratio * S.numel())
        if k > 0:
            drop.view(-1)[torch.topk(S.reshape(-1), k, largest=False, sorted=False).indices] = True
    return [blk.sum(dim=0) for blk in drop.split(blocksize, dim=0)]


def _drop_lowest_of_block(S: torch.Tensor, k: int) -> torch.Tensor:
    """[count, out] keep mask without the ``k`` lowest scores of the whole block."""
    keep = torch.ones_like(S, dtype=torch.bool)
    if k > 0:
        keep.view(-1)[torch.topk(S.reshape(-1), k, largest=False, sorted=False).indices] = False
    return keep


def _drop_lowest_per_row(S: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[count, out] keep mask without the ``counts[r]`` lowest scores of each row r of W."""
    keep = torch.ones_like(S, dtype=torch.bool)
    k_max = int(counts.max())
    if k_max > 0:
        # one topk of the largest count, then each row keeps its own prefix (cheaper than argsort)
        low = torch.topk(S, k_max, dim=0, largest=False, sorted=True).indices  # [k_max, out]
        rank = torch.arange(k_max, device=S.device).unsqueeze(1)  # [k_max, 1]
        keep.scatter_(0, low, rank >= counts.unsqueeze(0))
    return keep


def prune_weight(
    W: torch.Tensor,
    pruner: str,
    target: LayerTarget,
    stats: InputStats | None,
    *,
    blocksize: int = 128,
    dampening: float = 0.01,
    col_weight: torch.Tensor | None = None,
    order: SweepOrder = "natural",
    row_weight: torch.Tensor | None = None,
    swap_rounds: int = 0,
    fit_share: float = 1.0,
    magnitude_scope: str = "row",
    selection: str = "layer",
    hinv: str = "solve",
) -> PruneResult:
    """Prune W [out, in] with ``pruner`` ("magnitude", "wanda" or "sparsegpt") to ``target``.

    SparseGPT, and Wanda's swaps (``swap_refine``), fit the dense layer's outputs moved
    ``fit_share`` of the way to the dense model's (``fit_cross``) when ``stats`` carries cross
    statistics (``InputStats.G``), the dense layer's outputs otherwise.

    ``col_weight`` [in] (positive) multiplies the importance of input channel j: the score of
    magnitude and Wanda by col_weight[j], SparseGPT's w^2/[Hinv]_jj^2 by col_weight[j]^2.
    ``row_weight`` [out] does the same for output row i, and only SparseGPT reads it (``sparsegpt``):
    Wanda compares weights within a row, where a row's factor cancels, and magnitude is data-free.
    ``swap_rounds`` > 0 refines Wanda's mask by that many rounds of ``core.swaps.swap_refine``
    against the full X^T X (``stats`` must carry it).
    ``magnitude_scope`` "layer" (unstructured targets) drops the lowest plain |w| of the whole
    matrix, ties at the threshold included, as llm-compressor does, instead of each row's.
    ``selection`` is SparseGPT's unstructured selection, ``hinv`` "textbook" its inverse Hessian's
    route (``sparsegpt``).
    """
    layer_wide = pruner == "magnitude" and magnitude_scope == "layer" and target.m is None
    if pruner == "sparsegpt":
        H = _need(stats, pruner).hessian()
        cross = fit_cross(_need(stats, pruner), fit_share)
        return sparsegpt(
            W,
            H,
            target,
            blocksize=blocksize,
            dampening=dampening,
            col_weight=col_weight,
            cross=cross,
            order=order,
            row_weight=row_weight,
            # the spec's choices (core/spec/compression.py) checked it is one of Selection
            selection=cast(Selection, selection),
            textbook_inverse=hinv == "textbook",
        )
    if layer_wide:
        scores = W.detach().abs().to(torch.float32)
    elif pruner == "magnitude":
        scores = magnitude_scores(W)
    elif pruner == "wanda":
        scores = wanda_scores(W, _need(stats, pruner).col_norm)
    else:
        raise SpecError(f"unknown pruner {pruner!r}", param="method.pruner")
    if col_weight is not None:
        scores = scores * col_weight.to(device=W.device, dtype=torch.float32)  # [out, in] * [in]
    keep = layer_mask(scores, target.ratio) if layer_wide else mask_for(scores, target)
    swaps = None
    if swap_rounds > 0 and PRUNER_TRAITS[pruner].swaps:
        st = _need(stats, pruner)
        if st.H is None:
            raise SystemFault(
                "Wanda's swap rounds need the layer's X^T X: collect statistics with want_hessian"
            )
        # Fitting the dense model, the swaps start from Wanda's own mask, from which they can only
        # lower the fitted error (docs/pruners.md, "Fitting the dense model through the swaps").
        # Both terms on ``hessian()``'s scale, which ``cross()`` shares.
        cross = fit_cross(st, fit_share)
        H = st.H if cross is None else st.hessian()
        swaps = swap_refine(W, keep, H, target, swap_rounds, cross=cross)
        keep = swaps.keep
    return PruneResult(W=W.detach().masked_fill(~keep, 0), keep=keep, swaps=swaps)


def fit_cross(stats: InputStats, share: float) -> torch.Tensor | None:
    """The cross statistics (``InputStats.cross()``) scaled by ``share``, the part of the dense
    model's drift the writer fits (``CompressionSpec.fit_weight``: its target is
    W X + share W (X_d - X)); None without cross statistics or at share 0."""
    cross = stats.cross()
    if cross is None or share == 0:
        return None
    return cross if share == 1 else cross * share


def mlp_row_weights(W_out: torch.Tensor, sensitivity: OutputSensitivity) -> torch.Tensor:
    """[out] SparseGPT's ``row_weight`` for one of the MLP's input linears (gate/up, fc1): the
    typical size of the change in the MLP's output per unit error in row i's output,
    sqrt(E[(dh_i / dz_i)^2]) * ||W_out[:, i]|| (h the hidden activation, W_out down / fc2, dense).

    SparseGPT's own score measures the error in the linear's output, where an error in up's row i
    counts the same whether act(gate_i) is large or nearly zero on every token; weighting by what
    reaches the block's output moves the zeros to rows whose output is scaled away. Measured on
    SmolLM2 (docs/pruners.md, "Row weights"): the block's output error drops 2-15% at 50% and 70%.
    The largest weight is 1 (only the ratios between rows matter).
    """
    col = W_out.detach().to(torch.float32).square().sum(dim=0)  # [hidden]: ||W_out[:, i]||^2
    r = (sensitivity.mean_sq.to(col.device) * col).sqrt()  # [hidden]
    top = float(r.max())
    return r / top if top > 0 else torch.ones_like(r)


def _need(stats: InputStats | None, pruner: str) -> InputStats:
    if stats is None:
        raise SystemFault(f"pruner {pruner!r} needs the layer's input statistics, but none were collected")
    return stats


def reconstruction_error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> float:
    """Relative output error on the calibration inputs: tr(dW H dW^T) / tr(W H W^T), dW = W - W_new.

    Equals ||(W - W_new) X||_F^2 / ||W X||_F^2 for H = X X^T (any scale of H). The products run
    in float32 (in float64 they took 3% of SparseGPT's step on a CPU), the sums in float64.
    """
    W32 = W.detach().to(torch.float32)
    H32 = H.detach().to(device=W.device, dtype=torch.float32)
    dW = W32 - W_new.detach().to(device=W.device, dtype=torch.float32)  # [out, in]
    num = float(((dW @ H32) * dW).sum(dtype=torch.float64))
    den = float(((W32 @ H32) * W32).sum(dtype=torch.float64))
    if den > 0:
        return num / den
    return float("inf") if num > 0 else 0.0  # W X = 0: any change is infinitely large
