"""SparseGPT, ours against llm-compressor's, on the same real weights and Hessians.

Two steps, two virtualenvs (llm-compressor pins other versions; see README.md here):

    .venv/bin/python -m benchmarks.sparsegpt_layer_compare ours --layer 15 --out /tmp/sgpt
    /opt/llmc-venv/bin/python -m benchmarks.sparsegpt_layer_compare llmc --out /tmp/sgpt

The first saves one SmolLM2 layer's weights and input Hessians (BENCHMARK.md calibration: 32 x 512
pydoc tokens, dense inputs) and prunes them with ``core.pruners.sparsegpt``; the second prunes the
same tensors with llm-compressor's ``sparsify_weight`` (block 128, dampening 0.01) and prints both
reconstruction errors tr((W - W') H (W - W')^T) per linear, at 2:4 and 50%.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TARGETS = ("2:4", "0.5")


def error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> float:
    E = (W - W_new).double()  # [out, in]
    return float(torch.einsum("ij,jk,ik->", E, H.double(), E))


def ours(layer_index: int, out: Path) -> None:
    from benchmarks.induction_ablation import layer_inputs
    from spruce.core.arch import decoder_layers, layer_linears
    from spruce.core.data import calibration_ids
    from spruce.core.models import load_model
    from spruce.core.passes import collect_stats
    from spruce.core.pruners import sparsegpt
    from spruce.core.sparsity import LayerTarget
    from spruce.core.spec import TextSpec

    loaded = load_model("smollm2-135m")
    model, arch = loaded.model, loaded.arch
    ids, _ = calibration_ids(loaded.tokenizer, TextSpec(samples=32, seq_len=512))
    batches = layer_inputs(model, arch, ids, [layer_index], bs=8)[layer_index]
    layer = decoder_layers(model, arch)[layer_index]
    stats, _ = collect_stats(layer, arch, batches, device="cpu", want_hessian=True)
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for name, lin in layer_linears(layer, arch).items():
        W, H = lin.weight.data.clone(), stats[name].hessian()
        tensors[name + ".W"], tensors[name + ".H"] = W, H
        for t in TARGETS:
            target = LayerTarget(0.5, 2, 4) if t == "2:4" else LayerTarget(0.5)
            errors[f"{name} {t}"] = error(W, sparsegpt(W, H, target).W, H)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, out / "layer.pt")
    (out / "ours.json").write_text(json.dumps(errors))
    print(f"saved {len(tensors) // 2} linears of layer {layer_index} to {out}")


def llmc(out: Path) -> None:
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight

    tensors = torch.load(out / "layer.pt")
    mine = json.loads((out / "ours.json").read_text())
    print("| linear | target | Spruce error | llm-compressor error | ratio |")
    print("|---|---|---|---|---|")
    for key in tensors:
        if not key.endswith(".W"):
            continue
        name = key[:-2]
        W, H = tensors[key], tensors[name + ".H"]
        for t in TARGETS:
            n, m = (2, 4) if t == "2:4" else (0, 0)
            lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
            lin.weight.data = W.clone()
            _, W_new = sparsify_weight(lin, {lin: H.clone()}, 0.5, n, m, 128, 0.01, False)
            theirs = error(W, W_new, H)
            a = mine[f"{name} {t}"]
            print(f"| {name} | {t} | {a:.5g} | {theirs:.5g} | {a / theirs:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=["ours", "llmc"])
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("/tmp/sgpt"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.side == "ours":
        ours(args.layer, args.out)
    else:
        llmc(args.out)


if __name__ == "__main__":
    main()
