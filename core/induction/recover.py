"""Recovery scales: per-channel scales trained against the pruned block with its mask fixed.

Why a second set of scales, after pruning: before pruning, an exact rescaling (scales folded on
one side, divided out on the other) cannot change what Wanda's swaps or SparseGPT's update
settle on (docs/induction.md section 2), and with a fixed mask it cannot change the pruned
function at all. After pruning the opposite holds: a scale on a sparse weight's rows or columns
keeps every zero where it is, folds into that weight exactly (W' = diag(r) W diag(c), b' = r * b)
and does change the block's output. Pruning shrinks what a row contributes (the kept weights
no longer add up to the dense row's output) and leaves the drift earlier layers made in the
residual stream; one output scale and one input scale per linear are enough to undo part of
both, and they are few (out + in per linear) against the block's calibration tokens.

With ``weights_lr`` > 0 each kept weight also gets an additive update (in units of its linear's
mean kept weight, zero where the weight is pruned), trained in the same steps: block-wise
reconstruction of the sparse weights, which sees what each linear's own least squares (SparseGPT)
cannot, the softmax and the gate between the linears. The guard below is what keeps these many
more parameters from overfitting a layer's few calibration sequences (docs/induction.md,
"Recovery of the kept weights").

The objective is each token's relative squared error between the block's target (the dense
model's output of the layer, or the dense layer's on the pruned inputs) and the pruned block's
output, averaged over tokens (``token_relative_errors``: docs/induction.md, "Recovery"). Adam on
log-scales from 0 (identity); the check subset (every 8th minibatch, unseen by the optimiser)
decides whether the trained scales replace identity, so the step never makes a layer worse there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spruce.core.arch import ArchSpec, layer_linears
from spruce.core.induction.batches import (
    Batch,
    check_subset,
    first_sequences,
    forward_with,
    held_out_loss,
    split_minibatches,
    target_pieces,
    targets_for,
    token_relative_errors,
)
from spruce.core.precision import layer_precision

_MARGIN = 0.002  # relative check-loss gain the trained scales need to replace identity
# Adam's first step moves every parameter by its full rate (m / sqrt(v) is +-1 there); on Gemma 3
# at Wanda 70% that step raised a layer's error up to 51x. The rate ramps up over these steps.
WARMUP_STEPS = 8


@dataclass
class RecoveryResult:
    """What ``recover_layer`` trained and folded, for the report."""

    losses: list[float]  # each training step's mean relative squared error per token
    identity_loss: float  # on the check subset, the pruned layer as it came
    final_loss: float  # on the check subset, the folded choice
    chosen: str  # "trained" or "identity"
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def recover_layer(
    layer: nn.Module,
    arch: ArchSpec,
    batches: Sequence[Batch],
    targets: Sequence[torch.Tensor],
    *,
    device: torch.device,
    epochs: int,
    lr: float,
    weights_lr: float = 0.0,
    samples: int = 0,
    generator: torch.Generator | None,
    batch_size: int = 1,
) -> RecoveryResult:
    """Train one row and one column log-scale per linear of the (already pruned) ``layer``, and
    with ``weights_lr`` > 0 an update of its kept weights, so that its output on ``batches``
    approaches ``targets`` (per batch, [b, seq, hidden]); fold them into the weights if they win
    on the check subset. Zeros stay zeros. ``samples``: train and check on the first sequences
    only (``InductionSpec.samples_for``; 0 or less: all). ``batch_size``
    sequences per step: one, so that a pass over a few dozen calibration sequences still makes
    a few dozen Adam steps."""
    start = time.perf_counter()
    linears = layer_linears(layer, arch)
    minibatches = first_sequences(list(split_minibatches(batches, batch_size)), samples)
    pieces = targets_for(target_pieces(targets, batch_size), minibatches)
    held_out = check_subset(len(minibatches))
    train = [i for i in range(len(minibatches)) if i not in held_out] or held_out
    log_r = {p: torch.zeros(m.out_features, device=device, requires_grad=True) for p, m in linears.items()}
    log_c = {p: torch.zeros(m.in_features, device=device, requires_grad=True) for p, m in linears.items()}
    base: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {
        p: (m.weight.detach().float(), None if m.bias is None else m.bias.detach().float())
        for p, m in linears.items()
    }
    groups: list[dict[str, Any]] = [{"params": [*log_r.values(), *log_c.values()], "lr": lr}]
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if weights_lr > 0:
        # W + D * keep * unit, unit = the linear's mean |kept weight|: D is in units of the
        # linear's own weights, so ``weights_lr`` is a relative step whatever the model's scale
        # (SmolLM2's weights are ~0.15 on average, a 7B Llama's ~0.02), and zeros get no update.
        deltas = {p: (torch.zeros_like(W, requires_grad=True), *_unit(W)) for p, (W, _) in base.items()}
        groups.append({"params": [D for D, _, _ in deltas.values()], "lr": weights_lr})
    opt = torch.optim.Adam(groups)
    ramp = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    losses: list[float] = []
    for _epoch in range(epochs):
        order = [train[k] for k in torch.randperm(len(train), generator=generator).tolist()]
        for i in order:
            hidden, kwargs = minibatches[i].on(device)
            opt.zero_grad(set_to_none=True)
            with layer_precision(layer, device):
                Y_hat = forward_with(layer, _scaled(base, log_r, log_c, deltas), hidden, kwargs)
                mse = token_relative_errors(Y_hat, pieces[i].to(device)).mean()
            mse.backward()
            opt.step()
            ramp.step()
            losses.append(float(mse.detach()))
    with torch.no_grad():
        check = [minibatches[i] for i in held_out], [pieces[i] for i in held_out]
        identity = held_out_loss(layer, _as_params(base), *check, device, per_token=True)
        trained_params = _scaled(base, log_r, log_c, deltas)
        trained = held_out_loss(layer, trained_params, *check, device, per_token=True)
        chosen = "trained" if trained < identity * (1.0 - _MARGIN) else "identity"
        if chosen == "trained":
            for path, module in linears.items():
                module.weight.copy_(trained_params[f"{path}.weight"].to(module.weight.dtype))
                if module.bias is not None:
                    module.bias.copy_(trained_params[f"{path}.bias"].to(module.bias.dtype))
    seconds = time.perf_counter() - start
    info = {
        "chosen": chosen,
        "check_losses": {"identity": round(identity, 8), "trained": round(trained, 8)},
        "steps": len(losses),
        "epochs": epochs,
        "lr": lr,
        "weights_lr": weights_lr,
        "params": sum(t.numel() for t in (*log_r.values(), *log_c.values()))
        + sum(int(keep.sum()) for _, keep, _ in deltas.values()),
        # per linear: how many row / column scales training moved off 1, and the largest move
        "moved": {p: _moved(log_r[p], log_c[p]) for p in linears},
        "seconds": round(seconds, 4),
    }
    return RecoveryResult(
        losses, identity, trained if chosen == "trained" else identity, chosen, seconds, info
    )


def _moved(log_r: torch.Tensor, log_c: torch.Tensor) -> dict[str, Any]:
    both = torch.cat([log_r, log_c]).detach()
    return {
        "rows": int((log_r != 0).sum()),
        "cols": int((log_c != 0).sum()),
        "max_abs_log": round(float(both.abs().max()), 6),
    }


def _scaled(
    base: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
    log_r: dict[str, torch.Tensor],
    log_c: dict[str, torch.Tensor],
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """diag(r) (W + D * keep * unit) diag(c) (and r * b) per linear, as functional_call
    parameters (``deltas``: per linear, the weight update D, W's kept mask and their unit)."""
    params: dict[str, torch.Tensor] = {}
    for path, (W, b) in base.items():
        r, c = log_r[path].exp(), log_c[path].exp()
        if deltas:
            D, keep, unit = deltas[path]
            W = W + D * keep * unit
        params[f"{path}.weight"] = W * r[:, None] * c[None, :]
        if b is not None:
            params[f"{path}.bias"] = b * r
    return params


def _unit(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W's kept mask (bool: a quarter of a float copy) and its kept weights' mean magnitude."""
    keep = W != 0
    return keep, W.abs().sum() / keep.sum().clamp_min(1)


def _as_params(base: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
    """The layer's linears as they came, as functional_call parameters."""
    params = {f"{path}.weight": W for path, (W, _) in base.items()}
    params.update({f"{path}.bias": b for path, (_, b) in base.items() if b is not None})
    return params
