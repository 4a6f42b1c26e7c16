"""Resumable layer walks: what ``compress`` hands to a checkpoint after each finished layer.

The engine knows nothing about where a checkpoint lives. It sees a ``Checkpoint``: after decoder
layer i is pruned and has produced the inputs of layer i + 1, ``save(LayerCheckpoint)`` is called
with that layer's weights, those inputs, the run's generator state and the report data gathered
so far; at the start of a run ``load()`` returns the last saved state, or None. The service keeps
it in object storage (worker/checkpoint.py); tests keep it in memory.

Everything needed for a continuation that is bit for bit the run that was interrupted is in
there: layers before i are restored as they were pruned, layer i + 1 sees the same inputs, the
generator (induction's shuffling) continues from the same state, and what was measured before the
layer walk (dense perplexity, OWL outlier ratios and allocation) is not measured again on a model
that is by then half pruned. The keyword arguments of the layers (masks, rotary tables) are not
saved: they come from the embedding side, which pruning never touches, and are captured again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import SystemFault

if TYPE_CHECKING:  # torch is imported by whoever builds tensors; the service side imports this freely
    import torch
    from torch import Tensor

FORMAT = 1  # bump when the meaning of the saved data changes: an old checkpoint is then ignored


@dataclass
class LayerCheckpoint:
    """The state after decoder layer ``index`` (0-based) of ``layers`` finished."""

    index: int
    layers: int
    weights: dict[str, Tensor]  # the layer's state_dict after (induction and) pruning, on the CPU
    hidden: list[Tensor]  # [b, seq, hidden] per calibration batch: the inputs of layer index + 1
    generator: Tensor  # torch.Generator.get_state() of the run's generator after this layer
    meta: dict[str, Any]  # JSON: report rows so far, dense perplexity, allocation, timings

    def tensors(self) -> dict[str, Tensor]:
        """Hidden states and generator state as one flat dict (safetensors wants unique names)."""
        out = {f"hidden.{k}": h.contiguous() for k, h in enumerate(self.hidden)}
        out["generator"] = self.generator
        return out


@dataclass
class ResumeState:
    """What ``Checkpoint.load`` returns: every finished layer's weights and the last layer's state."""

    weights: list[dict[str, Tensor]]  # layers 0 .. len(weights) - 1, in order
    last: LayerCheckpoint  # the state after layer len(weights) - 1

    @property
    def next_layer(self) -> int:
        return self.last.index + 1


class Checkpoint(Protocol):
    """Where a run keeps its progress; ``compress(..., checkpoint=...)`` calls both methods."""

    def load(self) -> ResumeState | None:
        """The state saved by an earlier run of the same job, or None to start from the beginning."""
        ...

    def save(self, state: LayerCheckpoint) -> None:
        """Keep ``state`` so that a later ``load`` returns it; must be atomic per layer (a crash
        during ``save`` must leave the previous layer's state loadable)."""
        ...


class CheckpointMismatch(SystemFault):
    """A loaded checkpoint does not fit this model and spec (another layer count, other shapes)."""

    code = "checkpoint_mismatch"


# -- serialisation (safetensors: no pickle, so loading a checkpoint runs no code) -----------------


def pack(tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def unpack(data: bytes) -> dict[str, Tensor]:
    from safetensors.torch import load

    return load(data)


def encode_meta(meta: dict[str, Any]) -> bytes:
    return json.dumps({"format": FORMAT, **meta}, sort_keys=True).encode()


def decode_meta(data: bytes) -> dict[str, Any] | None:
    """The meta dict, or None when it was written by another format version."""
    meta: dict[str, Any] = json.loads(data)
    if meta.pop("format", None) != FORMAT:
        return None
    return meta


def layer_state(index: int, layers: int, state: dict[str, Tensor], meta: dict[str, Any]) -> LayerCheckpoint:
    """A ``LayerCheckpoint`` rebuilt from ``LayerCheckpoint.tensors()`` of the same layer."""
    hidden = [state[f"hidden.{k}"] for k in range(sum(1 for n in state if n.startswith("hidden.")))]
    return LayerCheckpoint(
        index=index, layers=layers, weights={}, hidden=hidden, generator=state["generator"], meta=meta
    )


def check_fits(state: ResumeState, layers: int, layer_keys: list[dict[str, torch.Size]]) -> None:
    """Raise ``CheckpointMismatch`` unless ``state`` belongs to a model of this shape."""
    if state.last.layers != layers or state.next_layer > layers:
        raise CheckpointMismatch(f"checkpoint of a {state.last.layers}-layer model, this one has {layers}")
    for i, weights in enumerate(state.weights):
        shapes = {k: v.shape for k, v in weights.items()}
        if shapes != layer_keys[i]:
            raise CheckpointMismatch(f"layer {i}: the checkpoint's weights do not fit this model")
