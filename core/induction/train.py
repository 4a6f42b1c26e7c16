"""Training one layer's transform against its pruned block, then folding it (``induce_layer``).

Why the training runs in the ORIGINAL coordinates: with the transform of ``transform.py`` the
pruned, folded linear computes

    (W diag(s) * M)((x - d) / s) + b + W d  =  (W * M) x + b + (W * ~M) d,

and an output-row scale commutes with a per-row mask. So the pruned block depends on the scales
only through which weights the mask M keeps, and on the shifts through a bias correction
(W * ~M) d. The training forward therefore runs the unchanged layer with W * M(s) and, where a
shift exists, b + (W * ~M) d: no norm or row rescaling to recompute, and the same masks the
pruner will choose on the folded layer with ``col_weights`` (checked by the tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from spruce.core.arch import ArchSpec
from spruce.core.induction.batches import (
    Batch,
    Minibatch,
    check_subset,
    first_sequences,
    forward_with,
    per_batch,
    split_minibatches,
    target_pieces,
    targets_for,
)
from spruce.core.induction.init import identity_like, init_choice, init_transform
from spruce.core.induction.permute import choose_permutations, fold_permutation_
from spruce.core.induction.trainer import MARGIN, Trainer
from spruce.core.induction.transform import (
    LayerPlan,
    Transform,
    fold_,
    importance,
    input_scales,
    input_shifts,
    normalised,
    plan_layer,
)
from spruce.core.sparsity import LayerTarget
from spruce.core.spec import InductionSpec, SweepOrder, traits
from spruce.core.stats import InputStats, StatsRecorder

log = logging.getLogger(__name__)


@dataclass
class InductionResult:
    """What ``induce_layer`` learned and folded, for the pruner and for the report."""

    losses: list[float]  # relative MSE ||Y - Y_pruned||^2 / ||Y||^2 of each training STEP (a minibatch)
    init_loss: float  # the same, hard mask, before training (on the check subset)
    final_loss: float  # the same, hard mask, with the transform that was folded (on the check subset)
    seconds: float
    col_weights: dict[str, torch.Tensor]  # linear path -> [in] multiplier for prune_weight(col_weight=)
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able summary: what was learned and folded
    # with ``reference``: the dense layer's output on it, per batch [b, seq, hidden] (its dtype)
    reference_outputs: list[torch.Tensor] | None = None


# ------------------------------------------------------------------------------------------------
# Public entry point


def induce_layer(
    layer: nn.Module,
    arch: ArchSpec,
    batches: Sequence[Batch],
    *,
    device: torch.device | str,
    target: LayerTarget,
    pruner: str,
    spec: InductionSpec,
    generator: torch.Generator | None = None,
    dampening: float = 0.01,
    blocksize: int = 128,
    order: SweepOrder = "natural",
    swap_rounds: int = 0,
    swap_shrink: float = 0.0,
    reference: Sequence[Batch] | None = None,
    dense: tuple[Sequence[torch.Tensor], StatsRecorder] | None = None,
) -> InductionResult:
    """Train the layer's transform on ``batches`` against its pruned block, then fold it in place.

    ``batches`` are this layer's inputs (``.hidden`` [b, seq, hidden] and the forward's
    ``.kwargs``); the dense outputs are computed here once. Only the transform trains; the layer's
    parameters are read, never given gradients, and are changed only by the final exact fold, so
    the folded layer computes the same dense function. Prune it afterwards with
    ``prune_weight(..., col_weight=result.col_weights.get(path))`` to get the learned masks.
    ``dampening``, ``blocksize`` and ``order`` are SparseGPT's (pass the spec's): its training-time
    proxy and the final check prune exactly as the pruner will. ``swap_rounds``, ``swap_shrink``: Wanda's swaps
    (``core.swaps``), which the final check applies too. ``reference``: the dense model's inputs
    of this layer, batch for batch like ``batches`` (``InductionSpec.targets`` "model"): the
    targets are then the dense layer's outputs on them (returned as ``reference_outputs``, the
    dense model's next inputs), while the statistics stay those of ``batches``, which the pruner reads.
    ``dense``: the dense layer's outputs on ``batches`` (per batch) and the ``recorder_for`` whose
    hooks rode on that same forward, where the caller runs it anyway (magnitude's walk measures
    the layer's error with it); induction then runs no dense pass of its own, and its time counts
    the hooks'. The outputs may carry the walk's forward precision.
    """
    start = time.perf_counter()
    spec = replace(spec, epochs=spec.epochs_for(pruner, swap_rounds, target.is_nm))  # -1: the default
    device = torch.device(device)
    plan = plan_layer(layer, arch)
    params = {n: p.detach().to(device=device, dtype=torch.float32) for n, p in layer.named_parameters()}
    minibatches = first_sequences(list(split_minibatches(batches, spec.batch_size)), spec.samples_for(pruner))
    swaps = swap_rounds if traits(pruner).swaps else 0
    if dense is None:
        want_H = traits(pruner).wants_hessian(swaps)
        targets, stats = dense_pass(layer, plan, params, minibatches, device=device, want_H=want_H)
    else:
        pieces = targets_for(target_pieces(dense[0], spec.batch_size), minibatches)
        targets, stats = [Y.to(torch.float32) for Y in pieces], dense[1].stats
        _check_recorded(stats, minibatches, want_H=traits(pruner).wants_hessian(swaps))
    reference_outputs = None
    if reference is not None:
        # the dense model's outputs of this layer: what the pruned block must reproduce, drift
        # of earlier layers included (one more forward, on the dense model's inputs)
        # (on every sequence: they are the dense stream the walk carries on)
        outputs = _outputs(layer, params, list(split_minibatches(reference, spec.batch_size)), device)
        reference_outputs = per_batch(outputs, reference, spec.batch_size)
        targets = targets_for(outputs, minibatches)
    permuted = None
    rounds = spec.rounds_for(pruner, trains=spec.epochs > 0)
    if spec.permute and target.is_nm and rounds > 0:
        # Regroup first, so the scales train for the groups the pruner will see; the plain
        # pruning of the layer as it came is kept as the bar the permuted candidates must beat.
        args = (target, pruner, spec, dampening, blocksize, device, order, swaps, swap_shrink)
        plain = Trainer(layer, plan, params, stats, *args)
        T_id = Transform.identity(
            plan, device=device, shifts=spec.shifts, qk=spec.qk_scale, per_linear=spec.per_linear
        )
        idx = check_subset(len(minibatches))
        unpermuted = plain.pruned_loss(T_id, [minibatches[i] for i in idx], [targets[i] for i in idx])
        original = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        permuted = _permute_first(layer, plan, stats, target, pruner, dampening, rounds, generator)
        params = {n: p.detach().to(device=device, dtype=torch.float32) for n, p in layer.named_parameters()}
    T0 = init_transform(plan, stats, spec, pruner, device=device)
    trainer = Trainer(
        layer, plan, params, stats, target, pruner, spec, dampening, blocksize, device, order, swaps, swap_shrink
    )  # fmt: skip
    T, losses = trainer.fit(T0, minibatches, targets, generator)
    candidates = {"identity": identity_like(T0), "init": T0}
    if losses:  # with no training step "trained" is the init itself
        candidates["trained"] = T
    chosen, checks = trainer.choose(candidates, minibatches, targets)
    if permuted is not None:
        checks = {f"permuted {k}": v for k, v in checks.items()}
        checks["identity"] = unpermuted
        permuted["kept"] = checks[f"permuted {chosen[0]}"] < unpermuted * (1.0 - MARGIN)
        if not permuted["kept"]:  # back to the layer as it came, pruned plainly
            layer.load_state_dict(original)
            chosen = ("identity", identity_like(T0))
        else:
            chosen = (f"permuted {chosen[0]}", chosen[1])
    fold_(layer, plan, chosen[1])
    seconds = time.perf_counter() - start + (dense[1].seconds if dense is not None else 0.0)
    info = _info(plan, chosen, checks, spec, pruner, len(losses), seconds)
    info["targets"] = "layer" if reference is None else "model"
    info["dense_pass"] = "own" if dense is None else "walk"  # who ran the dense layer for the targets
    if permuted is not None:
        info["permutation"] = permuted
    col_weights = col_weights_for(plan, chosen[1], pruner)
    init_key = "permuted init" if "permuted init" in checks else "init"
    log.info(
        "induction: %s loss %.4g -> %.4g (%s) in %.2fs",
        pruner, checks[init_key], checks[chosen[0]], chosen[0], seconds,
    )  # fmt: skip
    return InductionResult(
        losses=losses,
        init_loss=checks[init_key],
        final_loss=checks[chosen[0]],
        seconds=seconds,
        col_weights=col_weights,
        info=info,
        reference_outputs=reference_outputs,
    )


def _permute_first(
    layer: nn.Module,
    plan: LayerPlan,
    stats: dict[str, InputStats],
    target: LayerTarget,
    pruner: str,
    dampening: float,
    rounds: int,
    generator: torch.Generator | None,
) -> dict[str, Any]:
    """Choose and fold the N:M channel permutation of o and down (``permute.py``) from the dense
    pass's statistics, and reorder those statistics alike. Returns the permutation's summary."""
    a = plan.arch
    by_path = {a.o: stats["o"], a.mlp_out: stats["down"]}
    perm = choose_permutations(
        layer,
        plan,
        target,
        pruner,
        by_path,
        {},
        dampening=dampening,
        rounds=rounds,
        generator=generator,
    )
    fold_permutation_(layer, plan, perm)
    for group, p in (("down", perm.down), ("o", perm.o)):
        if p is not None:
            stats[group] = stats[group].permuted(p)
    return dict(perm.info)


def col_weights_for(plan: LayerPlan, T: Transform, pruner: str) -> dict[str, torch.Tensor]:
    """Per linear path, the [in] importance multiplier the pruner must apply after folding ``T``.

    Magnitude reads the folded weight |W diag(s)|, so the fold already multiplies its score by s:
    nothing to add. Wanda (|W_ij| ||X_j||) and SparseGPT (w^2 / [Hinv]_jj^2) are invariant under
    the exact rescaling, so the same s must be handed to them as ``col_weight``.
    """
    if traits(pruner).rescaling_invariant:
        return {path: c.detach() for path, c in importance(plan, T).items()}
    if T.linear_log_c is None:
        return {}
    return {path: normalised(c).detach() for path, c in zip(plan.arch.linears, T.linear_log_c, strict=True)}


# ------------------------------------------------------------------------------------------------
# Dense pass: targets and per-channel statistics in one forward


@torch.no_grad()
def dense_pass(
    layer: nn.Module,
    plan: LayerPlan,
    params: dict[str, torch.Tensor],
    minibatches: list[Minibatch],
    *,
    device: torch.device,
    want_H: bool,
) -> tuple[list[torch.Tensor], dict[str, InputStats]]:
    """The dense layer's outputs per minibatch and the input statistics of its four groups."""
    with StatsRecorder(layer, plan.arch, want_H=want_H) as recorder:
        targets = _outputs(layer, params, minibatches, device)
    return targets, recorder.stats


def recorder_for(
    layer: nn.Module, arch: ArchSpec, spec: InductionSpec, pruner: str, swap_rounds: int = 0
) -> StatsRecorder:
    """The ``StatsRecorder`` whose statistics ``induce_layer(dense=...)`` takes: over the sequences
    induction reads, with H where the pruner needs it."""
    want_H = traits(pruner).wants_hessian(swap_rounds)
    return StatsRecorder(layer, arch, want_H=want_H, sequences=spec.samples_for(pruner))


def _check_recorded(stats: dict[str, InputStats], minibatches: Sequence[Minibatch], *, want_H: bool) -> None:
    """The statistics handed in must be over exactly the tokens induction trains and checks on,
    with H where the pruner reads it."""
    tokens = sum(mb.hidden.shape[0] * mb.hidden.shape[1] for mb in minibatches)
    counts = {g: st.n for g, st in stats.items()}
    if len(counts) != 4 or any(n != tokens for n in counts.values()):
        raise ValueError(
            f"induction: the recorded statistics cover {counts} tokens, induction reads {tokens}"
        )
    if any((st.H is not None) != want_H for st in stats.values()):
        raise ValueError(
            f"induction: the recorded statistics {'lack' if want_H else 'hold'} the Gram matrix H"
        )


@torch.no_grad()
def _outputs(
    layer: nn.Module, params: dict[str, torch.Tensor], minibatches: list[Minibatch], device: torch.device
) -> list[torch.Tensor]:
    """The dense layer's float32 output on each minibatch, where that minibatch is stored."""
    return [forward_with(layer, params, *mb.on(device)).to(mb.hidden.device) for mb in minibatches]


def _info(
    plan: LayerPlan,
    chosen: tuple[str, Transform],
    checks: dict[str, float],
    spec: InductionSpec,
    pruner: str,
    steps: int,
    seconds: float,
) -> dict[str, Any]:
    name, T = chosen
    s = input_scales(plan, T)
    shifts = {g: d is not None for g, d in input_shifts(plan, T).items()}
    kind, alpha = init_choice(spec, pruner)
    return {
        "chosen": name,
        "check_losses": {k: round(v, 8) for k, v in checks.items()},
        "losses_per": "step",
        "steps": steps,
        "epochs": spec.epochs,
        "init": {"statistic": kind, "alpha": alpha},
        "mask": spec.mask,
        "scales": {g: _summary(v) for g, v in s.items()},
        "shifts": [g for g, used in shifts.items() if used],
        "qk_pair": T.qk_log_a is not None,
        "switched_off": plan.switched_off(),  # by the family's layout (docs/architectures.md)
        "down_scale": T.down_log_s is not None,
        "per_linear": T.linear_log_c is not None,
        "params": sum(t.numel() for t in T.tensors()),
        "seconds": round(seconds, 4),
    }


def _summary(v: torch.Tensor) -> dict[str, float]:
    v = v.detach().float()
    return {
        "mean": round(float(v.mean()), 6),
        "min": round(float(v.min()), 6),
        "max": round(float(v.max()), 6),
    }
