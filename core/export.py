"""Checkpoint export: a Hugging Face folder and a compact sparse artifact.

``save_hf`` writes the pruned model as a plain Hugging Face folder (config, tokenizer,
safetensors with the zeros in place); it loads anywhere ``from_pretrained`` does.

``save_compact`` writes the sparse-bitmask layout compressed-tensors' former ``BitmaskCompressor``
wrote (its bit packing, ``pack_bitmasks``, is the library's): each pruned decoder linear's
``<module>.weight`` becomes

    <module>.shape        int64 [2]        the dense shape
    <module>.compressed   dtype [nnz]      the non-zero values, row-major
    <module>.bitmask      uint8 [out, ceil(in / 8)]   one bit per weight, little-endian bit order
    <module>.row_offsets  int64 [out]      index in ``compressed`` where each row starts

and every other tensor (embeddings, norms, biases, LM head) is stored dense, in
``model.sparse.safetensors``. No maintained loader reads this format any more (compressed-tensors
dropped its sparse compressors after 0.14, transformers and vLLM their 2:4 paths), and current
transformers would load such a folder as a model with most weights random. So the folder is made
so that no loader mistakes it for a model: its ``config.json`` has ``model_type``
``spruce_compact`` (``from_pretrained`` refuses it by name) and carries the real model's config
under ``base_config``; ``load_compact`` / ``load_compact_model`` read it back exactly. The
Hugging Face folder (``hf/``) is the one to serve.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from compressed_tensors.config import BitmaskConfig, CompressionFormat
from compressed_tensors.utils import pack_bitmasks, unpack_bitmasks
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from spruce.core.arch import ArchSpec, decoder_layers, layer_linears, stored_linear
from spruce.core.errors import UserError

log = logging.getLogger(__name__)

COMPACT_TYPE = "spruce_compact"  # config.json's model_type: no transformers class has it
COMPACT_WEIGHTS = "model.sparse.safetensors"  # not model.safetensors, which loaders look for
PARAM_NAMES: tuple[str, ...] = ("shape", "compressed", "bitmask", "row_offsets")
_TIED_KEY = "spruce.tied"  # safetensors metadata: {alias name: stored name} for shared tensors


def save_hf(model: nn.Module, tokenizer: Any, out_dir: Path) -> int:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder; returns its size in bytes.

    Pruned weights are plain zeros inside dense safetensors, so the folder loads with
    ``AutoModelForCausalLM.from_pretrained`` (or vLLM) and computes the pruned model.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # type: ignore[operator]
    tokenizer.save_pretrained(out_dir)
    return folder_size(out_dir)


def save_compact(
    model: nn.Module, arch: ArchSpec, out_dir: Path, *, structure: str, tokenizer: Any | None = None
) -> int:
    """Write the compact sparse-bitmask artifact of ``model``; returns the folder size in bytes.

    Only the prunable linears of the decoder layers are bitmask-compressed, the rest is dense.
    ``structure`` ("unstructured", "2:4", ...) is recorded as the config's sparsity_structure;
    storage is the same for every structure (one bit per weight plus the kept values), so any
    N:M pattern round-trips exactly. With ``tokenizer`` the folder also holds its files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = target_modules(model, arch)
    state, tied = _dedup_state(model.state_dict())
    tensors: dict[str, torch.Tensor] = {}
    zeros = total = 0
    for name, W in state.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in targets:
            packed = bitmask_compress(W)
            zeros += W.numel() - packed["compressed"].numel()
            total += W.numel()
            tensors.update({f"{module}.{k}": v for k, v in packed.items()})
        else:
            tensors[name] = W.detach().to("cpu").contiguous()
    missing = targets - {n.removesuffix(".weight") for n in state}
    if missing:
        raise ValueError(f"target linears without a weight in the state dict: {sorted(missing)[:3]}")
    save_file(tensors, str(out_dir / COMPACT_WEIGHTS), metadata={"format": "pt", _TIED_KEY: json.dumps(tied)})

    config = BitmaskConfig(
        targets=sorted(targets),
        global_sparsity=zeros / total if total else 0.0,
        sparsity_structure=structure,
    )
    _write_config(model, out_dir, config)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return folder_size(out_dir)


def load_compact(folder: Path) -> dict[str, torch.Tensor]:
    """Decompress a ``save_compact`` folder to a dense state dict (the names of ``model.state_dict()``)."""
    folder = Path(folder)
    sparsity = read_sparsity_config(folder)
    if sparsity.get("format") != CompressionFormat.sparse_bitmask.value:
        raise UserError(f"{folder} is not a sparse-bitmask artifact (format {sparsity.get('format')!r})")
    with safe_open(str(folder / COMPACT_WEIGHTS), framework="pt") as f:
        names = list(f.keys())
        stored = {name: f.get_tensor(name) for name in names}
        tied: dict[str, str] = json.loads((f.metadata() or {}).get(_TIED_KEY, "{}"))
    modules = {n.removesuffix(".compressed") for n in names if n.endswith(".compressed")}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in stored.items():
        module, _, param = name.rpartition(".")
        if module in modules and param in PARAM_NAMES:
            if param == "compressed":
                out[f"{module}.weight"] = bitmask_decompress(
                    stored[f"{module}.compressed"], stored[f"{module}.bitmask"], stored[f"{module}.shape"]
                )
        else:
            out[name] = tensor
    for alias, source in tied.items():
        out[alias] = out[source]
    return out


def load_compact_model(folder: Path) -> nn.Module:
    """The model a ``save_compact`` folder holds, rebuilt from its ``base_config`` and weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    base = dict(_read_config(folder)["base_config"])
    config = AutoConfig.for_model(base.pop("model_type"), **base)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None) or torch.float32)
    model.load_state_dict(load_compact(folder), strict=True)
    return model.eval()


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path`` (or of ``path`` itself when it is a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def dense_bytes(model: nn.Module) -> int:
    """The dense model's weight bytes: every parameter (tied ones once) x its element size."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# The sparse-bitmask tensor format


def bitmask_compress(W: torch.Tensor) -> dict[str, torch.Tensor]:
    """One weight W [out, in] -> {shape, compressed, bitmask, row_offsets} on the CPU."""
    W = W.detach().to("cpu").contiguous()
    if W.dim() != 2:
        raise ValueError(f"bitmask compression needs a 2-d weight, got shape {tuple(W.shape)}")
    mask = (W != 0).numpy()  # [out, in]; exact zeros are the pruned weights
    row_counts = torch.from_numpy(np.count_nonzero(mask, axis=1).astype(np.int64))  # [out]
    return {
        "shape": torch.tensor(list(W.shape), dtype=torch.int64),
        "compressed": torch.from_numpy(_bits(W)[mask]).view(W.dtype),  # [nnz], row-major
        "bitmask": pack_bitmasks(torch.from_numpy(mask)),  # [out, ceil(in / 8)] uint8
        "row_offsets": torch.cumsum(row_counts, 0) - row_counts,  # [out]
    }


def bitmask_decompress(compressed: torch.Tensor, bitmask: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inverse of ``bitmask_compress``: the dense weight with zeros where the bitmask is 0."""
    dense_shape = [int(s) for s in shape.tolist()]
    mask = unpack_bitmasks(bitmask, dense_shape)  # [out, in] bool
    W = torch.zeros(dense_shape, dtype=compressed.dtype)
    W.masked_scatter_(mask, compressed)
    return W


def _bits(W: torch.Tensor) -> np.ndarray:
    """W reinterpreted as same-width integers: boolean indexing in numpy is several times faster
    than in torch on CPU, and an integer view also covers dtypes numpy lacks (bfloat16)."""
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[W.element_size()]
    return W.view(as_int).numpy()


def target_modules(model: nn.Module, arch: ArchSpec) -> set[str]:
    """Full module names of the prunable decoder linears (those ``save_compact`` compresses), as
    the checkpoint names them (a fused linear once for its parts: Phi-3's qkv_proj)."""
    return {
        f"{arch.layers}.{i}.{stored_linear(path, arch)}"
        for i, layer in enumerate(decoder_layers(model, arch))
        for path in layer_linears(layer, arch)
    }


def read_sparsity_config(folder: Path) -> dict[str, Any]:
    """The ``sparsity_config`` (compressed-tensors' ``BitmaskConfig`` fields) of a compact folder."""
    return dict(_read_config(folder)["sparsity_config"])


def _read_config(folder: Path) -> dict[str, Any]:
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise UserError(f"{folder} has no config.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != COMPACT_TYPE:
        raise UserError(
            f"{config_path} is not a Spruce compact artifact (model_type {config.get('model_type')!r})"
        )
    return dict(config)


def _write_config(model: nn.Module, out_dir: Path, sparsity: BitmaskConfig) -> None:
    import compressed_tensors

    config = {
        "model_type": COMPACT_TYPE,
        "note": "A Spruce sparse-bitmask artifact, not loadable by transformers: read it with "
        "spruce.core.export.load_compact_model, or serve the hf/ folder beside it.",
        "compressed_tensors_version": compressed_tensors.__version__,
        "sparsity_config": sparsity.model_dump(),
        "base_config": model.config.to_dict(),  # type: ignore[operator, union-attr]
    }
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    (out_dir / "config.json").write_text(text + "\n", encoding="utf-8")


def _dedup_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that alias an earlier one (tied embeddings): safetensors refuses shared storage.

    Returns the unique tensors and {alias: stored name} to restore the aliases on load.
    """
    seen: dict[tuple[Any, ...], str] = {}
    unique: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, tensor in state.items():
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        unique[name] = tensor
    return unique, tied
