"""The one architecture registry: where each model family keeps its decoder layers.

Adding a family is one ``ArchSpec`` entry plus one tiny-model test. Every other part of the
engine (walker, pruning, induction, evaluation) reads module paths from here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import UnsupportedArchitecture


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

# model_type (config.model_type) -> family. Llama, Mistral and Qwen2 share the LLaMA layout;
# Qwen2 adds q/k/v biases, which the shared code discovers from the modules themselves.
REGISTRY: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "opt": _OPT,
}


def arch_for(model: nn.Module) -> ArchSpec:
    """The registry entry for ``model``, or ``UnsupportedArchitecture`` naming what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    spec = REGISTRY.get(str(model_type))
    if spec is None:
        raise UnsupportedArchitecture(
            f"model type {model_type!r} is not supported; supported: {', '.join(sorted(REGISTRY))}",
            param="model",
        )
    if spec.name == "opt" and not getattr(model.config, "do_layer_norm_before", True):
        raise UnsupportedArchitecture(
            "OPT with post-layer-norm (opt-350m) is not supported; pre-norm OPT models are", param="model"
        )
    return spec


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
