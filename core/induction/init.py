"""Induction's starting transform from the calibration statistics (``init_transform``)."""

from __future__ import annotations

import torch

from spruce.core.induction.transform import LayerPlan, Transform
from spruce.core.spec import InductionSpec, traits
from spruce.core.stats import InputStats


def init_transform(
    plan: LayerPlan, stats: dict[str, InputStats], spec: InductionSpec, pruner: str, *, device: torch.device
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
            d.copy_(stats[group].moments()[0] / stats[group].n)
    if T.o_d is not None:
        # [n_heads * hd]: a kv channel's value seen through each q head
        mean_o = stats["o"].moments()[0] / stats["o"].n
        T.o_d.copy_(mean_o.reshape(plan.n_kv, plan.groups, plan.head_dim).mean(1))
    return T


def init_choice(spec: InductionSpec, pruner: str) -> tuple[str, float]:
    kind = getattr(spec, "init", "auto")
    if kind == "auto":  # the measured default per pruner (docs/induction.md, "Initialisation")
        return traits(pruner).induction_init
    return kind, float(getattr(spec, "init_alpha", 1.0))


def _channel_stat(st: InputStats, kind: str) -> torch.Tensor:
    if kind == "mean":
        return st.moments()[1] / st.n
    if kind == "median":
        return st.moments()[2].median(dim=0).values
    if kind == "rms":
        return (st.sq_sum / st.n).sqrt()
    raise ValueError(f"unknown init statistic {kind!r}")


def identity_like(T: Transform) -> Transform:
    """All scales 1 and all shifts 0: folding it changes nothing, pruning after it is plain pruning."""
    out = T.clone()
    for t in out.tensors():
        t.zero_()
    return out
