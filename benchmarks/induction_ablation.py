"""Sparsity Induction ablation on the benchmark model: per-layer pruned reconstruction error.

For a few decoder layers of SmolLM2-135M (dense inputs from the pydoc calibration text), prune the
layer with magnitude / Wanda / SparseGPT at 50% and 2:4, with and without Sparsity Induction,
and print the layer's relative output error ||Y - Y_pruned|| / ||Y - X|| (the error relative to
what the block adds to the residual stream) and the time of induction against the time of the
pruning step (statistics pass + pruner + output pass). Then the ablations of docs/induction.md.

    python -m benchmarks.induction_ablation --samples 16 --layers 3,15,27 --table main
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.arch import ArchSpec, decoder_layers, layer_linears
from core.data import batched, calibration_ids
from core.induction import induce_layer
from core.models import load_model
from core.pruners import prune_weight
from core.sparsity import LayerTarget
from core.spec import InductionSpec, TextSpec
from core.walker import LayerBatch, capture_inputs, collect_stats, run_layer, walk

TARGETS = {"50%": LayerTarget(0.5), "2:4": LayerTarget(0.5, 2, 4)}
PRUNERS = ("magnitude", "wanda", "sparsegpt")


def layer_inputs(
    model: nn.Module, arch: ArchSpec, ids: torch.Tensor, wanted: list[int], bs: int
) -> dict[int, list[LayerBatch]]:
    """Dense inputs of the ``wanted`` layers (one dense walk)."""
    found: dict[int, list[LayerBatch]] = {}

    def visit(i: int, layer: nn.Module, batches: list[LayerBatch]) -> None:
        if i in wanted:
            found[i] = batches
        if i >= max(wanted):
            raise _Done

    with contextlib.suppress(_Done):
        walk(
            model,
            arch,
            capture_inputs(model, arch, batched(ids, bs), device="cpu"),
            device="cpu",
            visit=visit,
        )
    return found


class _Done(Exception):
    pass


def input_means(layer: nn.Module, arch: ArchSpec, batches: list[LayerBatch]) -> dict[str, torch.Tensor]:
    """Per linear, the mean of its input over the calibration tokens (dense layer)."""
    from core.induction.train import _minibatches, dense_pass
    from core.induction.transform import plan_layer

    plan = plan_layer(layer, arch)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    mbs = list(_minibatches(batches, 8))
    _, stats = dense_pass(layer, plan, params, mbs, device=torch.device("cpu"), want_H=False)
    return {path: stats[plan.group_of(path)].sum / stats[plan.group_of(path)].n for path in arch.linears}


def prune_and_measure(
    layer: nn.Module,
    arch: ArchSpec,
    batches: list[LayerBatch],
    pruner: str,
    target: LayerTarget,
    col_weights: dict[str, torch.Tensor],
    Y: list[torch.Tensor],
    bias_correction: bool = False,
) -> tuple[float, float]:
    """(relative error of the pruned layer's output against ``Y``, seconds of the pruning step).

    ``bias_correction`` (an experiment, not the product: Llama has no linear biases) adds
    b += (W - W_pruned) mean(x) to every pruned linear, which is what an input shift by the mean
    would do if the layer had biases to fold it into."""
    means = input_means(layer, arch, batches) if bias_correction else {}
    start = time.process_time()
    stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=pruner == "sparsegpt")
    for name, lin in layer_linears(layer, arch).items():
        r = prune_weight(
            lin.weight.data,
            pruner,
            target,
            stats.get(name) if pruner != "magnitude" else None,
            col_weight=col_weights.get(name),
        )
        if bias_correction:
            b = (lin.weight.data - r.W) @ means[name]
            lin.bias = nn.Parameter(b if lin.bias is None else lin.bias.data + b)
        lin.weight.data.copy_(r.W)
    out = run_layer(layer, batches, device="cpu")
    seconds = time.process_time() - start
    num = sum(float((y - o).square().sum()) for y, o in zip(Y, out, strict=True))
    den = sum(float((y - b.hidden).square().sum()) for y, b in zip(Y, batches, strict=True))
    return (num / den) ** 0.5, seconds


def run_variant(
    layer: nn.Module,
    arch: ArchSpec,
    batches: list[LayerBatch],
    pruner: str,
    target: LayerTarget,
    spec: InductionSpec | None,
    Y: list[torch.Tensor],
    bias_correction: bool = False,
) -> dict[str, Any]:
    work = copy.deepcopy(layer)
    row: dict[str, Any] = {}
    cw: dict[str, torch.Tensor] = {}
    if spec is not None:
        start = time.process_time()
        res = induce_layer(
            work,
            arch,
            batches,
            device="cpu",
            target=target,
            pruner=pruner,
            spec=spec,
            generator=torch.Generator().manual_seed(0),
        )
        cw = res.col_weights
        row.update(
            ind_s=time.process_time() - start,
            chosen=res.info["chosen"],
            init_loss=res.init_loss,
            final_loss=res.final_loss,
        )
    err, sec = prune_and_measure(work, arch, batches, pruner, target, cw, Y, bias_correction)
    row.update(err=err, prune_s=sec)
    return row


VARIANTS: dict[str, Callable[[InductionSpec], InductionSpec]] = {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", default="3,15,27")
    ap.add_argument("--pruners", default=",".join(PRUNERS))
    ap.add_argument("--targets", default="50%,2:4")
    ap.add_argument("--variants", default="default", help="name=json-overrides;... e.g. 'lr05={\"lr\":0.05}'")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    loaded = load_model("smollm2-135m")
    model, arch = loaded.model, loaded.arch
    ids, _ = calibration_ids(loaded.tokenizer, TextSpec(samples=args.samples, seq_len=args.seq_len))
    wanted = [int(x) for x in args.layers.split(",")]
    inputs = layer_inputs(model, arch, ids, wanted, bs=8)
    import json

    variants: dict[str, InductionSpec | None] = {"base": None}
    base_spec = InductionSpec(enabled=True)
    for item in args.variants.split(";"):
        name, _, over = item.partition("=")
        variants[name] = (
            None
            if name.startswith("biascorr") and not over
            else dataclasses.replace(base_spec, **(json.loads(over) if over else {}))
        )
    print(
        f"{'layer':>5} {'pruner':>9} {'target':>6} {'variant':>12} {'err':>8} {'vs base':>8} {'ind s':>6} {'prune s':>7} {'ratio':>5} chosen"
    )
    for i in wanted:
        layer = decoder_layers(model, arch)[i]
        batches = inputs[i]
        Y = run_layer(layer, batches, device="cpu")
        for pruner in args.pruners.split(","):
            for tname in args.targets.split(","):
                target = TARGETS[tname]
                base = None
                for vname, spec in variants.items():
                    row = run_variant(
                        layer, arch, batches, pruner, target, spec, Y, vname.startswith("biascorr")
                    )
                    if base is None:
                        base = row
                    gain = 100 * (1 - row["err"] ** 2 / base["err"] ** 2)
                    ratio = row.get("ind_s", 0.0) / base["prune_s"]
                    print(
                        f"{i:>5} {pruner:>9} {tname:>6} {vname:>12} {row['err']:8.4f} {gain:7.1f}% {row.get('ind_s', 0):6.2f} {row['prune_s']:7.2f} {ratio:5.2f} {row.get('chosen', '')}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
