"""SparseGPT (Frantar & Alistarh, 2023) as a pure function of tensors: it prunes column by column
and updates the not-yet-pruned columns to compensate, using the inverse Hessian of the layer's
inputs. It follows the reference ``sparsegpt.py`` (lazy block updates, mask chosen per block, N:M
per group as it is reached), with exact counts per layer or per row (see ``sparsegpt``).
``core.pruners.prune_weight`` runs it as the ``sparsegpt`` pruner's step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from spruce.core.errors import FactorizationError, SpecError
from spruce.core.sparsity import LayerTarget, pruned_per_row
from spruce.core.spec import SweepOrder
from spruce.core.swaps import SwapResult

log = logging.getLogger(__name__)

Selection = Literal["layer", "row", "block"]

# Ridge of the dense-model fit (``dense_target``), as a fraction of mean(diag(H)): the measured
# best on held-out text (docs/pruners.md, "Fitting the dense model, not the dense layer").
FIT_DAMPENING = 0.1

# Dampening fraction of the first retry when the caller asked for none (10x of zero is zero).
_FIRST_RETRY_DAMPENING = 0.01


@dataclass
class PruneResult:
    """What a pruner's step returns (every pruner's; ``damp`` and ``retries`` are SparseGPT's)."""

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
