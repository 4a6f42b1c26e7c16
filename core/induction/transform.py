"""The exactly foldable transforms of one decoder layer and how they fold into its weights.

Sparsity Induction (arXiv 2602.21652) moves every prunable linear's input X to
X' = (X - d) / s with W' = W diag(s) and b' = b + W d, and pairs the query and key rows
(q * a, k / a). Each transform here is chosen so that a neighbouring module absorbs its inverse
exactly, so the folded layer computes the same dense function with no extra parameter:

=============  =============================  ==============================================
transform      absorbed by                    notes
=============  =============================  ==============================================
attn scale s   attention norm weight (g / s)  shared by q, k, v (they read one tensor); a norm
                                              scaling by (1 + w) (Gemma) takes w' = (1 + w)/s - 1
attn shift d   norm bias (beta - d) / s,      only with a LayerNorm bias and q/k/v biases (OPT)
               q/k/v biases b + W d
qk pair a      q rows * a, k rows / a          tied per kv head; rotary pairs (i, i + r/2) tied
                                              (r: the rotating dims); off with q/k norms
o scale t      v output rows / t              per kv channel, repeated over the q heads that
                                              share the kv head (GQA), so o's input scale is tied
o shift d      v bias - d, o bias + W_o d     only with v and o biases (OPT): softmax rows sum to 1
mlp scale s    MLP norm weight                shared by gate/up (or fc1)
mlp shift d    norm bias, gate/up/fc1 biases  only with a LayerNorm bias and linear biases (OPT)
down scale t   up rows / t (gated MLP), or    ReLU is positively homogeneous: relu(x/t) = relu(x)/t
               fc1 rows / t before a ReLU
=============  =============================  ==============================================

Scales live in log space, normalised to geometric mean 1 per vector: an overall factor of a scale
vector changes neither the folded function nor any per-row mask, so it is fixed rather than learned.

Where q and k pass through a per-head norm after their projections (Qwen3, Gemma 3), the norm
undoes any scale of q's or k's rows; the pair would fold exactly into the norms' weights instead
(q_norm * a, k_norm / a per head_dim channel, shared by every head), but there it changes no
prunable weight, so it cannot change a mask and is switched off. Norms on o's and down's outputs
(Gemma's post-attention / post-feedforward norms) likewise undo output-row scales of o and down;
no transform here scales those rows, and o's and down's input scales fold into v's and up's rows
as everywhere. Per family, docs/architectures.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from spruce.core.arch import ArchSpec, mlp_activation, rotary_dim

LINEAR_KINDS = ("attn", "o", "mlp", "down")  # the four input groups: q/k/v, o, gate/up (fc1), down (fc2)


@dataclass(frozen=True)
class LayerPlan:
    """Which transforms exist in one decoder layer, and the shapes they need."""

    arch: ArchSpec
    hidden: int
    inter: int  # input size of down / fc2
    n_heads: int
    n_kv: int
    head_dim: int
    attn_shift: bool  # a shift on the q/k/v input folds into an existing bias
    o_shift: bool
    mlp_shift: bool
    down_scale: bool  # the MLP's hidden activation can absorb a per-channel scale
    norm_bias: bool  # the norms have an additive bias (LayerNorm); shifts fold through it
    qk_pair: bool  # a q/k row pair folds and can change a mask (no q/k norm after the projections)
    rotary_dim: int  # dims of a head that rotate (pairs (i, i + rotary_dim/2)); 0 without rotary

    @property
    def groups(self) -> int:
        """q heads per kv head (GQA); 1 for multi-head attention."""
        return self.n_heads // self.n_kv

    @property
    def qk_width(self) -> int:
        """Free q/k pair scales per kv head: rotary ties dims i and i + rotary_dim/2."""
        return self.head_dim - self.rotary_dim // 2

    def switched_off(self) -> dict[str, str]:
        """The transforms this layer's family cannot use, and why (in induction's per-layer info)."""
        off: dict[str, str] = {}
        if not self.qk_pair:
            off["qk_pair"] = (
                "q/k norms after the projections undo q/k row scales; folded into the norms' weights "
                "the pair changes no prunable weight"
            )
        if not self.down_scale:
            off["down_scale"] = "the MLP's activation is neither gated nor a ReLU"
        if not (self.attn_shift or self.o_shift or self.mlp_shift):
            off["shifts"] = "no norm and linear biases to absorb them"
        if self.arch.post_norms:
            off["o/down output scales"] = "norms on o's and down's outputs undo them"
        return off

    def in_features(self, path: str) -> int:
        return {
            "attn": self.hidden,
            "o": self.n_heads * self.head_dim,
            "mlp": self.hidden,
            "down": self.inter,
        }[self.group_of(path)]

    def group_of(self, path: str) -> str:
        """The input group ("attn", "o", "mlp", "down") of the linear at ``path``."""
        a = self.arch
        if path in (a.q, a.k, a.v):
            return "attn"
        if path == a.o:
            return "o"
        if path in a.mlp_in:
            return "mlp"
        if path == a.mlp_out:
            return "down"
        raise KeyError(path)


def plan_layer(layer: nn.Module, arch: ArchSpec) -> LayerPlan:
    """Inspect ``layer`` (its modules, not its config) to see which transforms fold exactly."""
    q, k, v, o = (_linear(layer, p) for p in (arch.q, arch.k, arch.v, arch.o))
    mlp_in = [_linear(layer, p) for p in arch.mlp_in]
    down = _linear(layer, arch.mlp_out)
    attn = layer.get_submodule(arch.attn)
    head_dim = int(getattr(attn, "head_dim", 0)) or q.out_features // int(getattr(attn, "num_heads"))  # noqa: B009
    n_heads, n_kv = q.out_features // head_dim, k.out_features // head_dim
    if n_heads * head_dim != q.out_features or n_kv * head_dim != k.out_features or n_heads % n_kv:
        raise ValueError(f"{arch.name}: cannot infer heads from q {q.out_features}, k {k.out_features}")
    attn_norm, mlp_norm = layer.get_submodule(arch.attn_norm), layer.get_submodule(arch.mlp_norm)
    norm_bias = _has_bias(attn_norm) and _has_bias(mlp_norm)
    config = getattr(attn, "config", None)
    rotary = (rotary_dim(config, head_dim) if config is not None else head_dim) if arch.rotary else 0
    return LayerPlan(
        arch=arch,
        hidden=q.in_features,
        inter=down.in_features,
        n_heads=n_heads,
        n_kv=n_kv,
        head_dim=head_dim,
        attn_shift=_has_bias(attn_norm) and all(_has_bias(m) for m in (q, k, v)),
        o_shift=_has_bias(v) and _has_bias(o),
        mlp_shift=_has_bias(mlp_norm) and all(_has_bias(m) for m in mlp_in),
        down_scale=arch.gated or _relu_before(layer, arch),
        norm_bias=norm_bias,
        qk_pair=arch.qk_norm is None,
        rotary_dim=rotary,
    )


def _linear(layer: nn.Module, path: str) -> nn.Linear:
    module = layer.get_submodule(path)
    assert isinstance(module, nn.Linear), f"{path} is {type(module).__name__}, expected Linear"
    return module


def _has_bias(module: nn.Module) -> bool:
    return isinstance(getattr(module, "bias", None), torch.Tensor)


def _relu_before(layer: nn.Module, arch: ArchSpec) -> bool:
    """True if the non-gated MLP's activation is a ReLU (positively homogeneous, so it commutes
    with a positive per-channel scale). Looked up on the layer and on mlp_out's parent."""
    return isinstance(mlp_activation(layer, arch), nn.ReLU)


@dataclass
class Transform:
    """Raw learnable parameters of one layer's transform (log scales, shifts); None = absent."""

    attn_log_s: torch.Tensor  # [hidden]
    mlp_log_s: torch.Tensor  # [hidden]
    o_log_s: torch.Tensor  # [n_kv, head_dim]
    down_log_s: torch.Tensor | None  # [inter]
    qk_log_a: torch.Tensor | None  # [n_kv, qk_width]
    attn_d: torch.Tensor | None  # [hidden]
    o_d: torch.Tensor | None  # [n_kv, head_dim]
    mlp_d: torch.Tensor | None  # [hidden]
    # Optional per-linear log importance on top of the group scale, in arch.linears order. It is
    # not folded (q/k/v share one norm): the pruner receives it through col_weight.
    linear_log_c: tuple[torch.Tensor, ...] | None = None  # each [in]

    @classmethod
    def identity(
        cls, plan: LayerPlan, *, device: torch.device | str, shifts: bool, qk: bool, per_linear: bool = False
    ) -> Transform:
        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float32, device=device)

        return cls(
            attn_log_s=z(plan.hidden),
            mlp_log_s=z(plan.hidden),
            o_log_s=z(plan.n_kv, plan.head_dim),
            down_log_s=z(plan.inter) if plan.down_scale else None,
            qk_log_a=z(plan.n_kv, plan.qk_width) if qk and plan.qk_pair else None,
            attn_d=z(plan.hidden) if shifts and plan.attn_shift else None,
            o_d=z(plan.n_kv, plan.head_dim) if shifts and plan.o_shift else None,
            mlp_d=z(plan.hidden) if shifts and plan.mlp_shift else None,
            linear_log_c=tuple(z(plan.in_features(p)) for p in plan.arch.linears) if per_linear else None,
        )

    def tensors(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                out.extend(value)
            elif value is not None:
                out.append(value)
        return out

    def clone(self) -> Transform:
        values: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = tuple(t.detach().clone() for t in v) if isinstance(v, tuple) else _clone(v)
        return Transform(**values)

    def requires_grad_(self, flag: bool = True) -> Transform:
        for t in self.tensors():
            t.requires_grad_(flag)
        return self


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


def normalised(log_s: torch.Tensor) -> torch.Tensor:
    """exp(log_s) with geometric mean 1: the only part of a scale that can matter."""
    return torch.exp(log_s - log_s.mean())


def input_scales(plan: LayerPlan, T: Transform) -> dict[str, torch.Tensor]:
    """[in] input scale s of each group; o's is repeated from kv channels to q heads."""
    o = normalised(T.o_log_s).repeat_interleave(plan.groups, dim=0).reshape(-1)  # [n_heads * hd]
    out = {"attn": normalised(T.attn_log_s), "o": o, "mlp": normalised(T.mlp_log_s)}
    if T.down_log_s is not None:
        out["down"] = normalised(T.down_log_s)
    else:
        out["down"] = torch.ones(plan.inter, dtype=torch.float32, device=T.mlp_log_s.device)
    return out


def importance(plan: LayerPlan, T: Transform) -> dict[str, torch.Tensor]:
    """Per linear path, the [in] multiplier of its pruning score: its group's scale, times its
    own (normalised) importance when the transform has per-linear terms."""
    s = input_scales(plan, T)
    out = {path: s[plan.group_of(path)] for path in plan.arch.linears}
    if T.linear_log_c is not None:
        for path, c in zip(plan.arch.linears, T.linear_log_c, strict=True):
            out[path] = out[path] * normalised(c)
    return out


def input_shifts(plan: LayerPlan, T: Transform) -> dict[str, torch.Tensor | None]:
    """[in] input shift d of each group (None where no shift folds); o's repeated to q heads."""
    o = None if T.o_d is None else T.o_d.repeat_interleave(plan.groups, dim=0).reshape(-1)
    return {"attn": T.attn_d, "o": o, "mlp": T.mlp_d, "down": None}


def qk_row_scales(plan: LayerPlan, T: Transform) -> tuple[torch.Tensor, torch.Tensor] | None:
    """([q rows], [k rows]) of the query/key pair: q rows times a, k rows times 1/a."""
    if T.qk_log_a is None:
        return None
    a = normalised(T.qk_log_a)  # [n_kv, qk_width]
    half = plan.rotary_dim // 2  # rotary rotates dims i and i + r/2 together: same scale
    a = torch.cat([a[:, :half], a], dim=1)  # [n_kv, hd]: dims (0..r/2, r/2..r, r..hd)
    k_rows = 1.0 / a.reshape(-1)  # [n_kv * hd]
    q_rows = a.repeat_interleave(plan.groups, dim=0).reshape(-1)  # [n_heads * hd], kv head h // groups
    return q_rows, k_rows


def fold_params(plan: LayerPlan, params: Mapping[str, torch.Tensor], T: Transform) -> dict[str, torch.Tensor]:
    """The layer's parameters after folding ``T`` (pure: new tensors, float32, for changed names).

    ``params`` maps names relative to the layer (``"self_attn.q_proj.weight"``) to tensors, as
    ``layer.named_parameters()`` gives them. The result computes the same dense function.
    """
    a = plan.arch
    P = {k: v.detach().to(torch.float32) for k, v in params.items()}
    out: dict[str, torch.Tensor] = {}
    s, d = input_scales(plan, T), input_shifts(plan, T)
    for group, norm, linears in (("attn", a.attn_norm, (a.q, a.k, a.v)), ("mlp", a.mlp_norm, a.mlp_in)):
        # norm output / s, the norm's (offset + w) form kept: (offset + w) / s = offset + w'
        out[f"{norm}.weight"] = (P[f"{norm}.weight"] + a.norm_offset) / s[group] - a.norm_offset
        if f"{norm}.bias" in P:
            beta, shift = P[f"{norm}.bias"], d[group]
            out[f"{norm}.bias"] = (beta - shift) / s[group] if shift is not None else beta / s[group]
        for path in linears:
            _fold_input(P, out, path, s[group], d[group])
    _fold_input(P, out, a.o, s["o"], d["o"])
    t_o = normalised(T.o_log_s).reshape(-1)  # [n_kv * hd]: v output rows / t (minus the shift first)
    d_v = None if T.o_d is None else T.o_d.reshape(-1)
    _fold_rows(P, out, a.v, 1.0 / t_o, shift=d_v)
    if T.down_log_s is not None:
        _fold_input(P, out, a.mlp_out, s["down"], None)
        row_owner = a.mlp_in[-1]  # up (gated: act(gate) * up) or fc1 (ReLU)
        _fold_rows(P, out, row_owner, 1.0 / s["down"])
    pair = qk_row_scales(plan, T)
    if pair is not None:
        _fold_rows(P, out, a.q, pair[0])
        _fold_rows(P, out, a.k, pair[1])
    return out


def _fold_input(
    P: dict[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    path: str,
    s: torch.Tensor,
    d: torch.Tensor | None,
) -> None:
    """W' = W diag(s), b' = b + W d (with the original W), for a linear reading X' = (X - d) / s."""
    W = P[f"{path}.weight"]  # [out, in]
    if d is not None:
        out[f"{path}.bias"] = P[f"{path}.bias"] + W @ d  # [out]
    out[f"{path}.weight"] = W * s  # [out, in] * [in]


def _fold_rows(
    P: dict[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    path: str,
    r: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
) -> None:
    """Output rows (and bias) times r, after subtracting ``shift`` from the bias; composes with an
    earlier input fold of the same linear (rows and columns commute)."""
    W = out.get(f"{path}.weight", P[f"{path}.weight"])
    out[f"{path}.weight"] = W * r.unsqueeze(1)  # [out, in] * [out, 1]
    if f"{path}.bias" in P:
        b = out.get(f"{path}.bias", P[f"{path}.bias"])
        out[f"{path}.bias"] = (b - shift if shift is not None else b) * r


@torch.no_grad()
def fold_(layer: nn.Module, plan: LayerPlan, T: Transform) -> None:
    """Fold ``T`` into ``layer`` in place (each parameter keeps its dtype and device)."""
    named = dict(layer.named_parameters())
    for name, value in fold_params(plan, named, T).items():
        p = named[name]
        p.copy_(value.to(device=p.device, dtype=p.dtype))
