"""What a job may name: model references and text sources the service accepts.

Shared by the API (answers 422) and the worker (checks again before touching a file: its own
settings decide what its disk may serve). Raises ``core.errors.SpecError`` naming the field.
"""

from __future__ import annotations

import re
from pathlib import Path

from spruce.common.settings import Settings
from spruce.core.errors import SpecError

BUILTIN_SOURCES: tuple[str, ...] = ("pydoc", "wikitext2", "c4", "fortunes")
EVALUATION_ONLY: tuple[str, ...] = ("fortunes",)  # out of the calibration domain (core.fortunes)
MODEL_ALIASES: tuple[str, ...] = (
    "smollm2-135m",
    "gemma3-270m",
)  # core.builtins.BUILTINS (torch-side, not importable here)
DATASET_ID = re.compile(r"^ds_[0-9a-f]{24}$")
# A hub dataset (core.hfdata): owner/name, optionally ?config=&split=&field= (the worker reads the
# hub; local folders are not for the service: upload the text instead).
_DS_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_DS_OPT = r"(?:config|split|field)=[A-Za-z0-9._-]{1,100}"
HUB_DATASET = re.compile(rf"^{_DS_PART}/{_DS_PART}(?:\?{_DS_OPT}(?:&{_DS_OPT}){{0,2}})?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95}))?$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:/\S*)?$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Where the service writes every team's files in its own bucket; a model URI may not point there
# (the API checks team ownership on downloads, the worker's S3 copy would not).
SERVICE_AREAS: tuple[str, ...] = ("jobs", "datasets")


def looks_like_path(ref: str) -> bool:
    """A ref that names a local file or folder rather than a hub id (the engine loads both)."""
    return ref.startswith(("/", ".", "~", "\\")) or ref.lower().endswith(".gguf") or ":" in ref[1:3]


def check_model_ref(ref: str, settings: Settings) -> None:
    """Allow the alias, hub ids, s3:// URIs, and local paths under the allowed roots only."""
    if ref.lower() in MODEL_ALIASES:
        return
    if "\x00" in ref or len(ref) > 1024:
        raise SpecError("not a model reference (too long, or a NUL character)", param="model")
    if ref.startswith("s3://"):
        check_s3_model(ref, settings)
        return
    scheme = _SCHEME.match(ref)
    if scheme:  # file://, http://, hf://...: the engine would read them, so name what is allowed
        raise SpecError(
            f"{scheme.group(1)}:// is not an accepted model source: use a hub id, an s3:// URI "
            "or an absolute path under SPRUCE_MODEL_ROOTS",
            param="model",
        )
    if looks_like_path(ref):
        roots = settings.resolved_model_roots
        if _under_roots(ref, roots):
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


def s3_configured(settings: Settings) -> bool:
    """Whether the worker has S3 to read from: the artifact store is S3, or the operator named
    S3 model roots (boto3's credential chain then applies). Without either, an s3:// reference
    could only fail on the worker ("Unable to locate credentials") after its retries."""
    return settings.storage == "s3" or bool(settings.model_s3_roots)


def is_hub_id(ref: str) -> bool:
    """A reference that ``check_model_ref`` accepted as a Hugging Face hub id (not a path, alias or URI)."""
    return (
        ref.lower() not in MODEL_ALIASES
        and not ref.startswith("s3://")
        and not _SCHEME.match(ref)
        and not looks_like_path(ref)
    )


def _under_roots(ref: str, roots: list[Path]) -> bool:
    """``ref`` is absolute and, with symlinks and '..' resolved, lies under one of ``roots``."""
    try:
        path = Path(ref).expanduser()
        if not path.is_absolute():
            return False
        real = path.resolve()
    except (OSError, RuntimeError):  # an unknown ~user, a symlink loop, a name too long
        return False
    return any(real.is_relative_to(root) for root in roots)


def _key_under(key: str, prefix: str) -> bool:
    """Whether the object key (or key prefix) ``key`` lies at or below ``prefix``, by segments."""
    return not prefix or key == prefix or key.startswith(prefix + "/")


def check_s3_model(ref: str, settings: Settings) -> None:
    """An s3:// model URI: well formed, S3 configured, under SPRUCE_MODEL_S3_ROOTS when set, never
    the service's files."""
    if not _S3_URI.match(ref):
        raise SpecError("not a valid s3://bucket/prefix URI", param="model")
    bucket, _, key = ref[len("s3://") :].partition("/")
    key = key.removesuffix("/")
    if key and any(p in ("", ".", "..") for p in key.split("/")):
        raise SpecError("s3:// URIs may not hold empty, '.' or '..' path segments", param="model")
    if not s3_configured(settings):
        raise SpecError(
            "this service has no S3 storage configured (SPRUCE_STORAGE=s3 or SPRUCE_MODEL_S3_ROOTS): "
            "s3:// models cannot be read; give a hub id or a path under SPRUCE_MODEL_ROOTS",
            param="model",
        )
    if settings.storage == "s3" and bucket == settings.s3_bucket:
        base = settings.s3_prefix.strip("/")
        for area in SERVICE_AREAS:
            own = f"{base}/{area}" if base else area
            # Below a service area, or above one (a whole-bucket URI would copy every team's files).
            if _key_under(key, own) or _key_under(own, key):
                raise SpecError(
                    f"s3://{bucket}/{own}/ holds this service's job and dataset files; "
                    "a model must be stored elsewhere",
                    param="model",
                )
    roots = settings.model_s3_roots
    if roots and not any(_s3_under(bucket, key, root) for root in roots):
        raise SpecError(
            f"s3:// models must lie under SPRUCE_MODEL_S3_ROOTS ({', '.join(roots)})", param="model"
        )


def _s3_under(bucket: str, key: str, root: str) -> bool:
    root_bucket, _, root_key = root.removeprefix("s3://").partition("/")
    return bucket == root_bucket and bool(key) and _key_under(key, root_key.strip("/"))
