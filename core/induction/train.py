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
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

from core.arch import ArchSpec
from core.induction.masks import keep_mask, log_base_scores, obs_chain, sparsegpt_weights
from core.induction.permute import choose_permutations, fold_permutation_
from core.induction.transform import (
    LayerPlan,
    Transform,
    fold_,
    fold_params,
    importance,
    input_scales,
    input_shifts,
    normalised,
    plan_layer,
    qk_row_scales,
)
from core.pruners import HinvFactor, inverse_hessian_factor, sparsegpt
from core.sparsity import LayerTarget
from core.spec import InductionSpec, SweepOrder
from core.swaps import swap_refine
from core.walker import exact, layer_precision

log = logging.getLogger(__name__)

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")
_MEDIAN_ROWS = 4096  # tokens kept per group to estimate per-channel medians (exact medians would cost memory)
_POWER_ITERS_INIT = 20  # power iterations for the reference spectral norms (then 1 per step, warm-started)
_MARGIN = 0.005  # relative loss gain a transform needs on held-out data to replace plain pruning
SPARSEGPT_HOPS = 3  # terms of the series that stands in for SparseGPT's update during training


class Batch(Protocol):
    """What the walker hands over (``core.walker.LayerBatch``): a layer's input and the keyword
    arguments of its forward."""

    hidden: torch.Tensor  # [b, seq, hidden]
    kwargs: dict[str, Any]


@dataclass
class Minibatch:
    """A piece of a walker batch, kept where the walker stores it (one piece visits the device
    at a time, so device memory stays one layer plus one minibatch)."""

    hidden: torch.Tensor  # [b, seq, hidden]
    kwargs: dict[str, Any]

    def on(self, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        """(hidden, kwargs) on ``device``, floating tensors in float32 (induction's precision)."""
        return _move(self.hidden, device), _move(self.kwargs, device)


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


@dataclass
class GroupStats:
    """Per-channel sums of one input group's X [tokens, in], from the dense pass."""

    n: int
    sum: torch.Tensor  # [in]
    sq_sum: torch.Tensor  # [in]
    abs_sum: torch.Tensor  # [in]
    H: torch.Tensor | None  # [in, in] sum of x x^T (SparseGPT only)
    sample: torch.Tensor  # [<= _MEDIAN_ROWS, in] a subset of |x| rows for medians

    def permuted(self, p: torch.Tensor) -> GroupStats:
        """The statistics of the input with its channels reordered: new channel j is old p[j]."""
        return GroupStats(
            n=self.n,
            sum=self.sum[p],
            sq_sum=self.sq_sum[p],
            abs_sum=self.abs_sum[p],
            H=None if self.H is None else self.H[p][:, p],
            sample=self.sample[:, p],
        )

    def centred_sq(self, d: torch.Tensor | None) -> torch.Tensor:
        """[in] sum over tokens of (x_j - d_j)^2, from the cached sums (differentiable in d)."""
        if d is None:
            return self.sq_sum
        return (self.sq_sum - 2.0 * d * self.sum + self.n * d * d).clamp_min(0.0)

    def centred_H(self, d: torch.Tensor | None) -> torch.Tensor:
        """[in, in] sum of (x - d)(x - d)^T from the cached sums."""
        assert self.H is not None
        if d is None:
            return self.H
        d = d.detach()
        return self.H - torch.outer(d, self.sum) - torch.outer(self.sum, d) + self.n * torch.outer(d, d)


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
    proxy and the final check prune exactly as the pruner will. ``swap_rounds``: Wanda's swaps
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
    minibatches = first_sequences(list(_minibatches(batches, spec.batch_size)), spec.samples_for(pruner))
    swaps = swap_rounds if pruner == "wanda" else 0
    if dense is None:
        want_H = wants_hessian(pruner, swaps)
        targets, stats = dense_pass(layer, plan, params, minibatches, device=device, want_H=want_H)
    else:
        pieces = targets_for(target_pieces(dense[0], spec.batch_size), minibatches)
        targets, stats = [Y.to(torch.float32) for Y in pieces], dense[1].stats
        _check_recorded(stats, minibatches, want_H=wants_hessian(pruner, swaps))
    reference_outputs = None
    if reference is not None:
        # the dense model's outputs of this layer: what the pruned block must reproduce, drift
        # of earlier layers included (one more forward, on the dense model's inputs)
        # (on every sequence: they are the dense stream the walk carries on)
        outputs = _outputs(layer, params, list(_minibatches(reference, spec.batch_size)), device)
        reference_outputs = _per_batch(outputs, reference, spec.batch_size)
        targets = targets_for(outputs, minibatches)
    permuted = None
    rounds = spec.rounds_for(pruner, trains=spec.epochs > 0)
    if spec.permute and target.is_nm and rounds > 0:
        # Regroup first, so the scales train for the groups the pruner will see; the plain
        # pruning of the layer as it came is kept as the bar the permuted candidates must beat.
        args = (target, pruner, spec, dampening, blocksize, device, order, swaps)
        plain = _Trainer(layer, plan, params, stats, *args)
        T_id = Transform.identity(
            plan, device=device, shifts=spec.shifts, qk=spec.qk_scale, per_linear=spec.per_linear
        )
        idx = check_subset(len(minibatches))
        unpermuted = plain.pruned_loss(T_id, [minibatches[i] for i in idx], [targets[i] for i in idx])
        original = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        permuted = _permute_first(layer, plan, stats, target, pruner, dampening, rounds, generator)
        params = {n: p.detach().to(device=device, dtype=torch.float32) for n, p in layer.named_parameters()}
    T0 = init_transform(plan, stats, spec, pruner, device=device)
    trainer = _Trainer(
        layer, plan, params, stats, target, pruner, spec, dampening, blocksize, device, order, swaps
    )  # fmt: skip
    T, losses = trainer.fit(T0, minibatches, targets, generator)
    candidates = {"identity": _identity_like(T0), "init": T0}
    if losses:  # with no training step "trained" is the init itself
        candidates["trained"] = T
    chosen, checks = trainer.choose(candidates, minibatches, targets)
    if permuted is not None:
        checks = {f"permuted {k}": v for k, v in checks.items()}
        checks["identity"] = unpermuted
        permuted["kept"] = checks[f"permuted {chosen[0]}"] < unpermuted * (1.0 - _MARGIN)
        if not permuted["kept"]:  # back to the layer as it came, pruned plainly
            layer.load_state_dict(original)
            chosen = ("identity", _identity_like(T0))
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
    stats: dict[str, GroupStats],
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
            stats[group] = stats[group].permuted(p.to(stats[group].sum.device))
    return dict(perm.info)


def col_weights_for(plan: LayerPlan, T: Transform, pruner: str) -> dict[str, torch.Tensor]:
    """Per linear path, the [in] importance multiplier the pruner must apply after folding ``T``.

    Magnitude reads the folded weight |W diag(s)|, so the fold already multiplies its score by s:
    nothing to add. Wanda (|W_ij| ||X_j||) and SparseGPT (w^2 / [Hinv]_jj^2) are invariant under
    the exact rescaling, so the same s must be handed to them as ``col_weight``.
    """
    if pruner != "magnitude":
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
) -> tuple[list[torch.Tensor], dict[str, GroupStats]]:
    """The dense layer's outputs per minibatch and the input statistics of its four groups."""
    with StatsRecorder(layer, plan, want_H=want_H) as recorder:
        targets = _outputs(layer, params, minibatches, device)
    return targets, recorder.stats


def recorder_for(
    layer: nn.Module, arch: ArchSpec, spec: InductionSpec, pruner: str, swap_rounds: int = 0
) -> StatsRecorder:
    """The ``StatsRecorder`` whose statistics ``induce_layer(dense=...)`` takes: over the sequences
    induction reads, with H where the pruner needs it."""
    want_H = wants_hessian(pruner, swap_rounds)
    return StatsRecorder(layer, plan_layer(layer, arch), want_H=want_H, sequences=spec.samples_for(pruner))


def _check_recorded(stats: dict[str, GroupStats], minibatches: Sequence[Minibatch], *, want_H: bool) -> None:
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


def wants_hessian(pruner: str, swap_rounds: int) -> bool:
    """Whether induction's statistics need the inputs' Gram matrix H: SparseGPT's scores and
    update read it, and so do Wanda's swaps."""
    return pruner == "sparsegpt" or (pruner == "wanda" and swap_rounds > 0)


class StatsRecorder:
    """Forward hooks that gather the input statistics of a layer's four groups (``GroupStats``)
    from forwards run through the module (its own or ``functional_call``'s), over the first
    ``sequences`` sequences they see (all where 0 or less). ``seconds``: the time spent in
    the hooks, so a caller whose forward they ride on can charge them to induction (on a GPU,
    the time to launch their kernels, as the rest of the walk's timings). Hooks are removed on
    exit, even where the forward raises. The sums do not depend on how the sequences are batched;
    the median sample does once a forward holds more than ``_MEDIAN_ROWS`` tokens (it strides
    through each forward's tokens), which only ``init: median`` reads."""

    def __init__(self, layer: nn.Module, plan: LayerPlan, *, want_H: bool, sequences: int = 0) -> None:
        self.layer, self.plan, self.want_H, self.sequences = layer, plan, want_H, sequences
        self.stats: dict[str, GroupStats] = {}
        self.seconds = 0.0
        self._seen: dict[str, int] = {}
        self._batch = 0  # sequences in the forward under way (set by the layer's own pre-hook)
        self._handles: list[Any] = []

    def __enter__(self) -> StatsRecorder:
        a = self.plan.arch
        leaders = {"attn": a.q, "o": a.o, "mlp": a.mlp_in[0], "down": a.mlp_out}
        self._handles = [self.layer.register_forward_pre_hook(self._on_layer, with_kwargs=True)]
        try:
            for group, path in leaders.items():
                hook = self._hook_for(group)
                self._handles.append(self.layer.get_submodule(path).register_forward_pre_hook(hook))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _on_layer(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self._batch = int(hidden.shape[0])

    def _hook_for(self, group: str):
        @exact  # as the walker's own hooks: nothing in them computes under the forward's autocast
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            started = time.perf_counter()
            seen = self._seen.get(group, 0)
            take = self._batch if self.sequences <= 0 else min(self._batch, self.sequences - seen)
            if take > 0:
                self._seen[group] = seen + take
                X = args[0].detach()
                # [b, ..., in] or [b * seq, in]: the first ``take`` sequences, as [tokens, in]
                X = X.reshape(self._batch, -1, X.shape[-1])[:take].reshape(-1, X.shape[-1]).to(torch.float32)
                self._add(group, X)
            self.seconds += time.perf_counter() - started

        return hook

    def _add(self, group: str, X: torch.Tensor) -> None:
        st = self.stats.get(group)
        if st is None:
            z = torch.zeros(X.shape[1], dtype=torch.float32, device=X.device)
            H = (
                torch.zeros(X.shape[1], X.shape[1], dtype=torch.float32, device=X.device)
                if self.want_H
                else None
            )
            st = self.stats[group] = GroupStats(0, z, z.clone(), z.clone(), H, X[:0].abs())
        st.n += X.shape[0]
        st.sum += X.sum(0)
        st.sq_sum += X.square().sum(0)
        st.abs_sum += X.abs().sum(0)
        if st.H is not None:
            st.H.addmm_(X.T, X)
        room = _MEDIAN_ROWS - st.sample.shape[0]
        if room > 0:
            st.sample = torch.cat([st.sample, X[:: max(1, X.shape[0] // room)][:room].abs()])


@torch.no_grad()
def _outputs(
    layer: nn.Module, params: dict[str, torch.Tensor], minibatches: list[Minibatch], device: torch.device
) -> list[torch.Tensor]:
    """The dense layer's float32 output on each minibatch, where that minibatch is stored."""
    return [_forward(layer, params, *mb.on(device)).to(mb.hidden.device) for mb in minibatches]


def _per_batch(pieces: list[torch.Tensor], batches: Sequence[Batch], size: int) -> list[torch.Tensor]:
    """``pieces`` cut by ``_minibatches(batches, size)`` put back together per batch, in each
    batch's dtype."""
    out, k = [], 0
    for batch in batches:
        count = -(-batch.hidden.shape[0] // size)
        out.append(torch.cat(pieces[k : k + count]).to(batch.hidden.dtype))
        k += count
    return out


# ------------------------------------------------------------------------------------------------
# Initialisation from calibration statistics


def init_transform(
    plan: LayerPlan, stats: dict[str, GroupStats], spec: InductionSpec, pruner: str, *, device: torch.device
) -> Transform:
    """Scales s_j = stat_j ** alpha (stat: mean |x_j|, median |x_j| or rms, per ``spec.init``),
    shifts d = per-channel mean (centring: the bias correction (W * ~M) d then removes the mean
    part of the pruning error); the q/k pair starts at 1."""
    T = Transform.identity(
        plan, device=device, shifts=spec.shifts, qk=spec.qk_scale, per_linear=spec.per_linear
    )
    kind, alpha = init_choice(spec, pruner)
    if kind != "one" and alpha != 0.0:
        logs = {g: alpha * _channel_stat(st, kind).clamp_min(1e-12).log() for g, st in stats.items()}
        T.attn_log_s.copy_(logs["attn"])
        T.mlp_log_s.copy_(logs["mlp"])
        # o's input channels are q-head channels; the scale is per kv channel: mean of the logs.
        T.o_log_s.copy_(logs["o"].reshape(plan.n_kv, plan.groups, plan.head_dim).mean(1))
        if T.down_log_s is not None:
            T.down_log_s.copy_(logs["down"])
    for d, group in ((T.attn_d, "attn"), (T.mlp_d, "mlp")):
        if d is not None:
            d.copy_(stats[group].sum / stats[group].n)
    if T.o_d is not None:
        mean_o = (
            stats["o"].sum / stats["o"].n
        )  # [n_heads * hd]: a kv channel's value seen through each q head
        T.o_d.copy_(mean_o.reshape(plan.n_kv, plan.groups, plan.head_dim).mean(1))
    return T


# Measured defaults (docs/induction.md, "Initialisation"): which statistic and exponent start the
# scales, per pruner, when spec.init is "auto".
AUTO_INIT: dict[str, tuple[str, float]] = {
    "magnitude": ("rms", 1.0),
    "wanda": ("one", 0.0),
    "sparsegpt": ("one", 0.0),
}


def init_choice(spec: InductionSpec, pruner: str) -> tuple[str, float]:
    kind = getattr(spec, "init", "auto")
    if kind == "auto":
        return AUTO_INIT[pruner]
    return kind, float(getattr(spec, "init_alpha", 1.0))


def _channel_stat(st: GroupStats, kind: str) -> torch.Tensor:
    if kind == "mean":
        return st.abs_sum / st.n
    if kind == "median":
        return st.sample.median(dim=0).values
    if kind == "rms":
        return (st.sq_sum / st.n).sqrt()
    raise ValueError(f"unknown init statistic {kind!r}")


def _identity_like(T: Transform) -> Transform:
    """All scales 1 and all shifts 0: folding it changes nothing, pruning after it is plain pruning."""
    out = T.clone()
    for t in out.tensors():
        t.zero_()
    return out


# ------------------------------------------------------------------------------------------------
# The trainer


class _Trainer:
    def __init__(
        self,
        layer: nn.Module,
        plan: LayerPlan,
        params: dict[str, torch.Tensor],
        stats: dict[str, GroupStats],
        target: LayerTarget,
        pruner: str,
        spec: InductionSpec,
        dampening: float,
        blocksize: int,
        device: torch.device,
        order: SweepOrder = "natural",
        swap_rounds: int = 0,
    ) -> None:
        self.layer, self.plan, self.params, self.stats = layer, plan, params, stats
        self.swap_rounds = swap_rounds
        self.device = device
        self.target, self.pruner, self.spec, self.dampening = target, pruner, spec, dampening
        self.blocksize = blocksize
        self.order = order
        self.tau = float(spec.temperature)
        # SparseGPT selects per block of columns (same share of each row in each block).
        self.segment = blocksize if pruner == "sparsegpt" and not target.is_nm else None
        self.linears = plan.arch.linears
        self._fixed_cols: dict[str, torch.Tensor | None] = {}
        self._chain: dict[str, torch.Tensor] = {}  # SparseGPT: the update chain A per input group
        self._L0: dict[tuple[str, str], torch.Tensor] = {}
        self._power: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sigma0: dict[str, float] = {}

    # -- scores and pruned parameters -------------------------------------------------------------

    def refresh(self, T: Transform) -> None:
        """Recompute the per-channel score factors that do not change within an epoch: SparseGPT's
        1/[Hinv]_jj of the shifted H (a Cholesky per group; only the shifts change it)."""
        if self.pruner != "sparsegpt":
            return
        shifts = input_shifts(self.plan, T)
        if self._fixed_cols and all(d is None for d in shifts.values()):
            return  # without shifts H never changes
        for group, st in self.stats.items():
            H = st.centred_H(shifts[group]) * (2.0 / st.n)
            f = inverse_hessian_factor(H, dampening=self.dampening)
            self._fixed_cols[group] = 1.0 / f.Hinv.diagonal()  # [in]
            self._chain[group] = obs_chain(f.Hinv)  # [in, in]
        self._L0.clear()

    def base_col(self, group: str, d: torch.Tensor | None) -> torch.Tensor | None:
        """[in] the pruner's per-channel factor of its score in |w| units, or None (magnitude)."""
        if self.pruner == "magnitude":
            return None
        if self.pruner == "wanda":
            return self.stats[group].centred_sq(d).sqrt()  # ||X_j - d_j||
        return self._fixed_cols[group]

    def _log_scores(self, path: str, group: str, d: torch.Tensor | None) -> torch.Tensor:
        """[out, in] log of the pruner's score before the scale; cached unless a shift moves it."""
        if d is not None and self.pruner == "wanda":
            return log_base_scores(self.params[f"{path}.weight"], self.base_col(group, d))
        key = (path, self.pruner)
        if key not in self._L0:
            self._L0[key] = log_base_scores(self.params[f"{path}.weight"], self.base_col(group, d))
        return self._L0[key]

    def pruned_params(
        self, T: Transform, *, mode: str | None = None, swaps: bool = False
    ) -> dict[str, torch.Tensor]:
        """The pruned block's linears in original coordinates: W_eff = W * M (magnitude, Wanda) or
        SparseGPT's compensated weights for mask M, and b + (W - W_eff) d where a shift exists.
        ``swaps`` (hard masks, no gradient): Wanda's masks refined as the pruner will refine them;
        its objective is the same in original and folded coordinates, so only the mask it starts
        from carries the transform."""
        c, d = importance(self.plan, T), input_shifts(self.plan, T)
        out: dict[str, torch.Tensor] = {}
        for path in self.linears:
            group = self.plan.group_of(path)
            W = self.params[f"{path}.weight"]  # [out, in]
            L = self._log_scores(path, group, d[group]) + c[path].log()  # [out, in]
            M = keep_mask(L, self.target, mode=mode or self.spec.mask, tau=self.tau, segment=self.segment)
            if self.pruner == "sparsegpt":  # the compensating update, differentiable in M
                W_eff = sparsegpt_weights(W, M, self._chain[group], SPARSEGPT_HOPS)
            elif swaps and self.swap_rounds > 0:
                H = self.stats[group].centred_H(d[group])  # (detaches the shift itself)
                keep = swap_refine(W.detach(), M.detach() > 0.5, H, self.target, self.swap_rounds).keep
                W_eff = W * keep
            else:
                W_eff = W * M
            out[f"{path}.weight"] = W_eff
            shift = d[group]
            if shift is not None:
                out[f"{path}.bias"] = self.params[f"{path}.bias"] + (W - W_eff) @ shift  # [out]
        return out

    # -- the objective ----------------------------------------------------------------------------

    def loss(
        self,
        T: Transform,
        hidden: torch.Tensor,
        kwargs: dict[str, Any],
        Y: torch.Tensor,
        *,
        mode: str | None = None,
    ) -> torch.Tensor:
        """Relative MSE of the pruned block (mask ``mode``, default the spec's) against Y."""
        overrides = self.pruned_params(T, mode=mode)
        return _rel_mse(_forward(self.layer, {**self.params, **overrides}, hidden, kwargs), Y)

    def regulariser(self, T: Transform) -> torch.Tensor:
        """Mean over linears of (sigma_max(folded W) / sigma_max(W))^2: the spectral norm of each
        scaled weight relative to the original, one warm-started power iteration per step."""
        rows, cols = self._row_scales(T), input_scales(self.plan, T)
        terms = []
        for path in self.linears:
            W = self.params[f"{path}.weight"]
            r = rows.get(path)
            Wp = W * cols[self.plan.group_of(path)]  # [out, in]
            if r is not None:
                Wp = Wp * r.unsqueeze(1)
            if path not in self._sigma0:
                self._sigma0[path] = _spectral(W, self._power, path, _POWER_ITERS_INIT).item()
                _spectral(Wp.detach(), self._power, path, _POWER_ITERS_INIT)
            terms.append((_spectral(Wp, self._power, path, 1) / self._sigma0[path]).square())
        return torch.stack(terms).mean()

    def _row_scales(self, T: Transform) -> dict[str, torch.Tensor]:
        a, plan = self.plan.arch, self.plan
        rows: dict[str, torch.Tensor] = {a.v: 1.0 / normalised(T.o_log_s).reshape(-1)}
        if T.down_log_s is not None:
            rows[a.mlp_in[-1]] = 1.0 / normalised(T.down_log_s)
        pair = qk_row_scales(plan, T)
        if pair is not None:
            rows[a.q], rows[a.k] = pair
        return rows

    # -- training and the final choice ------------------------------------------------------------

    def fit(
        self,
        T0: Transform,
        minibatches: list[Minibatch],
        targets: list[torch.Tensor],
        generator: torch.Generator | None,
    ) -> tuple[Transform, list[float]]:
        T = T0.clone().requires_grad_(True)
        opt = torch.optim.Adam(T.tensors(), lr=self.spec.lr)
        losses: list[float] = []
        held_out = set(check_subset(len(minibatches)))
        train = [i for i in range(len(minibatches)) if i not in held_out] or sorted(held_out)
        for _epoch in range(self.spec.epochs):
            self.refresh(T)
            order = [train[k] for k in torch.randperm(len(train), generator=generator).tolist()]
            for i in order:
                hidden, kwargs = minibatches[i].on(self.device)
                opt.zero_grad(set_to_none=True)
                # the walk's precision (bfloat16 where native): the steps only steer the masks
                with layer_precision(self.layer, self.device):
                    mse = self.loss(T, hidden, kwargs, targets[i].to(self.device))
                objective = mse + self.spec.reg * self.regulariser(T) if self.spec.reg > 0 else mse
                objective.backward()
                opt.step()
                losses.append(float(mse.detach()))
        return T.requires_grad_(False), losses

    @torch.no_grad()
    def choose(
        self,
        candidates: dict[str, Transform],
        minibatches: list[Minibatch],
        targets: list[torch.Tensor],
    ) -> tuple[tuple[str, Transform], dict[str, float]]:
        """Loss of each candidate after REAL pruning on the held-out check subset. A candidate
        replaces plain pruning (identity) only if it beats it by more than ``_MARGIN`` (relative);
        among those the lowest wins. So induction never does worse than plain pruning there, and a
        gain within noise is not taken."""
        idx = check_subset(len(minibatches))
        losses: dict[str, float] = {}
        for name, T in candidates.items():
            same = next((k for k in losses if _equal(candidates[k], T)), None)
            if same is not None:  # e.g. init == identity: no need to run it twice
                losses[name] = losses[same]
                continue
            losses[name] = self.pruned_loss(T, [minibatches[i] for i in idx], [targets[i] for i in idx])
        bar = losses["identity"] * (1.0 - _MARGIN)
        better = [k for k in candidates if k != "identity" and losses[k] < bar]
        best = min(better, key=lambda k: (losses[k], -list(candidates).index(k))) if better else "identity"
        return (best, candidates[best]), losses

    def pruned_loss(
        self,
        T: Transform,
        minibatches: list[Minibatch],
        targets: list[torch.Tensor],
    ) -> float:
        """Relative MSE of the block pruned as the pruner will prune it after folding ``T``.

        Magnitude and Wanda: the hard mask of training is the pruner's mask (exact). SparseGPT:
        its mask and update depend on the sweep, so the folded weights are pruned by
        ``core.pruners.sparsegpt`` itself, with the folded Hessian S^-1 H S^-1 and ``col_weight``."""
        if self.pruner == "sparsegpt":
            params = self._sparsegpt_folded(T)
        else:
            self.refresh(T)
            # the hard mask (the "ste" forward); then Wanda's swaps, as the pruner will
            params = {**self.params, **self.pruned_params(T, mode="hard", swaps=True)}
        return held_out_loss(self.layer, params, minibatches, targets, self.device)

    def _sparsegpt_folded(self, T: Transform) -> dict[str, torch.Tensor]:
        """The layer's parameters with ``T`` folded and every linear pruned by SparseGPT."""
        P = {**self.params, **fold_params(self.plan, self.params, T)}
        s, d, c = input_scales(self.plan, T), input_shifts(self.plan, T), importance(self.plan, T)
        factors: dict[str, HinvFactor] = {}
        for path in self.linears:
            g = self.plan.group_of(path)
            st = self.stats[g]
            H = st.centred_H(d[g]) / torch.outer(s[g], s[g]) * (2.0 / st.n)  # [in, in] of (X - d) / s
            if g not in factors and self.order == "natural":
                factors[g] = inverse_hessian_factor(H, dampening=self.dampening)
            r = sparsegpt(
                P[f"{path}.weight"], H, self.target, blocksize=self.blocksize, dampening=self.dampening,
                col_weight=c[path], factor=factors.get(g), order=self.order,
            )  # fmt: skip
            P[f"{path}.weight"] = r.W
        return P


def _rel_mse(Y_hat: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    return (Y_hat - Y).square().sum() / Y.square().sum().clamp_min(1e-30)


def _spectral(
    W: torch.Tensor, state: dict[str, tuple[torch.Tensor, torch.Tensor]], key: str, iters: int
) -> torch.Tensor:
    """sigma_max(W) by power iteration; u, v carried over between calls (no gradient through them)."""
    with torch.no_grad():
        Wd = W.detach()
        if key in state:
            u, v = state[key]
        else:
            v = torch.ones(W.shape[1], dtype=W.dtype, device=W.device) / math.sqrt(W.shape[1])
            u = torch.nn.functional.normalize(Wd @ v, dim=0)
        for _ in range(iters):
            u = torch.nn.functional.normalize(Wd @ v, dim=0)
            v = torch.nn.functional.normalize(Wd.T @ u, dim=0)
        state[key] = (u, v)
    return u @ W @ v


def _equal(A: Transform, B: Transform) -> bool:
    return all(torch.equal(a, b) for a, b in zip(A.tensors(), B.tensors(), strict=True))


def first_sequences(minibatches: list[Minibatch], samples: int) -> list[Minibatch]:
    """The first ``samples`` sequences of ``minibatches`` (``InductionSpec.samples_for``; all
    where it is 0 or less), the last minibatch cut to fit."""
    if samples <= 0:
        return minibatches
    out: list[Minibatch] = []
    for mb in minibatches:
        if samples <= 0:
            break
        b = mb.hidden.shape[0]
        out.append(mb if b <= samples else Minibatch(mb.hidden[:samples], _cut(mb.kwargs, b, 0, samples)))
        samples -= b
    return out


def targets_for(targets: Sequence[torch.Tensor], minibatches: Sequence[Minibatch]) -> list[torch.Tensor]:
    """The targets of ``minibatches`` from those of the uncut minibatches they start (per
    minibatch, in order): ``first_sequences`` may have dropped the last ones and cut the last
    one kept, and its targets are cut alike."""
    return [Y[: mb.hidden.shape[0]] for Y, mb in zip(targets, minibatches, strict=False)]


def target_pieces(targets: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Per-batch targets cut as ``_minibatches`` cuts the batches."""
    return [Y[i : i + size] for Y in targets for i in range(0, Y.shape[0], size)]


def check_subset(n: int) -> list[int]:
    """Every 8th minibatch (at least one), held out of training: candidates are compared on about
    an eighth of the data, unseen by the optimiser, for a fraction of a forward pass each.
    (With a single minibatch it is also the training data: nothing else exists.)"""
    return list(range(0, n, 8))


@torch.no_grad()
def held_out_loss(
    layer: nn.Module,
    params: dict[str, torch.Tensor],
    minibatches: Sequence[Minibatch],
    targets: Sequence[torch.Tensor],
    device: torch.device,
) -> float:
    """Squared error of the layer run with ``params`` against ``targets``, summed over the
    minibatches and divided by the targets' summed ||Y||^2: one relative error for the whole
    subset, so a sequence weighs what its tokens weigh."""
    num = den = 0.0
    for mb, Y in zip(minibatches, targets, strict=True):
        Y = Y.to(device).float()
        Y_hat = _forward(layer, params, *mb.on(device)).float()
        num += float((Y_hat - Y).square().sum())
        den += float(Y.square().sum())
    return num / max(den, 1e-30)


def _mean(xs: Iterable[float]) -> float:
    values = list(xs)
    return sum(values) / max(len(values), 1)


# ------------------------------------------------------------------------------------------------
# Running the layer


def _forward(
    layer: nn.Module, params: dict[str, torch.Tensor], hidden: torch.Tensor, kwargs: dict[str, Any]
) -> torch.Tensor:
    """The layer's output with ``params`` in place of its own (nothing is written to the module)."""
    out = functional_call(layer, params, (hidden,), kwargs, strict=False)
    return out[0] if isinstance(out, tuple) else out


def _minibatches(batches: Sequence[Batch], size: int) -> Iterator[Minibatch]:
    """Cut each walker batch into pieces of at most ``size`` sequences. Tensors in kwargs whose
    first dimension is the batch size are cut alongside; broadcast ones are shared. A KV cache is
    dropped: it would grow with every forward and keep the autograd graph alive."""
    for batch in batches:
        kwargs = {k: v for k, v in batch.kwargs.items() if k not in _CACHE_KWARGS}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        b = batch.hidden.shape[0]
        for i in range(0, b, size):
            j = min(i + size, b)
            if (i, j) == (0, b):
                yield Minibatch(batch.hidden, kwargs)
            else:
                yield Minibatch(batch.hidden[i:j], _cut(kwargs, b, i, j))


def _cut(obj: Any, b: int, i: int, j: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[i:j] if obj.dim() > 0 and obj.shape[0] == b else obj
    if isinstance(obj, dict):
        return {k: _cut(v, b, i, j) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cut(v, b, i, j) for v in obj)
    return obj


def _move(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor on ``device``; floating tensors in float32."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=torch.float32 if obj.is_floating_point() else obj.dtype)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(v, device) for v in obj)
    return obj


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
