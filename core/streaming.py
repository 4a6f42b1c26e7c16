"""Models larger than memory: decoder layers read from the checkpoint's shards when the walk reaches
them, written to the output shards when it leaves them, and freed in between.

    model = empty_model(folder, reader, dtype="auto")   # weights on meta, except embeddings/norm/head
    layers = LayerStream(model, arch, reader, writer)   # walker.walk(..., layers=layers)
    walk(model, arch, batches, device=dev, visit=prune, layers=layers)
    writer.finish(model, arch, tokenizer)               # the non-layer tensors, the index, config

The model is built on the meta device (accelerate's ``init_empty_weights``, buffers such as rotary
tables stay real); only the modules outside the decoder layers are loaded whole. ``LayerStream``
gives the walker each layer's tensors (``safe_open`` reads one tensor at a time, so a shard is
never read whole), and after the layer ran, writes it to its own output shard and turns it back
into meta tensors. Peak memory is therefore the non-layer modules, one layer and the activations,
whatever the number of layers (benchmarks/streaming_memory.py measures the slope).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from spruce.core.arch import ArchSpec, arch_for, check_supported, decoder_layers
from spruce.core.errors import ModelNotFound
from spruce.core.heap import give_back_memory

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"


class ShardReader:
    """The tensors of a safetensors checkpoint folder (one file or an indexed set of shards), by name."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.folder / file for name, file in weight_map.items()}
        else:
            self.files = {}
            for file in sorted(self.folder.glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as f:
                    self.files.update(dict.fromkeys(f.keys(), file))
        if not self.files:
            raise ModelNotFound(f"{self.folder} holds no safetensors weights")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> Tensor:
        with safe_open(str(self.files[name]), framework="pt") as f:
            return f.get_tensor(name)

    def dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's first floating tensor."""
        for name in self.files:
            with safe_open(str(self.files[name]), framework="pt") as f:
                tensor = f.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(tensor.get_dtype())
            if dtype is not None:
                return dtype
        return torch.float32

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in set(self.files.values()))


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def empty_model(folder: Path, reader: ShardReader, *, dtype: torch.dtype | str = "auto") -> PreTrainedModel:
    """The folder's model with its decoder layers on the meta device and every other tensor
    (embeddings, final norm, LM head) loaded, in ``dtype`` ("auto": the checkpoint's)."""
    from accelerate import init_empty_weights

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    check_supported(config)
    if dtype == "auto":
        dtype = reader.dtype()
    assert isinstance(dtype, torch.dtype)
    with init_empty_weights():  # parameters on meta; buffers (rotary tables) computed for real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    arch = arch_for(model)  # splits fused linears (Phi-3) before any name is read
    prefix = f"{arch.layers}."
    state = {
        name: _read(reader, name, dtype)
        for name in model.state_dict()
        if not name.startswith(prefix) and name in reader
    }
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # a tied LM head is not in the checkpoint: it shares the embedding
    left = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(prefix)]
    if left:
        raise ModelNotFound(f"{folder}: the checkpoint lacks {left[:3]}")
    return model


def _read(reader: ShardReader, name: str, dtype: torch.dtype) -> Tensor:
    tensor = reader.get(name)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


class ShardWriter:
    """Writes a Hugging Face folder one decoder layer at a time: a shard per layer, then the rest."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.weight_map: dict[str, str] = {}

    def write(self, name: str, tensors: dict[str, Tensor]) -> None:
        """One shard ``name`` holding ``tensors`` (full names), on the CPU."""
        file = f"{name}.safetensors"
        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(data, str(self.out_dir / file), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(data, file))

    def finish(self, model: PreTrainedModel, arch: ArchSpec, tokenizer: Any | None = None) -> int:
        """The non-layer tensors (a tied LM head once), the shard index, config and tokenizer;
        returns the folder's size in bytes."""
        from spruce.core.export import folder_size

        prefix = f"{arch.layers}."
        rest = {n: t for n, t in model.state_dict().items() if not n.startswith(prefix)}
        if getattr(model.config.get_text_config(), "tie_word_embeddings", False):
            for name in _tied_names(model):
                rest.pop(name, None)
        self.write("model-rest", rest)
        total = sum(f.stat().st_size for f in self.out_dir.glob("*.safetensors"))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        model.config.save_pretrained(self.out_dir)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(self.out_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.out_dir)
        return folder_size(self.out_dir)


def _tied_names(model: PreTrainedModel) -> list[str]:
    """State-dict names of the tensors that alias another one (the tied LM head)."""
    out = model.get_output_embeddings()
    return [f"{name}.weight" for name, module in model.named_modules() if module is out and out is not None]


class LayerStream:
    """What the walker calls around each decoder layer in streaming mode: ``load`` reads it from
    the checkpoint (or takes given weights, a resumed layer's), ``release`` writes it to the output
    shards (when there is a writer) and turns it back into meta tensors."""

    def __init__(
        self, model: nn.Module, arch: ArchSpec, reader: ShardReader, writer: ShardWriter | None = None
    ) -> None:
        self.model, self.arch, self.reader, self.writer = model, arch, reader, writer
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())

    def load(self, i: int, layer: nn.Module, weights: dict[str, Tensor] | None = None) -> None:
        prefix = f"{self.arch.layers}.{i}."
        if weights is None:
            weights = {name: _read(self.reader, prefix + name, self.dtype) for name in layer.state_dict()}
        layer.load_state_dict(weights, strict=True, assign=True)

    def release(self, i: int, layer: nn.Module) -> None:
        if self.writer is not None:
            prefix = f"{self.arch.layers}.{i}."
            self.writer.write(f"model-layer-{i:05d}", {prefix + k: v for k, v in layer.state_dict().items()})
        to_meta(layer)
        give_back_memory()


def to_meta(module: nn.Module) -> None:
    """Free ``module``'s parameters: each becomes a meta tensor of the same shape and dtype."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and not param.is_meta:
                sub._parameters[name] = nn.Parameter(
                    torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
                )


def layer_bytes(model: nn.Module, arch: ArchSpec) -> int:
    """Bytes of one decoder layer's parameters (meta or not)."""
    layer = decoder_layers(model, arch)[0]
    return sum(p.numel() * p.element_size() for p in layer.parameters())
