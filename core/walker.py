"""The one layer walker: every stage of the engine (pruning, induction, evaluation) goes through it.

The model stays where it was loaded (the CPU); one decoder layer at a time moves to the compute
device, runs on every calibration batch, and moves back. Between layers the activations live on
the store device, so peak device memory is one layer plus one batch of its activations.

    batches = capture_inputs(model, arch, ids, device=dev)      # what the first layer receives
    final = walk(model, arch, batches, device=dev, visit=prune)  # prune in place, propagate
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from spruce.core.arch import ArchSpec, decoder_layers
from spruce.core.errors import Cancelled
from spruce.core.nested import to_device
from spruce.core.precision import Device, layer_precision

# A visit may return the layer's outputs when it computed them itself (``prune_in_forward``).
Visit = Callable[[int, nn.Module, list["LayerBatch"]], "list[Tensor] | None"]


class LayerSource(Protocol):
    """Where a walk's layers live when they are not in memory (core.streaming.LayerStream)."""

    def load(self, i: int, layer: nn.Module) -> None: ...  # fill layer i's tensors
    def release(self, i: int, layer: nn.Module) -> None: ...  # write it out (maybe) and free it


@dataclass
class LayerBatch:
    """One batch of inputs of the current decoder layer."""

    hidden: Tensor  # [b, seq, hidden] input of the current decoder layer, on the store device
    kwargs: dict[str, Any]  # every keyword argument the current layer needs (masks, positions, ...)
    # kwargs of every layer, by index, only for models whose layers receive different keyword
    # arguments (e.g. Qwen2 with sliding-window layers gets a different mask); empty otherwise.
    layer_kwargs: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    def advance(self, hidden: Tensor, layer: int) -> LayerBatch:
        """The batch as input of decoder layer ``layer``, given that layer's input ``hidden``."""
        kwargs = self.layer_kwargs[layer] if layer < len(self.layer_kwargs) else self.kwargs
        return LayerBatch(hidden=hidden, kwargs=kwargs, layer_kwargs=self.layer_kwargs)


def capture_inputs(
    model: nn.Module,
    arch: ArchSpec,
    input_ids: Iterable[Tensor],
    *,
    device: Device,
    store_device: Device = "cpu",
) -> list[LayerBatch]:
    """Run the embedding side of the model on each batch of token ids [b, seq] and record what the
    first decoder layer receives (hidden states and keyword arguments: mask, positions, rotary cos/sin).

    The decoder layers are swapped for pass-through recorders while the base model runs, so the
    model's own code builds masks and position embeddings; they are restored in every case. Only
    the non-layer modules of the base model (embeddings, rotary, final norm) visit ``device``.
    """
    base = model.get_submodule(arch.base)
    layers = decoder_layers(model, arch)
    originals = list(layers)
    calls: list[tuple[Tensor, dict[str, Any]]] = []
    recorders = [_Recorder(layer, calls) for layer in originals]
    homes = _move_non_layers(base, layers, device)
    try:
        for i, recorder in enumerate(recorders):
            layers[i] = recorder
        out: list[LayerBatch] = []
        with torch.no_grad():
            for ids in input_ids:
                calls.clear()
                base(input_ids=ids.to(device), use_cache=False)
                out.append(_batch_from_calls(calls, store_device))
        return out
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        for module, home in homes:
            move_module(module, home)


def run_layer(layer: nn.Module, batches: list[LayerBatch], *, device: Device) -> list[Tensor]:
    """The layer's output for each batch, on the store device of that batch's input.

    The layer must already be on ``device``; gradients are off. Inside ``forward_precision``
    the forward computes as that block says.
    """
    outputs: list[Tensor] = []
    with torch.no_grad(), layer_precision(layer, device):
        for batch in batches:
            out = layer(batch.hidden.to(device), **to_device(batch.kwargs, device))
            if isinstance(out, tuple):  # older transformers return (hidden, ...)
                out = out[0]
            outputs.append(out.to(batch.hidden.device))  # [b, seq, hidden]
    return outputs


def walk(
    model: nn.Module,
    arch: ArchSpec,
    batches: list[LayerBatch],
    *,
    device: Device,
    visit: Visit | None,
    should_stop: Callable[[], bool] | None = None,
    on_layer: Callable[[int, int], None] | None = None,
    on_outputs: Callable[[int, list[Tensor]], None] | None = None,
    start: int = 0,
    layers: LayerSource | None = None,
) -> list[LayerBatch]:
    """Pass ``batches`` through every decoder layer in turn, one layer on ``device`` at a time.

    For layer i: ``should_stop()`` True raises ``Cancelled``; the layer moves to ``device``;
    ``visit(i, layer, batches)`` may change it in place (prune) and may return its outputs on
    ``batches`` (else the walker runs the layer for them); its outputs on ``batches`` become
    the next layer's inputs (``on_outputs(i, outputs)`` sees them first, e.g. to measure the
    pruned layer's error); the layer moves back; ``on_layer(i + 1, n)`` reports progress.
    Returns the inputs of the final norm. Pass the only reference to ``batches`` (not a kept list)
    so that each layer's inputs are freed as soon as its outputs exist. ``start`` > 0 resumes a
    walk: layers before it are skipped and ``batches`` must be the inputs of layer ``start``.
    With ``layers`` (streaming, core/streaming.py) each layer is loaded just before it moves to
    ``device`` and released (written, freed) once ``on_outputs`` has seen its outputs: one layer
    is in memory at a time.
    """
    modules = decoder_layers(model, arch)
    n = len(modules)
    for i, layer in enumerate(modules):
        if i < start:
            continue
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled before layer {i + 1} of {n}")
        if layers is not None:
            layers.load(i, layer)
        home = _device_of(layer)
        move_module(layer, device)
        try:
            outputs = visit(i, layer, batches) if visit is not None else None
            if outputs is None:
                outputs = run_layer(layer, batches, device=device)
        finally:
            if home is not None:
                move_module(layer, home)
        if on_outputs is not None:
            on_outputs(i, outputs)  # (before the release: a checkpoint saves the layer's weights)
        if layers is not None:
            layers.release(i, layer)
        batches = [batch.advance(out, i + 1) for batch, out in zip(batches, outputs, strict=True)]
        del outputs
        if on_layer is not None:
            on_layer(i + 1, n)
    return batches


# -- helpers ----------------------------------------------------------------------------------


class _Recorder(nn.Module):
    """Stands in for a decoder layer during capture: records its call and passes hidden through."""

    def __init__(self, layer: nn.Module, calls: list[tuple[Tensor, dict[str, Any]]]) -> None:
        super().__init__()
        self.signature = inspect.signature(layer.forward)  # not the layer itself: it must not move
        self.calls = calls
        # transformers reads these off layers in some models (e.g. attention_type for masks).
        for name in ("attention_type", "layer_idx"):
            if hasattr(layer, name):
                setattr(self, name, getattr(layer, name))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden, keywords = _as_keywords(self.signature, args, kwargs)
        self.calls.append((hidden, keywords))
        return hidden


def _as_keywords(signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> tuple[Tensor, dict]:
    """(hidden, every other argument by name) for a call of a decoder layer."""
    if len(args) == 1:
        return args[0], dict(kwargs)
    bound = signature.bind(*args, **kwargs)
    names = list(bound.arguments)
    hidden = bound.arguments[names[0]]
    keywords: dict[str, Any] = {}
    for name in names[1:]:
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            keywords.update(bound.arguments[name])
        else:
            keywords[name] = bound.arguments[name]
    return hidden, keywords


def _batch_from_calls(calls: list[tuple[Tensor, dict[str, Any]]], store_device: Device) -> LayerBatch:
    memo: dict[int, Any] = {}  # keeps tensors shared between layers' kwargs shared after the move
    hidden = calls[0][0].to(store_device).contiguous()  # [b, seq, hidden]
    per_layer = [to_device(kw, store_device, memo) for _, kw in calls]
    uniform = all(_same(kw, calls[0][1]) for _, kw in calls)
    return LayerBatch(hidden=hidden, kwargs=per_layer[0], layer_kwargs=() if uniform else tuple(per_layer))


def _same(a: Any, b: Any) -> bool:
    """Identical arguments: the same tensor objects (masks, cos/sin), equal plain values."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or bool(a == b)


def move_module(module: nn.Module, device: Device) -> None:
    """``module.to(device)``, outside inference mode even when called inside it: parameters copied
    in inference mode become inference tensors, which in-place pruning afterwards may not modify."""
    with torch.inference_mode(False):
        module.to(device)


def _device_of(module: nn.Module) -> torch.device | None:
    for param in module.parameters():
        return param.device
    for buffer in module.buffers():
        return buffer.device
    return None


def _move_non_layers(
    base: nn.Module, layers: nn.ModuleList, device: Device
) -> list[tuple[nn.Module, torch.device]]:
    """Move the base model's modules other than the decoder layers to ``device``; where they were."""
    homes: list[tuple[nn.Module, torch.device]] = []
    for child in base.children():
        home = _device_of(child)
        if child is layers or home is None:
            continue
        homes.append((child, home))
        move_module(child, device)
    return homes
