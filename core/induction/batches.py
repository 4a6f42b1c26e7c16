"""A layer's calibration batches cut into induction's minibatches, and the layer run on them.

Induction and recovery train on minibatches of the walker's batches (``minibatches``), on the
first sequences only where ``InductionSpec.samples`` says so (``first_sequences``), and compare
candidates on a held-out subset (``check_subset``, ``held_out_loss``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

from spruce.core.nested import cut_batch, to_device

_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


class Batch(Protocol):
    """What the walker hands over (``core.walker.LayerBatch``): a layer's input and the keyword
    arguments of its forward."""

    hidden: torch.Tensor  # [b, seq, hidden]
    kwargs: dict[str, Any]


@dataclass
class Minibatch:
    """A piece of a walker batch, kept where the walker stores it (one piece visits the device
    at a time, so device memory stays one layer plus one minibatch)."""

    hidden: torch.Tensor  # [b, seq, hidden]
    kwargs: dict[str, Any]

    def on(self, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        """(hidden, kwargs) on ``device``, floating tensors in float32 (induction's precision)."""
        return (
            to_device(self.hidden, device, float_dtype=torch.float32),
            to_device(self.kwargs, device, float_dtype=torch.float32),
        )


def per_batch(pieces: list[torch.Tensor], batches: Sequence[Batch], size: int) -> list[torch.Tensor]:
    """``pieces`` cut by ``split_minibatches(batches, size)`` put back together per batch, in each
    batch's dtype."""
    out, k = [], 0
    for batch in batches:
        count = -(-batch.hidden.shape[0] // size)
        out.append(torch.cat(pieces[k : k + count]).to(batch.hidden.dtype))
        k += count
    return out


def first_sequences(minibatches: list[Minibatch], samples: int) -> list[Minibatch]:
    """The first ``samples`` sequences of ``minibatches`` (``InductionSpec.samples_for``; all
    where it is 0 or less), the last minibatch cut to fit."""
    if samples <= 0:
        return minibatches
    out: list[Minibatch] = []
    for mb in minibatches:
        if samples <= 0:
            break
        b = mb.hidden.shape[0]
        out.append(
            mb if b <= samples else Minibatch(mb.hidden[:samples], cut_batch(mb.kwargs, b, 0, samples))
        )
        samples -= b
    return out


def targets_for(targets: Sequence[torch.Tensor], minibatches: Sequence[Minibatch]) -> list[torch.Tensor]:
    """The targets of ``minibatches`` from those of the uncut minibatches they start (per
    minibatch, in order): ``first_sequences`` may have dropped the last ones and cut the last
    one kept, and its targets are cut alike."""
    return [Y[: mb.hidden.shape[0]] for Y, mb in zip(targets, minibatches, strict=False)]


def target_pieces(targets: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Per-batch targets cut as ``_minibatches`` cuts the batches."""
    return [Y[i : i + size] for Y in targets for i in range(0, Y.shape[0], size)]


def check_subset(n: int) -> list[int]:
    """Every 8th minibatch (at least one), held out of training: candidates are compared on about
    an eighth of the data, unseen by the optimiser, for a fraction of a forward pass each.
    (With a single minibatch it is also the training data: nothing else exists.)"""
    return list(range(0, n, 8))


@torch.no_grad()
def held_out_loss(
    layer: nn.Module,
    params: dict[str, torch.Tensor],
    minibatches: Sequence[Minibatch],
    targets: Sequence[torch.Tensor],
    device: torch.device,
    *,
    per_token: bool = False,
) -> float:
    """Squared error of the layer run with ``params`` against ``targets``, summed over the
    minibatches and divided by the targets' summed ||Y||^2: one relative error for the whole
    subset, so a sequence weighs what its tokens weigh (induction's). ``per_token``: the mean of
    ``token_relative_errors`` over every token instead (the recovery's)."""
    num = den = 0.0
    for mb, Y in zip(minibatches, targets, strict=True):
        Y = Y.to(device).float()
        Y_hat = forward_with(layer, params, *mb.on(device)).float()
        if per_token:
            num += float(token_relative_errors(Y_hat, Y).sum())
            den += Y.shape[0] * Y.shape[1]
        else:
            num += float((Y_hat - Y).square().sum())
            den += float(Y.square().sum())
    return num / max(den, 1e-30)


def token_relative_errors(Y_hat: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Each token's squared error over its own ||y||^2 ([b, seq] of [b, seq, hidden]): what the
    next layer's RMSNorm sees. A ratio over the whole batch would fit the few massive-norm tokens
    of Gemma 3's residual stream (docs/induction.md, "Recovery")."""
    Y = Y.float()
    return (Y_hat.float() - Y).square().sum(-1) / Y.square().sum(-1).clamp_min(1e-30)


def forward_with(
    layer: nn.Module, params: dict[str, torch.Tensor], hidden: torch.Tensor, kwargs: dict[str, Any]
) -> torch.Tensor:
    """The layer's output with ``params`` in place of its own (nothing is written to the module)."""
    out = functional_call(layer, params, (hidden,), kwargs, strict=False)
    return out[0] if isinstance(out, tuple) else out


def split_minibatches(batches: Sequence[Batch], size: int) -> Iterator[Minibatch]:
    """Cut each walker batch into pieces of at most ``size`` sequences. Tensors in kwargs whose
    first dimension is the batch size are cut alongside; broadcast ones are shared. A KV cache is
    dropped: it would grow with every forward and keep the autograd graph alive."""
    for batch in batches:
        kwargs = {k: v for k, v in batch.kwargs.items() if k not in _CACHE_KWARGS}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        b = batch.hidden.shape[0]
        for i in range(0, b, size):
            j = min(i + size, b)
            if (i, j) == (0, b):
                yield Minibatch(batch.hidden, kwargs)
            else:
                yield Minibatch(batch.hidden[i:j], cut_batch(kwargs, b, i, j))
