"""What a job may name: model references and text sources the service accepts.

Shared by the API (answers 422) and the worker (checks again before touching a file: its own
settings decide what its disk may serve). Raises ``core.errors.SpecError`` naming the field.
"""

from __future__ import annotations

import re
from pathlib import Path

from common.settings import Settings
from core.errors import SpecError

BUILTIN_SOURCES: tuple[str, ...] = ("pydoc", "wikitext2", "c4")
MODEL_ALIASES: tuple[str, ...] = ("smollm2-135m",)  # core.models.ALIASES (torch-side, not importable here)
DATASET_ID = re.compile(r"^ds_[0-9a-f]{24}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95}))?$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:/\S*)?$")


def looks_like_path(ref: str) -> bool:
    """A ref that names a local file or folder rather than a hub id (the engine loads both)."""
    return ref.startswith(("/", ".", "~", "\\")) or ref.lower().endswith(".gguf") or ":" in ref[1:3]


def check_model_ref(ref: str, settings: Settings) -> None:
    """Allow the alias, hub ids, s3:// URIs, and local paths under the allowed roots only."""
    if ref.lower() in MODEL_ALIASES:
        return
    if ref.startswith("s3://"):
        if not _S3_URI.match(ref):
            raise SpecError("not a valid s3://bucket/prefix URI", param="model")
        return
    if looks_like_path(ref):
        path = Path(ref).expanduser()
        roots = settings.resolved_model_roots
        if path.is_absolute() and any(path.resolve().is_relative_to(root) for root in roots):
            return
        allowed = ", ".join(str(r) for r in roots) or "none configured"
        raise SpecError(
            f"local model paths must be absolute and lie under SPRUCE_MODEL_ROOTS ({allowed})", param="model"
        )
    if not _HUB_ID.match(ref) or ".." in ref:
        raise SpecError(
            "not a model reference: give 'smollm2-135m', a hub id 'owner/name', an s3:// URI "
            "or an absolute path under SPRUCE_MODEL_ROOTS",
            param="model",
        )
    if not settings.allow_hub_models:
        raise SpecError("this service does not load models from the Hugging Face hub", param="model")
