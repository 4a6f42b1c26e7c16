"""Sparsity Induction ablation on the benchmark model: per-layer pruned reconstruction error.

For a few decoder layers of SmolLM2-135M (dense inputs from the pydoc calibration text), prune the
layer with magnitude / Wanda / SparseGPT at 50% and 2:4, with and without Sparsity Induction,
and print the layer's relative output error ||Y - Y_pruned|| / ||Y - X|| (the error relative to
what the block adds to the residual stream) and the time of induction against the time of the
pruning step (statistics pass + pruner + output pass). Then the ablations of docs/induction.md.

    python -m benchmarks.induction_ablation                       # main table, layers 3, 15, 27
    python -m benchmarks.induction_ablation --variants ablations --layers 5,20 --pruners wanda --targets 2:4
    python -m benchmarks.induction_ablation --pruners wanda --swap-rounds 20 --layers 5,15,25 \
        --variants 'SI={"epochs":1};alone 10={"epochs":0,"permute_rounds":10};alone 50={"epochs":0}'

"err" = ||Y - Y_pruned|| / ||Y - X||; "gain" = 1 - err^2 / err_plain^2; "ratio" = induction time /
the plain pruning step's time (process CPU time: noisy on a shared machine). Inputs are the dense
model's (no error from earlier layers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import time
from typing import Any

import torch
from torch import nn

from spruce.core.arch import ArchSpec, decoder_layers, layer_linears
from spruce.core.data import batched, calibration_ids
from spruce.core.induction import induce_layer
from spruce.core.models import load_model
from spruce.core.passes import collect_stats
from spruce.core.pruners import prune_weight
from spruce.core.sparsity import LayerTarget
from spruce.core.spec import InductionSpec, TextSpec
from spruce.core.walker import LayerBatch, capture_inputs, run_layer, walk

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
    from spruce.core.induction.batches import split_minibatches
    from spruce.core.induction.train import dense_pass
    from spruce.core.induction.transform import plan_layer

    plan = plan_layer(layer, arch)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    mbs = list(split_minibatches(batches, 8))
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
    swap_rounds: int = 0,
) -> tuple[float, float]:
    """(relative error of the pruned layer's output against ``Y``, seconds of the pruning step).

    ``bias_correction`` (an experiment, not the product: Llama has no linear biases) adds
    b += (W - W_pruned) mean(x) to every pruned linear, which is what an input shift by the mean
    would do if the layer had biases to fold it into."""
    means = input_means(layer, arch, batches) if bias_correction else {}
    start = time.process_time()
    want_hessian = pruner == "sparsegpt" or (pruner == "wanda" and swap_rounds > 0)
    stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=want_hessian)
    for name, lin in layer_linears(layer, arch).items():
        r = prune_weight(
            lin.weight.data,
            pruner,
            target,
            stats.get(name) if pruner != "magnitude" else None,
            col_weight=col_weights.get(name),
            swap_rounds=swap_rounds if pruner == "wanda" else 0,
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
    swap_rounds: int = 0,
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
            swap_rounds=swap_rounds if pruner == "wanda" else 0,
        )
        cw = res.col_weights
        row.update(
            ind_s=time.process_time() - start,
            chosen=res.info["chosen"],
            init_loss=res.init_loss,
            final_loss=res.final_loss,
        )
    err, sec = prune_and_measure(work, arch, batches, pruner, target, cw, Y, bias_correction, swap_rounds)
    row.update(err=err, prune_s=sec)
    return row


# name -> InductionSpec overrides on the defaults; None = plain pruning. A name starting with
# "+bias" also applies the mean-shift bias correction (an experiment: see prune_and_measure).
MAIN: dict[str, dict[str, Any] | None] = {"plain": None, "SI": {}}
ABLATIONS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "SI (defaults)": {},
    "group scales only (per_linear off)": {"per_linear": False},
    "no regulariser (reg 0)": {"reg": 0.0},
    "reg 1e-2": {"reg": 1e-2},
    "3 epochs": {"epochs": 3},
    "soft mask": {"mask": "soft"},
    "temperature 0.2": {"temperature": 0.2},
    "init one": {"init": "one"},
    "init rms^1": {"init": "rms", "init_alpha": 1.0},
    "init median^1": {"init": "median", "init_alpha": 1.0},
    "+bias plain": None,
    "+bias SI": {},
}
PRESETS = {"main": MAIN, "ablations": ABLATIONS}


def parse_variants(text: str) -> dict[str, dict[str, Any] | None]:
    """A preset name, or ``name=json;name=json`` (an empty json is the defaults)."""
    if text in PRESETS:
        return PRESETS[text]
    out: dict[str, dict[str, Any] | None] = {"plain": None}
    for item in text.split(";"):
        name, _, over = item.partition("=")
        out[name] = json.loads(over) if over else ({} if not name.startswith("+bias plain") else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", default="3,15,27")
    ap.add_argument("--pruners", default=",".join(PRUNERS))
    ap.add_argument("--targets", default="50%,2:4")
    ap.add_argument("--variants", default="main", help="main | ablations | 'name={json};name={json}'")
    ap.add_argument("--swap-rounds", type=int, default=0, help="Wanda's swaps (the service's default: 20)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    loaded = load_model("smollm2-135m")
    model, arch = loaded.model, loaded.arch
    ids, _ = calibration_ids(loaded.tokenizer, TextSpec(samples=args.samples, seq_len=args.seq_len))
    wanted = [int(x) for x in args.layers.split(",")]
    inputs = layer_inputs(model, arch, ids, wanted, bs=8)
    variants = parse_variants(args.variants)
    print("| layer | pruner | target | variant | err | gain | ratio | chosen |")
    print("|---|---|---|---|---|---|---|---|")
    for i in wanted:
        layer = decoder_layers(model, arch)[i]
        batches = inputs[i]
        Y = run_layer(layer, batches, device="cpu")
        for pruner in args.pruners.split(","):
            for tname in args.targets.split(","):
                base: dict[str, Any] | None = None
                for vname, over in variants.items():
                    spec = None if over is None else dataclasses.replace(InductionSpec(enabled=True), **over)
                    row = run_variant(
                        layer, arch, batches, pruner, TARGETS[tname], spec, Y, vname.startswith("+bias"),
                        args.swap_rounds,
                    )  # fmt: skip
                    base = base or row
                    gain = 100 * (1 - row["err"] ** 2 / base["err"] ** 2)
                    ratio = f"{row['ind_s'] / base['prune_s']:.2f}" if "ind_s" in row else "-"
                    print(
                        f"| {i} | {pruner} | {tname} | {vname} | {row['err']:.4f} | {gain:.1f}% | {ratio} "
                        f"| {row.get('chosen', '-')} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
