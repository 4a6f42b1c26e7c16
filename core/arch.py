"""The one architecture registry: where each model family keeps its decoder layers.

Adding a family is one ``ArchSpec`` entry plus its tiny model in the parametrized tests. Every
other part of the engine (walker, pruning, induction, evaluation) reads module paths from here
and nowhere else. A family differs from the LLaMA layout only by what its entry says: where the
norms sit (Gemma's pre/post norms), how its norm weights scale ((1 + w) in Gemma), whether q and
k pass through a per-head norm after their projection (Qwen3, Gemma 3), and which checkpoint
linears hold several of the engine's linears as row blocks (Phi-3's qkv_proj, gate_up_proj;
``arch_for`` splits those in place, see ``SplitLinear``). docs/architectures.md has the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from spruce.core.errors import UnsupportedArchitecture


@dataclass(frozen=True)
class Fused:
    """One linear of the checkpoint (``path``, relative to the layer) whose output rows are the
    outputs of several of the engine's linears, in order: ``parts`` names them and ``sizes`` gives
    their row counts from the (text) config."""

    path: str
    parts: tuple[str, ...]
    sizes: Callable[[Any], tuple[int, ...]]


@dataclass(frozen=True)
class ArchSpec:
    """Dotted module paths for one family; paths inside a layer are relative to the layer."""

    name: str
    layers: str  # ModuleList of decoder layers, relative to the CausalLM
    base: str  # the base model (embeddings -> layers -> final norm), relative to the CausalLM
    attn_norm: str
    mlp_norm: str
    q: str
    k: str
    v: str
    o: str
    mlp_in: tuple[str, ...]  # linears reading the MLP norm's output (gate/up, or fc1)
    mlp_out: str  # the linear reading the MLP's hidden activation (down, or fc2)
    rotary: bool  # q/k pass through rotary embeddings (pairs (i, i + head_dim/2) rotate together)
    gated: bool  # MLP is act(gate) * up, so `up`'s output rows can absorb down's input scales
    # After the last decoder layer, before the LM head (model.get_output_embeddings()), relative to
    # the CausalLM; "" or a None attribute means absent (OPT's project_out is None for most sizes).
    final_norm: str = ""
    final_proj: str = ""
    attn: str = "self_attn"  # the attention module (head_dim, config), relative to the layer
    # The norms scale by (norm_offset + w): 1.0 for Gemma's RMSNorm, whose weights are stored
    # centred on 0. A fold keeps the form: (offset + w) / s = offset + w'.
    norm_offset: float = 0.0
    # Per-head norms of q and k after their projections (Qwen3, Gemma 3), relative to the layer.
    qk_norm: tuple[str, str] | None = None
    # Norms on the attention's and the MLP's outputs before the residual add (Gemma 2 / 3): they
    # undo any scale of o's or down's output rows, so no transform may live there.
    post_norms: tuple[str, ...] = ()
    fused: tuple[Fused, ...] = ()  # split by ``arch_for`` into the linears named above

    @property
    def linears(self) -> tuple[str, ...]:
        """Every prunable linear of a layer, in forward order."""
        return (self.q, self.k, self.v, self.o, *self.mlp_in, self.mlp_out)


_LLAMA = ArchSpec(
    name="llama",
    layers="model.layers",
    base="model",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    rotary=True,
    gated=True,
    final_norm="model.norm",
)

_OPT = ArchSpec(
    name="opt",
    layers="model.decoder.layers",
    base="model.decoder",
    attn_norm="self_attn_layer_norm",
    mlp_norm="final_layer_norm",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    mlp_in=("fc1",),
    mlp_out="fc2",
    rotary=False,
    gated=False,
    final_norm="model.decoder.final_layer_norm",
    final_proj="model.decoder.project_out",
)

_QWEN3 = replace(_LLAMA, name="qwen3", qk_norm=("self_attn.q_norm", "self_attn.k_norm"))

_GEMMA2 = replace(
    _LLAMA,
    name="gemma2",
    mlp_norm="pre_feedforward_layernorm",
    post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    norm_offset=1.0,
)

_GEMMA3 = replace(_GEMMA2, name="gemma3", qk_norm=_QWEN3.qk_norm)

# Gemma 3 (4B and up) as a vision-language model: the text decoder inside the multimodal wrapper.
_GEMMA3_VLM = replace(
    _GEMMA3,
    layers="model.language_model.layers",
    base="model.language_model",
    final_norm="model.language_model.norm",
)


def _qkv_sizes(config: Any) -> tuple[int, int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    return config.num_attention_heads * head_dim, kv, kv


_PHI3 = replace(
    _LLAMA,
    name="phi3",
    q="self_attn.qkv_proj.q_proj",
    k="self_attn.qkv_proj.k_proj",
    v="self_attn.qkv_proj.v_proj",
    mlp_in=("mlp.gate_up_proj.gate_proj", "mlp.gate_up_proj.up_proj"),
    fused=(
        Fused("self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj"), _qkv_sizes),
        Fused("mlp.gate_up_proj", ("gate_proj", "up_proj"), lambda c: (c.intermediate_size,) * 2),
    ),
)

# model_type (config.model_type) -> family. Llama (1-3.x, any rope scaling: it only changes the
# rotary tables the base model computes), Mistral and Qwen2 share the LLaMA layout; Qwen2 adds
# q/k/v biases, which the shared code discovers from the modules themselves.
REGISTRY: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _QWEN3,
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA3,
    "gemma3": _GEMMA3_VLM,
    "phi3": _PHI3,
    "opt": _OPT,
}

# Mixture-of-experts families: their MLP is a router over experts, whose statistics would have to
# come from the tokens routed to each; not built. Any model type with "moe" in it counts too.
_MOE_TYPES = frozenset(
    {"mixtral", "dbrx", "jamba", "gpt_oss", "llama4", "llama4_text", "deepseek_v2", "deepseek_v3", "minimax"}
)
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _is_moe(model_type: str, config: Any) -> bool:
    if "moe" in model_type or model_type in _MOE_TYPES:
        return True
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return any(isinstance(getattr(text, k, None), int) and getattr(text, k) > 1 for k in _EXPERT_KEYS)


def check_supported(config: Any) -> ArchSpec:
    """The registry entry for a model ``config``, or ``UnsupportedArchitecture`` saying why not
    (mixture-of-experts named as such) and what is supported."""
    model_type = str(getattr(config, "model_type", None))
    spec = REGISTRY.get(model_type)
    if spec is None and _is_moe(model_type, config):
        raise UnsupportedArchitecture(
            f"model type {model_type!r} is a mixture-of-experts (MoE) model; MoE models are not "
            f"supported. Supported: {', '.join(sorted(REGISTRY))}",
            param="model",
        )
    if spec is None:
        raise UnsupportedArchitecture(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(REGISTRY))}",
            param="model",
        )
    if spec.name == "opt" and not getattr(config, "do_layer_norm_before", True):
        raise UnsupportedArchitecture(
            "OPT with post-layer-norm (opt-350m) is not supported; pre-norm OPT models are", param="model"
        )
    return spec


def arch_for(model: nn.Module) -> ArchSpec:
    """The registry entry for ``model``, or ``UnsupportedArchitecture`` naming what is supported.

    For a family with fused linears (Phi-3) the model's are split in place, once, into one
    ``nn.Linear`` per part (``SplitLinear``): its forward, ``state_dict`` and ``load_state_dict``
    keep the checkpoint's layout, so export and resume see the model as it was loaded."""
    spec = check_supported(getattr(model, "config", None))
    if spec.fused:
        _split_fused(model, spec)
    return spec


class SplitLinear(nn.Module):
    """A fused linear as one child ``nn.Linear`` per row block (``parts``), so that each is pruned,
    hooked, folded and permuted as the linear it is. The forward concatenates the children's
    outputs (the fused output, up to float rounding of the split products); ``state_dict`` and
    ``load_state_dict`` use the fused ``weight`` (and ``bias``) of the checkpoint."""

    def __init__(self, fused: nn.Linear, parts: tuple[str, ...], sizes: tuple[int, ...]) -> None:
        super().__init__()
        if sum(sizes) != fused.out_features:
            raise UnsupportedArchitecture(
                f"a fused linear of {fused.out_features} rows does not split into {sizes}", param="model"
            )
        self.parts, self.sizes = parts, sizes
        self.in_features, self.out_features = fused.in_features, fused.out_features
        biases = fused.bias.split(sizes) if fused.bias is not None else (None,) * len(sizes)
        for name, W, b in zip(parts, fused.weight.split(sizes), biases, strict=True):
            lin = nn.Linear(fused.in_features, W.shape[0], bias=b is not None, device="meta")
            lin.weight = nn.Parameter(W.detach().clone(), requires_grad=fused.weight.requires_grad)
            if b is not None:
                lin.bias = nn.Parameter(b.detach().clone(), requires_grad=fused.weight.requires_grad)
            self.add_module(name, lin)
        self.register_state_dict_post_hook(_fuse_state)
        self.register_load_state_dict_pre_hook(_split_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.get_submodule(name)(x) for name in self.parts], dim=-1)


def _fuse_state(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    assert isinstance(module, SplitLinear)
    for param in ("weight", "bias"):
        keys = [f"{prefix}{name}.{param}" for name in module.parts]
        if all(k in state for k in keys):
            state[f"{prefix}{param}"] = torch.cat([state.pop(k) for k in keys], dim=0)


def _split_state(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    assert isinstance(module, SplitLinear)
    for param in ("weight", "bias"):
        fused = state.pop(f"{prefix}{param}", None)
        if fused is not None:
            for name, block in zip(module.parts, fused.split(module.sizes), strict=True):
                state[f"{prefix}{name}.{param}"] = block


def _split_fused(model: nn.Module, spec: ArchSpec) -> None:
    try:
        layers = decoder_layers(model, spec)
    except AttributeError:  # a config carrier without weights (core.models checks before loading)
        return
    config = model.config.get_text_config()  # type: ignore[union-attr, operator]
    for layer in layers:
        for fused in spec.fused:
            module = layer.get_submodule(fused.path)
            if isinstance(module, SplitLinear):
                continue  # split by an earlier call
            assert isinstance(module, nn.Linear), f"{fused.path} is {type(module).__name__}, expected Linear"
            parent, _, name = fused.path.rpartition(".")
            setattr(layer.get_submodule(parent), name, SplitLinear(module, fused.parts, fused.sizes(config)))


def stored_linear(path: str, arch: ArchSpec) -> str:
    """The checkpoint module that holds the linear at ``path`` (the fused one for a split part)."""
    for fused in arch.fused:
        if path.startswith(f"{fused.path}."):
            return fused.path
    return path


def rotary_dim(config: Any, head_dim: int) -> int:
    """How many of a head's dims rotate (pairs (i, i + r/2), i < r/2): all of them unless the
    config rotates only a part (``partial_rotary_factor``, e.g. Phi-4-mini's 0.75)."""
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    factor = factor or getattr(config, "partial_rotary_factor", None) or 1.0
    return int(head_dim * float(factor))


def logit_softcap(model: nn.Module) -> float | None:
    """The final logit soft-capping of ``model`` (Gemma 2: logits = c * tanh(logits / c)), or None."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    return float(cap) if cap else None


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def decoder_layers(model: nn.Module, arch: ArchSpec) -> nn.ModuleList:
    layers = model.get_submodule(arch.layers)
    assert isinstance(layers, nn.ModuleList)
    return layers


def layer_linears(layer: nn.Module, arch: ArchSpec) -> dict[str, nn.Linear]:
    """The prunable linears of one decoder layer, by their path inside the layer."""
    out: dict[str, nn.Linear] = {}
    for path in arch.linears:
        module = layer.get_submodule(path)
        assert isinstance(module, nn.Linear), f"{path} is {type(module).__name__}, expected Linear"
        out[path] = module
    return out


def mlp_activation(layer: nn.Module, arch: ArchSpec) -> nn.Module | None:
    """The MLP's elementwise activation module (act_fn on Llama's MLP, activation_fn on OPT's layer),
    looked up on the parent of ``mlp_out`` and on the layer; None if there is none."""
    parent = arch.mlp_out.rsplit(".", 1)[0] if "." in arch.mlp_out else ""
    for owner in (layer.get_submodule(parent), layer) if parent else (layer,):
        for name in ("activation_fn", "act_fn", "act"):
            act = getattr(owner, name, None)
            if isinstance(act, nn.Module):
                return act
    return None


def input_groups(arch: ArchSpec) -> tuple[tuple[str, ...], ...]:
    """Linears that read the same input tensor: their statistics (norms, H) are computed once."""
    return ((arch.q, arch.k, arch.v), (arch.o,), arch.mlp_in, (arch.mlp_out,))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weight_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
