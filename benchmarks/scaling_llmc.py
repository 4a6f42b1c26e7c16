"""llm-compressor's Wanda and SparseGPT on one decoder layer, for ``benchmarks/scaling.py``.

Runs inside llm-compressor's own virtualenv (/opt/llmc-venv; it pins other versions of
transformers) and imports nothing from Spruce. ``scaling.py`` saves the layer's config, weights
and calibration hidden states to a folder; this script rebuilds the same ``LlamaDecoderLayer``,
accumulates each linear's statistics with llm-compressor's own per-layer functions
(``accumulate_hessian`` / ``accumulate_row_scalars``, hooked on the linears' inputs as its
modifiers hook them) and prunes with its ``sparsify_weight`` (block 128, dampening 0.01, its
defaults), timing both steps and the peak resident memory of each.

    /opt/llmc-venv/bin/python benchmarks/scaling_llmc.py FOLDER --sparsity 0.5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch


def _peak_reset() -> None:
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the high-water mark so far
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _accumulating(accumulate: Any, state: dict, counts: dict) -> Any:
    """A forward pre-hook adding a linear's input to its statistics, as llm-compressor's modifiers do."""

    def hook(module: torch.nn.Module, args: tuple) -> None:
        state[module], counts[module] = accumulate(args[0], module, state[module], counts[module])

    return hook


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    from llmcompressor.modifiers.pruning.sparsegpt import sgpt_sparsify as sgpt
    from llmcompressor.modifiers.pruning.wanda import wanda_sparsify as wanda
    from safetensors.torch import load_file
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.set_grad_enabled(False)
    meta = json.loads((args.folder / "config.json").read_text())
    config = LlamaConfig(**meta["config"])
    config._attn_implementation = "sdpa"  # causal without a mask, as the model's own forward
    layer = LlamaDecoderLayer(config, layer_idx=0)
    layer.load_state_dict(load_file(str(args.folder / "layer.safetensors")))
    layer.eval()
    hidden = load_file(str(args.folder / "hidden.safetensors"))["hidden"]  # [samples, seq, hidden]
    batch = meta["batch"]
    rotary = LlamaRotaryEmbedding(config)
    seq = hidden.shape[1]
    position_ids = torch.arange(seq).unsqueeze(0)
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
    results: dict[str, dict[str, float]] = {}
    for name, (make, accumulate, sparsify, extra) in {
        "wanda": (wanda.make_empty_row_scalars, wanda.accumulate_row_scalars, wanda.sparsify_weight, {}),
        "sparsegpt": (
            sgpt.make_empty_hessian,
            sgpt.accumulate_hessian,
            sgpt.sparsify_weight,
            {"block_size": 128, "dampening_frac": 0.01, "preserve_sparsity_mask": False},
        ),
    }.items():
        _peak_reset()
        start = time.perf_counter()
        state = {m: make(m) for m in linears.values()}
        counts = {m: 0 for m in linears.values()}

        handles = [m.register_forward_pre_hook(_accumulating(accumulate, state, counts)) for m in linears.values()]
        for i in range(0, hidden.shape[0], batch):
            x = hidden[i : i + batch]
            cos_sin = rotary(x, position_ids)
            layer(x, attention_mask=None, position_ids=position_ids, position_embeddings=cos_sin)
        for h in handles:
            h.remove()
        stats_s = time.perf_counter() - start
        stats_mib = _peak_mib()
        _peak_reset()
        start = time.perf_counter()
        for m in linears.values():
            sparsify(m, state, args.sparsity, 0, 0, **extra)  # returns the pruned weight; discarded
        results[name] = {
            "stats_s": stats_s,
            "stats_peak_mib": stats_mib,
            "prune_s": time.perf_counter() - start,
            "prune_peak_mib": _peak_mib(),
        }
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
