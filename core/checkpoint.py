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
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from spruce.core.errors import SystemFault

if TYPE_CHECKING:  # torch is imported by whoever builds tensors; the service side imports this freely
    import torch
    from torch import Tensor, nn

    from spruce.core.arch import ArchSpec
    from spruce.core.progress import Run
    from spruce.core.walker import LayerBatch

log = logging.getLogger(__name__)

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


# -- the engine's side: resuming a run and saving each finished layer ------------------------------


def load_resume(
    checkpoint: Checkpoint | None,
    model: nn.Module,
    arch: ArchSpec,
    generator: torch.Generator,
    run: Run,
    token_shapes: list[tuple[int, ...]],
) -> ResumeState | None:
    """Load the checkpoint's finished layers into ``model`` and its generator state; None: start fresh.

    ``token_shapes`` are this run's calibration batches [b, seq]: the saved hidden states must match.
    """
    import torch

    from spruce.core.arch import decoder_layers

    if checkpoint is None:
        return None
    state = checkpoint.load()
    if state is None:
        return None
    layers = decoder_layers(model, arch)
    try:
        check_fits(state, len(layers), [{k: v.shape for k, v in m.state_dict().items()} for m in layers])
        if [tuple(h.shape[:2]) for h in state.last.hidden[: len(token_shapes)]] != token_shapes:
            raise CheckpointMismatch("its hidden states were computed on other calibration batches")
    except CheckpointMismatch as exc:
        # Not a silent fallback: the run is correct from scratch, and the log says why it restarted.
        log.warning("ignoring the checkpoint (%s); starting from the first layer", exc)
        return None
    with torch.no_grad():
        for layer, weights in zip(layers, state.weights, strict=False):
            layer.load_state_dict(weights)
    generator.set_state(state.last.generator)
    for stage, seconds in state.last.meta.get("timings", {}).items():
        run.timings[stage] = run.timings.get(stage, 0.0) + seconds
    log.info("resuming after layer %d of %d", state.next_layer, len(layers))
    return state


def resumes(state: ResumeState | None) -> list[dict[str, int]]:
    """Every resume of this run so far: the layer each continued at (0-based)."""
    if state is None:
        return []
    return [*state.last.meta.get("resumes", []), {"from_layer": state.next_layer}]


def resume_report(state: ResumeState | None) -> dict[str, Any] | None:
    """The report's ``resume``: where this run continued, and every resume before."""
    if state is None:
        return None
    history = resumes(state)
    return {"from_layer": state.next_layer, "count": len(history), "history": history}


def resumed_batches(
    batches: list[LayerBatch], state: ResumeState, start: int, paired: bool
) -> tuple[list[LayerBatch], list[Tensor]]:
    """The inputs of layer ``start``: the saved hidden states with this run's captured kwargs, and
    (``paired``) the dense model's inputs of that layer, saved after the pruned model's."""
    hidden = state.last.hidden
    shapes = [b.hidden.shape for b in batches] * (2 if paired else 1)
    if [h.shape for h in hidden] != shapes:  # resume() checked [b, seq] already
        raise CheckpointMismatch("the checkpoint's hidden states do not fit this run's calibration batches")
    resumed = [b.advance(h.to(b.hidden.device), start) for b, h in zip(batches, hidden, strict=False)]
    dense = [h.to(b.hidden.device) for b, h in zip(batches, hidden[len(batches) :], strict=False)]
    return resumed, dense


class Saver:
    """Builds the ``LayerCheckpoint`` of a finished layer and hands it to the checkpoint."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        model: nn.Module,
        arch: ArchSpec,
        generator: torch.Generator,
        run: Run,
        fixed: dict[str, Any],
        started: float,
        elapsed_before: float,
    ) -> None:
        """``fixed``: the meta measured before the walk (dense perplexity, allocation, resumes);
        ``started``: the run's ``time.time()`` at its start; ``elapsed_before``: earlier runs' seconds."""
        self.checkpoint, self.model, self.arch, self.generator = checkpoint, model, arch, generator
        self.run, self.fixed, self.started, self.elapsed_before = run, fixed, started, elapsed_before
        self.prune_started = time.perf_counter()

    def __call__(
        self, i: int, outputs: list[Tensor], rows: list[dict[str, Any]], fact: list[dict[str, Any]]
    ) -> None:
        from spruce.core.arch import decoder_layers

        layers = decoder_layers(self.model, self.arch)
        timings = dict(self.run.timings)
        timings["prune"] = timings.get("prune", 0.0) + time.perf_counter() - self.prune_started
        meta = {
            **self.fixed,
            "rows": rows,
            "fact": fact,
            "timings": timings,
            "elapsed": self.elapsed_before + time.time() - self.started,
        }
        self.checkpoint.save(
            LayerCheckpoint(
                index=i,
                layers=len(layers),
                weights=dict(layers[i].state_dict()),
                hidden=outputs,
                generator=self.generator.get_state(),
                meta=meta,
            )
        )
