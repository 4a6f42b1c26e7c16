"""SparseGPT's row weights (``method.row_weight``) on real layers: the block's output error.

For a few decoder layers of SmolLM2-135M (dense inputs; statistics from the BENCHMARK.md
calibration set, 32 x 512 pydoc tokens), prune gate and up with SparseGPT (the engine's
defaults: layer-wide selection, ``order: auto``) with ``row_weight`` "none" and "output", and
print the layer's relative output error ||Y - Y_pruned|| / ||Y - X|| on held-out tokens (the first
8 x 512 of the evaluation span), with only gate and up pruned, and with every linear pruned.

    python -m benchmarks.row_weights                        # layers 3, 15, 27 at 50% and 70%
    python -m benchmarks.row_weights --layers 5,20 --ratios 0.6
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from benchmarks.induction_ablation import layer_inputs
from spruce.core.arch import ArchSpec, decoder_layers, layer_linears
from spruce.core.data import calibration_ids, evaluation_ids
from spruce.core.models import load_model
from spruce.core.passes import collect_stats
from spruce.core.pruners import mlp_row_weights, prune_weight
from spruce.core.sparsity import LayerTarget
from spruce.core.spec import TextSpec
from spruce.core.walker import LayerBatch, run_layer


def relative_error(layer: nn.Module, held: list[LayerBatch], Y: list[torch.Tensor]) -> float:
    out = run_layer(layer, held, device="cpu")
    num = sum(float((y - o).square().sum()) for y, o in zip(Y, out, strict=True))
    den = sum(float((y - b.hidden).square().sum()) for y, b in zip(Y, held, strict=True))
    return (num / den) ** 0.5


def pruned_copy(
    layer: nn.Module,
    arch: ArchSpec,
    calib: list[LayerBatch],
    ratio: float,
    row_weight: str,
    only_mlp_in: bool,
) -> nn.Module:
    """A copy of ``layer`` pruned as the engine would (statistics from the dense layer)."""
    pruned = copy.deepcopy(layer)
    sens: dict = {} if row_weight == "output" else None  # type: ignore[assignment]
    stats, _ = collect_stats(pruned, arch, calib, device="cpu", want_hessian=True, sensitivity=sens)
    lins = layer_linears(pruned, arch)
    weights = {n: mlp_row_weights(lins[arch.mlp_out].weight, s) for n, s in (sens or {}).items()}
    for name, lin in lins.items():
        if only_mlp_in and name not in arch.mlp_in:
            continue
        r = prune_weight(
            lin.weight.data,
            "sparsegpt",
            LayerTarget(ratio),
            stats[name],
            order="auto",
            row_weight=weights.get(name),
        )
        lin.weight.data.copy_(r.W)
    return pruned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="3,15,27")
    ap.add_argument("--ratios", default="0.5,0.7")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    ratios = [float(x) for x in args.ratios.split(",")]
    torch.set_grad_enabled(False)
    loaded = load_model("smollm2-135m")
    model, arch = loaded.model, loaded.arch
    ids, _ = calibration_ids(loaded.tokenizer, TextSpec(samples=32, seq_len=512))
    stream, _ = evaluation_ids(loaded.tokenizer, "pydoc")
    held_ids = stream[: 8 * 512].reshape(8, 512)
    calib_in = layer_inputs(model, arch, ids, layers, bs=8)
    held_in = layer_inputs(model, arch, held_ids, layers, bs=8)
    print("| layer | ratio | pruned | none | output | change |")
    print("|---|---|---|---|---|---|")
    for i in layers:
        layer = decoder_layers(model, arch)[i]
        Y = run_layer(layer, held_in[i], device="cpu")
        for ratio in ratios:
            for only in (True, False):
                errs = [
                    relative_error(pruned_copy(layer, arch, calib_in[i], ratio, rw, only), held_in[i], Y)
                    for rw in ("none", "output")
                ]
                what = "gate, up" if only else "every linear"
                change = errs[1] / errs[0] - 1
                print(
                    f"| {i} | {ratio:.0%} | {what} | {errs[0]:.4f} | {errs[1]:.4f} | {change:+.1%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
