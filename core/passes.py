"""The walk's statistics passes over one decoder layer: ``collect_stats`` (input statistics of
every prunable linear), ``collect_paired_stats`` (with the cross statistics against the dense
model's stream) and ``prune_in_forward`` (each group pruned in turn inside one forward).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from spruce.core.arch import ArchSpec, input_groups, layer_linears, mlp_activation
from spruce.core.errors import SystemFault
from spruce.core.precision import Device, exact
from spruce.core.stats import InputStats, OutputSensitivity
from spruce.core.walker import LayerBatch, run_layer


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

    First the dense layer runs on ``reference``: the dense model's input of the layer where the
    writers (o, down / fc2) fit the dense model (``fit_reference``: they keep their outputs), else
    ``batch.hidden``; this pass also fills ``sensitivity``. Then ``batch`` runs, and a pre-hook on
    each input group's first linear accumulates the group's ``InputStats`` from what the forward
    brings there and calls ``prune(group, stats)``, which prunes the group in place before the
    forward goes on: each group is fitted on what the pruned groups before it produce. Where
    ``prune`` folded a permutation p of the group's inputs, the arriving input is reordered by p.

    Every token must be in the one batch. Hooks are removed even when the forward or ``prune``
    raises. ``timings["reference"]``: the seconds of the dense pass. ``hessian_every``: as in
    ``collect_stats`` (not for the writers with ``fit_reference``, whose cross statistics need
    every token). Returns (the pruned layer's output on ``batch``, the dense layer's on ``reference``).
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
        # Every _SENSITIVITY_EVERY-th token: a per-channel mean over thousands of tokens needs no more
        # (docs/pruners.md, "Row weights").
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
