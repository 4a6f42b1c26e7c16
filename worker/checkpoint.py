"""The engine's ``Checkpoint`` (core/checkpoint.py) kept in object storage under the job.

    jobs/<id>/checkpoint/head.json                    which layer is the last complete one: the commit point
    jobs/<id>/checkpoint/layers/0003.safetensors      layer 3's weights after pruning, one file per layer
    jobs/<id>/checkpoint/state/0003/hidden.safetensors  inputs of layer 4 and the generator state
    jobs/<id>/checkpoint/state/0003/meta.json         report data so far (rows, dense perplexity, ...)

``save`` writes the layer's files first and ``head.json`` last, so a worker killed in the middle of
a save leaves the previous head, whose files are all still there (a state folder is deleted only
after the next head names a newer one). Works on every ``common.storage`` backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any

from spruce.common.storage import Storage, StorageNotFound
from spruce.core.checkpoint import (
    FORMAT,
    LayerCheckpoint,
    ResumeState,
    decode_meta,
    encode_meta,
    layer_state,
    pack,
    unpack,
)
from spruce.core.errors import SystemFault

log = logging.getLogger(__name__)


def prefix_of(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoint/"


def fingerprint(spec: dict[str, Any]) -> str:
    """What a checkpoint must have been made for: the spec as submitted and this code's version.

    A checkpoint left by another spec (impossible for one job id) or another release is not resumed.
    """
    try:
        version = metadata.version("spruce")
    except metadata.PackageNotFoundError:
        version = "unknown"
    body = json.dumps({"spec": spec, "version": version, "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


class StorageCheckpoint:
    """``core.checkpoint.Checkpoint`` over a ``Storage``; ``on_resume`` hears of a loaded state."""

    def __init__(
        self,
        storage: Storage,
        job_id: str,
        fingerprint: str,
        on_resume: Callable[[ResumeState], None] | None = None,
    ) -> None:
        self.storage = storage
        self.prefix = prefix_of(job_id)
        self.fingerprint = fingerprint
        self.on_resume = on_resume

    # -- keys and bytes -----------------------------------------------------------------------------

    def _layer_key(self, index: int) -> str:
        return f"{self.prefix}layers/{index:04d}.safetensors"

    def _state_dir(self, index: int) -> str:
        return f"{self.prefix}state/{index:04d}/"

    def _put(self, key: str, data: bytes) -> None:
        self.storage.put_stream(key, io.BytesIO(data))

    def _get(self, key: str) -> bytes:
        return b"".join(self.storage.open_stream(key))

    # -- the protocol ---------------------------------------------------------------------------------

    def save(self, state: LayerCheckpoint) -> None:
        i = state.index
        head = {"index": i, "layers": state.layers, "fingerprint": self.fingerprint}
        try:
            self._put(self._layer_key(i), pack(state.weights))
            self._put(self._state_dir(i) + "hidden.safetensors", pack(state.tensors()))
            self._put(self._state_dir(i) + "meta.json", encode_meta(state.meta))
            self._put(f"{self.prefix}head.json", json.dumps(head).encode())  # the commit
        except Exception as exc:  # the store is down: a retry resumes from the last committed layer
            raise SystemFault(f"could not save the checkpoint of layer {i}: {exc}") from exc
        if i > 0:
            try:  # the previous state is superseded; stale files are harmless, so a failure is too
                self.storage.delete_prefix(self._state_dir(i - 1))
            except Exception as exc:
                log.warning("could not delete %s: %s", self._state_dir(i - 1), exc)

    def load(self) -> ResumeState | None:
        head_key = f"{self.prefix}head.json"
        try:
            if not self.storage.exists(head_key):
                return None
            head = json.loads(self._get(head_key))
            if head.get("fingerprint") != self.fingerprint:
                log.warning("%s was written for another spec or release; starting afresh", head_key)
                return None
            index, layers = int(head["index"]), int(head["layers"])
            meta = decode_meta(self._get(self._state_dir(index) + "meta.json"))
            if meta is None:
                log.warning("%s has another format; starting afresh", head_key)
                return None
            tensors = unpack(self._get(self._state_dir(index) + "hidden.safetensors"))
            weights = [unpack(self._get(self._layer_key(k))) for k in range(index + 1)]
        except StorageNotFound as exc:  # a missing file under a committed head: the store lost data
            log.warning("checkpoint under %s is incomplete (%s); starting afresh", self.prefix, exc)
            return None
        except Exception as exc:
            raise SystemFault(f"could not read the checkpoint under {self.prefix}: {exc}") from exc
        state = ResumeState(weights=weights, last=layer_state(index, layers, tensors, meta))
        if self.on_resume is not None:
            self.on_resume(state)
        return state

    def delete(self) -> None:
        """Remove every checkpoint file of the job (it finished: nothing will resume it)."""
        self.storage.delete_prefix(self.prefix)


def discard(storage: Storage, job_id: str) -> None:
    """Delete a finished job's checkpoint; a failure costs space, not correctness, so it is logged."""
    try:
        storage.delete_prefix(prefix_of(job_id))
    except Exception as exc:
        log.warning("could not delete the checkpoint under %s: %s", prefix_of(job_id), exc)
