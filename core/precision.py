"""The walk's forward precision: where layer forwards compute in bfloat16 and what stays exact.

``resolve_precision`` turns the spec's ``compute_dtype`` into a ``ForwardPrecision`` (or None);
``forward_precision`` sets it for a block of the walk, and ``layer_precision`` applies it to one
run of a layer. The walker's hooks (statistics, pruning) are wrapped in ``exact``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spruce.core.arch import ArchSpec

Device = torch.device | str


@dataclass(frozen=True)
class ForwardPrecision:
    """How the walk's layer forwards compute (see ``forward_precision``)."""

    dtype: torch.dtype  # the autocast dtype of the layer's matrix products
    # Linears (paths inside a decoder layer) that compute in the model's own dtype regardless:
    # the residual writers o and down where SparseGPT fits the dense model, whose cross
    # statistics are a small difference of two large outputs (docs/pruners.md, "Forward precision").
    exact: tuple[str, ...] = ()


_PRECISION: ContextVar[ForwardPrecision | None] = ContextVar("spruce_forward_precision", default=None)


@contextlib.contextmanager
def walk_attention(model: nn.Module, kernel: str) -> Iterator[None]:
    """Within this block the model's attention runs ``kernel`` ("model": as loaded; "eager": the
    plain softmax, as llm-compressor calibrates); the masks the walk captures match it."""
    before = getattr(model.config, "_attn_implementation", None)
    if kernel == "model" or before in (None, kernel):
        yield
        return
    model.set_attn_implementation(kernel)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_attn_implementation(before)  # type: ignore[operator]


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


def resolve_precision(
    compute_dtype: str,
    *,
    model_dtype: torch.dtype,
    device: torch.device,
    arch: ArchSpec,
    fits_dense_model: bool,
) -> ForwardPrecision | None:
    """The walk's forward precision for the spec's ``compute_dtype`` (``core.spec.COMPUTE_DTYPES``);
    None computes in the model's dtype.

    "auto" lowers a float32 model's forwards to bfloat16 only where the hardware multiplies it
    natively (elsewhere it is emulated and slower). Where SparseGPT fits the dense model, the
    residual writers stay exact (``ForwardPrecision.exact``); elsewhere nothing reads their
    outputs that closely (docs/pruners.md, "Forward precision")."""
    if compute_dtype == "model" or model_dtype != torch.float32:
        return None
    if compute_dtype == "auto" and not bf16_native(device):
        return None
    return ForwardPrecision(torch.bfloat16, exact=(arch.o, arch.mlp_out) if fits_dense_model else ())


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = torch.cpu
        # Private probes (stable since torch 2.2); missing ones count as "no".
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
    return False


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
