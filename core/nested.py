"""Nested containers of tensors (a layer's keyword arguments: masks, positions, rotary tables):
moved to a device, or cut to a slice of their batch. One implementation for the walker and
induction alike."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def to_device(
    value: Any,
    device: torch.device | str,
    memo: dict[int, Any] | None = None,
    *,
    float_dtype: torch.dtype | None = None,
) -> Any:
    """``value`` with every tensor inside (dicts, tuples, lists) moved to ``device``, floating ones
    cast to ``float_dtype`` where given. ``memo`` keeps tensors that were shared shared (the same
    mask object in every layer's kwargs stays one object)."""
    if memo is None:
        memo = {}
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, Tensor):
        dtype = float_dtype if float_dtype is not None and value.is_floating_point() else value.dtype
        moved: Any = value.to(device=device, dtype=dtype)
    elif isinstance(value, dict):
        moved = {k: to_device(v, device, memo, float_dtype=float_dtype) for k, v in value.items()}
    elif isinstance(value, (tuple, list)):
        moved = type(value)(to_device(v, device, memo, float_dtype=float_dtype) for v in value)
    else:
        return value
    memo[id(value)] = moved
    return moved


def cut_batch(value: Any, b: int, i: int, j: int) -> Any:
    """``value`` with every tensor whose first dimension is the batch size ``b`` cut to rows
    [i, j); broadcast tensors (first dimension 1, or none) are shared."""
    if isinstance(value, Tensor):
        return value[i:j] if value.dim() > 0 and value.shape[0] == b else value
    if isinstance(value, dict):
        return {k: cut_batch(v, b, i, j) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(cut_batch(v, b, i, j) for v in value)
    return value
