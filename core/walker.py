"""The one layer walker: every stage of the engine (pruning, induction, evaluation) goes through it.

The model stays where it was loaded (the CPU); one decoder layer at a time moves to the compute
device, runs on every calibration batch, and moves back. Between layers the activations live on
the store device, so peak device memory is one layer plus one batch of its activations.

    batches = capture_inputs(model, arch, ids, device=dev)      # what the first layer receives
    final = walk(model, arch, batches, device=dev, visit=prune)  # prune in place, propagate
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.arch import ArchSpec, decoder_layers, input_groups, layer_linears, mlp_activation
from core.errors import Cancelled, SystemFault
from core.stats import InputStats, OutputSensitivity

Device = torch.device | str
# A visit may return the layer's outputs when it computed them itself (``prune_in_forward``).
Visit = Callable[[int, nn.Module, list["LayerBatch"]], "list[Tensor] | None"]


@dataclass(frozen=True)
class ForwardPrecision:
    """How the walk's layer forwards compute (see ``forward_precision``)."""

    dtype: torch.dtype  # the autocast dtype of the layer's matrix products
    # Linears (paths inside a decoder layer) that compute in the model's own dtype regardless:
    # the residual writers o and down where SparseGPT fits the dense model, whose cross
    # statistics are y_dense - y of their outputs, a small difference of two large outputs; with
    # them in bfloat16 SparseGPT 2:4 lost 0.8% perplexity, with them exact it matched float32
    # (docs/pruners.md, "Forward precision").
    exact: tuple[str, ...] = ()


_PRECISION: ContextVar[ForwardPrecision | None] = ContextVar("spruce_forward_precision", default=None)


@contextlib.contextmanager
def forward_precision(precision: ForwardPrecision | None) -> Iterator[None]:
    """Within this block, ``run_layer`` computes the layer's matrix products (linears, attention)
    under autocast to ``precision.dtype`` (None: the model's dtype). Everything else stays
    exact: the layer's inputs and outputs keep the model's dtype, the linears in
    ``precision.exact`` run in it, and the walker's hooks (statistics, pruning) run with
    autocast off, so every Gram product, factorisation and mask choice is float32 as before.
    Only the activations the statistics are read from carry the rounding."""
    token = _PRECISION.set(precision)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def layer_precision(layer: nn.Module, device: Device) -> contextlib.AbstractContextManager[None]:
    """The walk's forward precision (``forward_precision``; a no-op without one) for one run of
    ``layer``: ``run_layer``'s, and that of a forward outside it that may carry the same rounding,
    induction's training steps (whose masks come from float32 statistics and whose chosen
    transform is checked in float32)."""
    return _reduced(layer, torch.device(device), _PRECISION.get())


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
            out = layer(batch.hidden.to(device), **_to_device(batch.kwargs, device))
            if isinstance(out, tuple):  # older transformers return (hidden, ...)
                out = out[0]
            outputs.append(out.to(batch.hidden.device))  # [b, seq, hidden]
    return outputs


def collect_stats(
    layer: nn.Module,
    arch: ArchSpec,
    batches: list[LayerBatch],
    *,
    device: Device,
    want_hessian: bool,
    sensitivity: dict[str, OutputSensitivity] | None = None,
    hessian_every: int = 1,
) -> tuple[dict[str, InputStats], list[Tensor]]:
    """Input statistics of every prunable linear of ``layer`` over ``batches``, and the layer's outputs.

    Linears that read the same tensor (q/k/v, gate/up) share one ``InputStats`` object, filled once
    by a hook on the group's first linear. Hooks are removed even when the forward raises.
    A ``sensitivity`` dict (empty) is filled with each MLP input linear's ``OutputSensitivity``
    from the same pass. ``hessian_every``: the Hessian from every n-th token (``InputStats``).
    """
    linears = layer_linears(layer, arch)
    stats: dict[str, InputStats] = {}
    handles = []
    try:
        if sensitivity is not None:
            handles += _sensitivity_hooks(layer, arch, sensitivity, device, active=lambda: True)
        for group in input_groups(arch):
            first = linears[group[0]]
            shared = InputStats.new(
                first.in_features, device=device, want_hessian=want_hessian, hessian_every=hessian_every
            )
            for name in group:
                stats[name] = shared
            handles.append(first.register_forward_pre_hook(_accumulate_into(shared)))
        outputs = run_layer(layer, batches, device=device)
    finally:
        for handle in handles:
            handle.remove()
    return stats, outputs


def collect_paired_stats(
    layer: nn.Module,
    arch: ArchSpec,
    batches: list[LayerBatch],
    dense: list[Tensor],
    *,
    device: Device,
    sensitivity: dict[str, OutputSensitivity] | None = None,
    hessian_every: int = 1,
) -> tuple[dict[str, InputStats], list[Tensor], list[Tensor]]:
    """``collect_stats`` with SparseGPT's Hessian and, for the two linears that write into the
    residual stream (o and down / fc2), the cross statistics between the pruned model's inputs
    (``batches``) and the dense model's inputs of the same tokens.

    Only the residual writers: fitting the readers (q/k/v, gate/up) to the dense model's outputs
    made SparseGPT's layers worse against the dense model on SmolLM2, even on the calibration
    text (their outputs pass through softmax / the activation before anything adds up, and the
    drift they see is carried by the residual stream anyway); fitting o and down lowered it.

    ``dense`` holds the dense model's input of this layer for each batch. Per batch the layer runs
    twice with the same (not yet pruned) weights: on the dense input, where the hooks only keep each
    writer's output, then on the pruned input, where they accumulate the input and, for the
    writers, y_dense - y into ``InputStats``. ``sensitivity`` (as in ``collect_stats``) is
    measured on the pruned input, like the rest of the statistics. ``hessian_every``: as in
    ``collect_stats``, for the readers only (the writers' cross statistics need every token).
    Returns (stats, outputs on ``batches``, outputs on ``dense``: the dense model's next inputs).
    """
    linears = layer_linears(layer, arch)
    stats: dict[str, InputStats] = {}
    kept: dict[str, Tensor] = {}  # writer linear -> its output on the current batch's dense input
    handles = []
    try:
        if sensitivity is not None:
            handles += _sensitivity_hooks(
                layer, arch, sensitivity, device, active=lambda: _DENSE_PASS not in kept
            )
        for group in input_groups(arch):
            first = linears[group[0]]
            cross = group[0] in (arch.o, arch.mlp_out)  # single-linear groups: G belongs to that linear
            shared = InputStats.new(
                first.in_features,
                device=device,
                want_hessian=True,
                cross_out=first.out_features if cross else None,
                hessian_every=1 if cross else hessian_every,
            )
            for name in group:
                stats[name] = shared
            handles.append(first.register_forward_hook(_pair_into(shared, group[0], kept, cross)))
        outputs: list[Tensor] = []
        dense_outputs: list[Tensor] = []
        for batch, hidden in zip(batches, dense, strict=True):
            kept.clear()
            kept[_DENSE_PASS] = hidden  # a marker: the hooks only keep inputs during this pass
            dense_outputs += run_layer(layer, [dataclasses.replace(batch, hidden=hidden)], device=device)
            del kept[_DENSE_PASS]
            outputs += run_layer(layer, [batch], device=device)
        kept.clear()
    finally:
        for handle in handles:
            handle.remove()
    return stats, outputs, dense_outputs


# Prunes the group in place from its statistics; returns the permutation of the group's input
# channels it folded into the layer (new channel j is old p[j]), or None.
PruneGroup = Callable[[tuple[str, ...], InputStats], "Tensor | None"]


def prune_in_forward(
    layer: nn.Module,
    arch: ArchSpec,
    batch: LayerBatch,
    reference: Tensor,
    *,
    device: Device,
    prune: PruneGroup,
    fit_reference: bool,
    want_hessian: bool = True,
    sensitivity: dict[str, OutputSensitivity] | None = None,
    timings: dict[str, float] | None = None,
    hessian_every: int = 1,
) -> tuple[Tensor, Tensor]:
    """Prune the layer group by group inside one forward of all calibration tokens (``batch``).

    First the dense layer runs on ``reference`` (same tokens): the dense model's input of the
    layer when SparseGPT fits the dense model (``fit_reference``: the residual writers o and
    down / fc2 keep their outputs, to be fitted to), else ``batch.hidden`` itself; this pass
    also fills ``sensitivity`` (as in ``collect_stats``). Then ``batch`` runs, and a pre-hook on
    each input group's first linear (q/k/v, o, gate/up, down) accumulates the group's
    ``InputStats`` from what the forward brings there (the Hessian if ``want_hessian``, and with
    ``fit_reference`` the writers' cross statistics against the kept outputs) and calls
    ``prune(group, stats)``, which prunes the group in place before the forward goes on. So each
    group is fitted on the inputs the already pruned groups before it produce (sequential within
    the layer), and the forward's output is the pruned layer's: two forwards per layer where
    statistics, pruning and propagation take three with ``collect_paired_stats`` (two without).
    Where ``prune`` folded a permutation p of the group's inputs into the layer (induction's N:M
    channel permutation of o or down: the readers' rows already ran in this forward, in the old
    order), the input arriving now is reordered by p as well, so the forward stays consistent.

    Every token must be in the one batch: a group's statistics are complete only then. Hooks
    are removed even when the forward or ``prune`` raises. ``timings["reference"]`` receives
    the seconds of the dense pass (without ``fit_reference`` and ``sensitivity`` it only
    measures: its output is the dense layer's, for the layer's error). ``hessian_every``: as in
    ``collect_stats`` (not with ``fit_reference``, whose cross statistics need every token).
    Returns (the pruned layer's output on ``batch``, the dense layer's output on ``reference``).
    """
    linears = layer_linears(layer, arch)
    writers = (arch.o, arch.mlp_out) if fit_reference else ()
    kept: dict[str, Tensor] = {}
    reference_pass = [True]
    handles = []

    def keep(name: str) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if reference_pass[0]:
                kept[name] = output.detach()

        return hook

    def fit(group: tuple[str, ...]) -> Callable[[nn.Module, tuple], tuple | None]:
        @exact
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if reference_pass[0]:
                return None
            x = args[0].detach()
            first = linears[group[0]]
            cross = group[0] in writers
            stats = InputStats.new(
                first.in_features, device=device, want_hessian=want_hessian,
                cross_out=first.out_features if cross else None,
                hessian_every=1 if cross else hessian_every,
            )  # fmt: skip
            if cross:  # against the reference outputs, with the group's weights still dense
                stats.update_against(x, kept.pop(group[0]), first.weight, first.bias)
            else:
                stats.update(x)
            p = prune(group, stats)
            if p is None:
                return None
            return (args[0].index_select(-1, p.to(args[0].device)), *args[1:])

        return hook

    try:
        if sensitivity is not None:
            handles += _sensitivity_hooks(layer, arch, sensitivity, device, active=lambda: reference_pass[0])
        for name in writers:
            handles.append(linears[name].register_forward_hook(keep(name)))
        for group in input_groups(arch):
            handles.append(linears[group[0]].register_forward_pre_hook(fit(group)))
        started = time.perf_counter()
        (ref_out,) = run_layer(layer, [dataclasses.replace(batch, hidden=reference)], device=device)
        if timings is not None:
            timings["reference"] = time.perf_counter() - started
        reference_pass[0] = False
        (out,) = run_layer(layer, [batch], device=device)
    finally:
        kept.clear()
        for handle in handles:
            handle.remove()
    return out, ref_out


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
    """
    layers = decoder_layers(model, arch)
    n = len(layers)
    for i, layer in enumerate(layers):
        if i < start:
            continue
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled before layer {i + 1} of {n}")
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
            on_outputs(i, outputs)
        batches = [batch.advance(out, i + 1) for batch, out in zip(batches, outputs, strict=True)]
        del outputs
        if on_layer is not None:
            on_layer(i + 1, n)
    return batches


# -- helpers ----------------------------------------------------------------------------------


def _sensitivity_hooks(
    layer: nn.Module,
    arch: ArchSpec,
    into: dict[str, OutputSensitivity],
    device: Device,
    active: Callable[[], bool],
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that fill ``into`` with each MLP input linear's ``OutputSensitivity`` while ``active()``.

    The input linears' outputs are kept until the MLP's output linear is reached; there the
    activation's derivative comes from autograd on the activation module alone (the layer itself
    runs without gradients), and the recomputed hidden activation must equal the one the output
    linear receives (on the first tokens of each batch), so a model whose MLP is not
    act(gate) * up or act(fc1) fails loudly instead of weighting rows by the wrong formula.
    """
    linears = layer_linears(layer, arch)
    act = mlp_activation(layer, arch)
    if act is None:
        raise SystemFault(f"no MLP activation module found in a {arch.name} layer: cannot weigh its rows")
    for name in arch.mlp_in:
        into[name] = OutputSensitivity.new(linears[name].out_features, device=device)
    outs: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if active():
                outs[name] = output.detach()

        return hook

    @exact
    def measure(module: nn.Module, args: tuple) -> None:
        if len(outs) < len(arch.mlp_in):
            return
        n_in = outs[arch.mlp_in[0]].shape[-1]
        # Every _SENSITIVITY_EVERY-th token: a per-channel mean over thousands of tokens, where
        # every token cost 14 s of SparseGPT's 138 s step at 70% on the benchmark.
        rows = {
            name: out.reshape(-1, n_in)[::_SENSITIVITY_EVERY].to(torch.float32) for name, out in outs.items()
        }
        with torch.enable_grad():
            z = rows[arch.mlp_in[0]].requires_grad_(True)  # a detached leaf
            a = act(z)
            (da,) = torch.autograd.grad(a.sum(), z)
        a = a.detach()
        up = rows[arch.mlp_in[-1]] if arch.gated else None
        # The form check reads the first _FORM_CHECK_ROWS of those tokens: an MLP of another form
        # shows on any token, and on every token the check cost a third of this hook's time.
        h = args[0].detach().reshape(-1, n_in)[::_SENSITIVITY_EVERY][:_FORM_CHECK_ROWS].to(torch.float32)
        rebuilt = a[:_FORM_CHECK_ROWS]
        if up is not None:  # h = act(gate) * up
            rebuilt = rebuilt * up[:_FORM_CHECK_ROWS]
        if float((rebuilt - h).norm()) > 1e-2 * float(h.norm()) + 1e-6:
            raise SystemFault(f"the {arch.name} MLP's hidden activation is not the expected act(...) form")
        if up is not None:
            derivs = {arch.mlp_in[0]: da * up, arch.mlp_in[-1]: a}
        else:  # h = act(fc1)
            derivs = {arch.mlp_in[0]: da}
        for name, d in derivs.items():
            into[name].update(d)
        outs.clear()

    handles = [linears[name].register_forward_hook(keep(name)) for name in arch.mlp_in]
    handles.append(linears[arch.mlp_out].register_forward_pre_hook(measure))
    return handles


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
    per_layer = [_to_device(kw, store_device, memo) for _, kw in calls]
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


def _to_device(value: Any, device: Device, memo: dict[int, Any] | None = None) -> Any:
    """``value`` with every tensor inside (dicts, tuples, lists) moved to ``device``."""
    if memo is None:
        memo = {}
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, Tensor):
        moved: Any = value.to(device)
    elif isinstance(value, dict):
        moved = {k: _to_device(v, device, memo) for k, v in value.items()}
    elif isinstance(value, (tuple, list)):
        moved = type(value)(_to_device(v, device, memo) for v in value)
    else:
        return value
    memo[id(value)] = moved
    return moved


def move_module(module: nn.Module, device: Device) -> None:
    """``module.to(device)``, outside inference mode even when called inside it: parameters copied
    in inference mode become inference tensors, which in-place pruning afterwards may not modify."""
    with torch.inference_mode(False):
        module.to(device)


@contextlib.contextmanager
def _reduced(layer: nn.Module, device: torch.device, precision: ForwardPrecision | None) -> Iterator[None]:
    """Autocast for one run of ``layer``, its ``exact`` linears excepted (their ``forward`` is
    wrapped for the duration and restored after, also on error)."""
    if precision is None:
        yield
        return
    wrapped: list[tuple[nn.Module, Any]] = []  # (module, the instance's own forward it had, if any)
    try:
        for path in precision.exact:
            module = layer.get_submodule(path)
            wrapped.append((module, vars(module).get("forward")))
            module.forward = _exact_forward(module)  # an instance attribute shadows the method
        with torch.autocast(device.type, dtype=precision.dtype):
            yield
    finally:
        for module, own in wrapped:
            del module.forward  # back to the class's forward ...
            if own is not None:
                module.forward = own  # ... or to the one the instance had


def _exact_forward(module: nn.Module) -> Callable[..., Any]:
    """``module.forward`` with autocast off, its input (lowered by the products before it) cast
    to the module's weight dtype."""
    forward, dtype = module.forward, next(module.parameters()).dtype

    @exact
    def run(x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return forward(x.to(dtype), *args, **kwargs)

    return run


def exact(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a hook or a forward) run with autocast off: the walker's statistics and pruning
    compute as they would without ``forward_precision``."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return run


def _accumulate_into(stats: InputStats) -> Callable[[nn.Module, tuple], None]:
    @exact
    def hook(module: nn.Module, args: tuple) -> None:
        stats.update(args[0])

    return hook


_DENSE_PASS = "<dense pass>"
_FORM_CHECK_ROWS = 1024
_SENSITIVITY_EVERY = 4


def _pair_into(
    stats: InputStats, key: str, kept: dict[str, Tensor], cross: bool
) -> Callable[[nn.Module, tuple, Tensor], None]:
    """Forward hook. During the dense pass: keep the linear's output (``cross``) or nothing; then
    accumulate the pruned input, with y_dense - y from the kept output (``cross``)."""

    @exact
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        if _DENSE_PASS in kept:
            if cross:
                kept[key] = output.detach()
        else:
            stats.update(args[0], kept.pop(key) - output.detach() if cross else None)

    return hook


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
