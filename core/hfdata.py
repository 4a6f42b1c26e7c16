"""Calibration and evaluation text from any ``datasets`` source.

A source names a Hugging Face hub dataset (``owner/name``), a folder written by
``Dataset.save_to_disk``, or local ``.parquet`` / ``.arrow`` / ``.json`` files, with optional
``config``, ``split`` and ``field`` after a ``?``:

    HuggingFaceH4/ultrachat_200k?split=train_sft
    /data/my_set?field=body                 (a save_to_disk folder)
    /data/shard.parquet?split=train

The text of each record is its ``field`` (default: ``text`` where the records have one, else a
chat ``messages`` list). Chat records are rendered through the model's chat template, so an
instruct model is calibrated on text in the form it was trained on; a tokenizer without a
template joins the turns as ``role: content`` lines (recorded in the report as ``rendering``).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from spruce.core.errors import DatasetUnavailable, SpecError, UserError

HUB_PROBE_TIMEOUT_S = 3.0
FILE_BUILDERS: dict[str, str] = {".parquet": "parquet", ".arrow": "arrow", ".json": "json"}
_KEYS = ("config", "split", "field")
CHAT_FIELD = "messages"


@dataclass(frozen=True)
class DatasetRef:
    """A parsed dataset source: where it is, and which part of it holds the text."""

    path: str
    config: str | None = None
    split: str = "train"
    field: str | None = None  # None: "text" where present, else the chat "messages"

    @classmethod
    def parse(cls, source: str, *, param: str) -> DatasetRef:
        path, _, query = source.partition("?")
        pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=bool(query))
        unknown = sorted({k for k, _ in pairs} - set(_KEYS))
        if unknown:
            raise SpecError(f"unknown dataset option {unknown[0]!r}; use {', '.join(_KEYS)}", param=param)
        options = dict(pairs)
        return cls(
            path=path,
            config=options.get("config"),
            split=options.get("split", "train"),
            field=options.get("field"),
        )


def is_dataset_source(source: str) -> bool:
    """A source this module reads: a query, a hub ``owner/name``, a saved folder or a data file."""
    path = source.partition("?")[0]
    if "?" in source or Path(path).suffix.lower() in FILE_BUILDERS:
        return True
    if Path(path).expanduser().is_dir():
        return True
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def documents(ref: DatasetRef, tokenizer: Any, *, param: str) -> tuple[list[str], dict[str, Any]]:
    """The text of every record of ``ref``'s split, and what the report records about it."""
    rows = _load(ref, param=param)
    columns = set(rows.column_names)
    field = ref.field or ("text" if "text" in columns else CHAT_FIELD if CHAT_FIELD in columns else None)
    if field is None or field not in columns:
        want = ref.field or f"'text' or {CHAT_FIELD!r}"
        raise UserError(f"{ref.path}: no {want} column (columns: {', '.join(sorted(columns))})", param=param)
    values = rows[field]
    chat = bool(values) and isinstance(values[0], list)
    rendering = _rendering(tokenizer) if chat else "text"
    docs = [render_chat(v, tokenizer) if chat else _text(v, field, ref, param) for v in values]
    info = {
        "path": ref.path,
        "config": ref.config,
        "split": ref.split,
        "field": field,
        "rendering": rendering,
    }
    return docs, info


def render_chat(messages: list[dict[str, Any]], tokenizer: Any) -> str:
    """One conversation as the model sees it: its chat template, else ``role: content`` lines."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)


def _rendering(tokenizer: Any) -> str:
    return "chat_template" if getattr(tokenizer, "chat_template", None) else "role_lines"


def _text(value: Any, field: str, ref: DatasetRef, param: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{ref.path}: field {field!r} holds {type(value).__name__}, not text", param=param)
    return value


def _load(ref: DatasetRef, *, param: str) -> Any:
    import datasets

    local = Path(ref.path).expanduser()
    try:
        if local.is_dir() and any((local / n).is_file() for n in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(local))
            return loaded[ref.split] if isinstance(loaded, datasets.DatasetDict) else loaded
        if local.suffix.lower() in FILE_BUILDERS:
            if not local.is_file():
                raise DatasetUnavailable(f"dataset file {ref.path!r} does not exist", param=param)
            builder = FILE_BUILDERS[local.suffix.lower()]
            return datasets.load_dataset(builder, data_files={ref.split: str(local)}, split=ref.split)
        if local.is_dir():  # a folder of data files: datasets infers the format
            return datasets.load_dataset(str(local), ref.config, split=ref.split)
        _check_hub(ref.path, offline=bool(datasets.config.HF_HUB_OFFLINE), param=param)
        return datasets.load_dataset(ref.path, ref.config, split=ref.split)
    except (DatasetUnavailable, UserError):
        raise
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ConnectionError, ...
        raise DatasetUnavailable(f"dataset {ref.path!r}: {type(exc).__name__}: {exc}", param=param) from exc


def _check_hub(path: str, *, offline: bool, param: str) -> None:
    """Fail fast without a hub: ``datasets`` would retry for about half a minute."""
    if offline:
        return
    endpoint = hub_endpoint()
    if not reachable(endpoint):
        raise DatasetUnavailable(
            f"dataset {path!r}: the hub at {endpoint} cannot be reached; use a local dataset folder "
            "or file, or upload the text",
            param=param,
        )


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def reachable(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when an HTTP server answers at ``url`` within ``timeout`` (any status counts)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # the server answered, even if not with 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
