"""The three pruners: magnitude, Wanda and SparseGPT, as pure functions of tensors.

Magnitude and Wanda score every weight once and keep the best per output row
(``core.sparsity``); SparseGPT also updates the weights it keeps (``core.sparsegpt``). Each
pruner's step is one entry of ``PRUNE_STEPS``; what the rest of the engine knows of it is its
row of ``core.spec.traits.PRUNER_TRAITS``. SparseGPT's names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

from spruce.core.errors import SpecError, SystemFault
from spruce.core.sparsegpt import FIT_DAMPENING as FIT_DAMPENING
from spruce.core.sparsegpt import HinvFactor as HinvFactor
from spruce.core.sparsegpt import PruneResult as PruneResult
from spruce.core.sparsegpt import Selection, sparsegpt
from spruce.core.sparsegpt import dense_target as dense_target
from spruce.core.sparsegpt import inverse_hessian_factor as inverse_hessian_factor
from spruce.core.sparsegpt import sweep_order as sweep_order
from spruce.core.sparsity import LayerTarget, layer_mask, mask_for
from spruce.core.spec import SweepOrder, traits
from spruce.core.stats import InputStats, OutputSensitivity
from spruce.core.swaps import swap_refine


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


@dataclass(frozen=True)
class PruneOptions:
    """``prune_weight``'s settings, as each pruner's step reads them (``prune_weight``)."""

    blocksize: int = 128
    dampening: float = 0.01
    col_weight: torch.Tensor | None = None
    order: SweepOrder = "natural"
    row_weight: torch.Tensor | None = None
    swap_rounds: int = 0
    swap_shrink: float = 0.0
    fit_share: float = 1.0
    magnitude_scope: str = "row"
    selection: str = "layer"
    hinv: str = "solve"


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
    swap_shrink: float = 0.0,
    fit_share: float = 1.0,
    magnitude_scope: str = "row",
    selection: str = "layer",
    hinv: str = "solve",
) -> PruneResult:
    """Prune W [out, in] with ``pruner`` (a key of ``PRUNE_STEPS``) to ``target``.

    SparseGPT, and Wanda's swaps (``swap_refine``), fit the dense layer's outputs moved
    ``fit_share`` of the way to the dense model's (``fit_cross``) when ``stats`` carries cross
    statistics (``InputStats.G``), the dense layer's outputs otherwise.

    ``col_weight`` [in] (positive) multiplies the importance of input channel j: the score of
    magnitude and Wanda by col_weight[j], SparseGPT's w^2/[Hinv]_jj^2 by col_weight[j]^2.
    ``row_weight`` [out] does the same for output row i, and only SparseGPT reads it (``sparsegpt``):
    Wanda compares weights within a row, where a row's factor cancels, and magnitude is data-free.
    ``swap_rounds`` > 0 refines the mask of a pruner that swaps (``Traits.swaps``: Wanda) by that
    many rounds of ``core.swaps.swap_refine`` against X^T X (``stats`` must carry it), its
    off-diagonal shrunk by ``swap_shrink``.
    ``magnitude_scope`` "layer" (unstructured targets) drops the lowest plain |w| of the whole
    matrix, ties at the threshold included, as llm-compressor does, instead of each row's.
    ``selection`` is SparseGPT's unstructured selection, ``hinv`` "textbook" its inverse Hessian's
    route (``sparsegpt``).
    """
    step = PRUNE_STEPS.get(pruner)
    if step is None:
        raise SpecError(f"unknown pruner {pruner!r}", param="method.pruner")
    options = PruneOptions(
        blocksize=blocksize, dampening=dampening, col_weight=col_weight, order=order, row_weight=row_weight,
        swap_rounds=swap_rounds, swap_shrink=swap_shrink, fit_share=fit_share, magnitude_scope=magnitude_scope, selection=selection,
        hinv=hinv,
    )  # fmt: skip
    return step(W, pruner, target, stats, options)


def _magnitude(
    W: torch.Tensor, pruner: str, target: LayerTarget, stats: InputStats | None, o: PruneOptions
) -> PruneResult:
    if o.magnitude_scope == "layer" and target.m is None:
        keep = layer_mask(_col_weighted(W.detach().abs().to(torch.float32), o), target.ratio)
        return PruneResult(W=W.detach().masked_fill(~keep, 0), keep=keep)
    return _mask_step(W, magnitude_scores(W), pruner, target, stats, o)


def _wanda(
    W: torch.Tensor, pruner: str, target: LayerTarget, stats: InputStats | None, o: PruneOptions
) -> PruneResult:
    return _mask_step(W, wanda_scores(W, _need(stats, pruner).col_norm), pruner, target, stats, o)


def _sparsegpt(
    W: torch.Tensor, pruner: str, target: LayerTarget, stats: InputStats | None, o: PruneOptions
) -> PruneResult:
    st = _need(stats, pruner)
    H = st.hessian()
    return sparsegpt(
        W, H, target, blocksize=o.blocksize, dampening=o.dampening, col_weight=o.col_weight,
        cross=fit_cross(st, o.fit_share), order=o.order, row_weight=o.row_weight,
        # the spec's choices (core/spec/compression.py) checked it is one of Selection
        selection=cast(Selection, o.selection), textbook_inverse=o.hinv == "textbook",
    )  # fmt: skip


PruneStep = Callable[[torch.Tensor, str, LayerTarget, InputStats | None, PruneOptions], PruneResult]

# Each pruner's step, by name: the one dispatch (its traits: core.spec.traits.PRUNER_TRAITS).
PRUNE_STEPS: dict[str, PruneStep] = {"magnitude": _magnitude, "wanda": _wanda, "sparsegpt": _sparsegpt}


def _col_weighted(scores: torch.Tensor, o: PruneOptions) -> torch.Tensor:
    if o.col_weight is None:
        return scores
    return scores * o.col_weight.to(device=scores.device, dtype=torch.float32)  # [out, in] * [in]


def _mask_step(
    W: torch.Tensor,
    scores: torch.Tensor,
    pruner: str,
    target: LayerTarget,
    stats: InputStats | None,
    o: PruneOptions,
) -> PruneResult:
    """A mask pruner's step: keep the best ``scores`` per row, then its swaps where it swaps."""
    keep = mask_for(_col_weighted(scores, o), target)
    swaps = None
    if o.swap_rounds > 0 and traits(pruner).swaps:
        st = _need(stats, pruner)
        if st.H is None:
            raise SystemFault(
                f"{pruner}'s swap rounds need the layer's X^T X: collect statistics with want_hessian"
            )
        # Fitting the dense model, the swaps start from the pruner's own mask, from which they can
        # only lower the fitted error (docs/pruners.md, "Fitting the dense model through the swaps").
        # Both terms on ``hessian()``'s scale, which ``cross()`` shares.
        cross = fit_cross(st, o.fit_share)
        H = st.H if cross is None else st.hessian()
        swaps = swap_refine(W, keep, H, target, o.swap_rounds, cross=cross, shrink=o.swap_shrink)
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
