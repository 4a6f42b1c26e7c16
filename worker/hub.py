"""Hub model references on the worker: resolved in the Hugging Face cache, never on the worker's disk.

A hub id such as ``owner/name`` is also a valid relative path. Handed to ``transformers`` as
is, it is first looked up in the worker's working directory, so a job could probe which files
exist there (``data/signing.key`` failed differently from a name that does not exist). The
worker resolves a hub id to its snapshot folder in the cache (downloading it when the hub is
reachable) and gives the engine that absolute folder: the working directory is never read, and
every hub id that cannot be had fails with the same error.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spruce.core.errors import ModelNotFound

log = logging.getLogger(__name__)

# What the engine loads from a hub folder: config, tokenizer, safetensors weights. No pickled
# .bin weights (loading them runs code) and no remote code.
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def hub_folder(repo_id: str) -> Path:
    """The local snapshot folder of hub model ``repo_id``; raises ``ModelNotFound`` without it."""
    from huggingface_hub import constants, snapshot_download

    # huggingface_hub's errors are OSErrors (LocalEntryNotFoundError, RepositoryNotFoundError,
    # HTTP errors) or ValueErrors (an invalid repo id).
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=PATTERNS))
    except (OSError, ValueError):
        pass  # not in the cache: try the hub
    if not constants.HF_HUB_OFFLINE:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=PATTERNS))
        except (OSError, ValueError) as exc:
            log.info("hub model %s: %s", repo_id, exc)
    raise ModelNotFound(
        f"model {repo_id!r} is not in this worker's Hugging Face cache and could not be downloaded "
        "from the hub (name hub models as owner/name; local folders as absolute paths under "
        "SPRUCE_MODEL_ROOTS)"
    )
