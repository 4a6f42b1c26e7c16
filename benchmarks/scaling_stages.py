"""The stages ``benchmarks/scaling.py`` times on one random decoder layer, each through the engine's
own functions (core/ is read, never changed). Runs in the child process of one shape."""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class Peak:
    """Per stage peak memory: the resident high-water mark on a CPU (core.report's, reset per
    stage), ``max_memory_allocated`` on a GPU; MiB."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        from spruce.core.report import reset_peak_rss

        reset_peak_rss()

    def read(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        from spruce.core.report import peak_rss_bytes

        return peak_rss_bytes() / 2**20


def build_layer(shape: dict[str, int], args: argparse.Namespace, device: torch.device) -> tuple[Any, ...]:
    """A one-layer Llama of ``shape`` with random weights, its arch, and the layer's calibration
    batches: the model's own masks and rotary tables, random hidden states (seeded) as inputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from spruce.core.arch import arch_for, decoder_layers
    from spruce.core.walker import LayerBatch, capture_inputs

    config = LlamaConfig(
        hidden_size=shape["hidden"], intermediate_size=shape["mlp"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv"], num_hidden_layers=1, vocab_size=128,
        max_position_embeddings=max(args.seq_len, 2048), attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config).eval()
    arch = arch_for(model)
    layer = decoder_layers(model, arch)[0].to(device)
    gen = torch.Generator().manual_seed(args.seed)
    ids = [
        torch.randint(0, 128, (min(args.batch, args.samples - i), args.seq_len), generator=gen)
        for i in range(0, args.samples, args.batch)
    ]
    captured = capture_inputs(model, arch, ids, device=device, store_device=device)
    batches = [
        LayerBatch(hidden=torch.randn(b.hidden.shape, generator=gen).to(device), kwargs=b.kwargs)
        for b in captured
    ]
    return config, arch, layer, batches


def run_shape(shape: dict[str, int], stages: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every stage asked for on one layer of ``shape``: seconds, peak memory and a note each."""
    from spruce.core.induction import induce_layer
    from spruce.core.induction.permute import choose_permutations
    from spruce.core.induction.recover import recover_layer
    from spruce.core.induction.transform import plan_layer
    from spruce.core.passes import collect_stats
    from spruce.core.prune_step import relative_error
    from spruce.core.pruners import prune_weight, reconstruction_error
    from spruce.core.sparsity import LayerTarget, Sparsity
    from spruce.core.spec import CompressionSpec
    from spruce.core.spec.traits import traits
    from spruce.core.swaps import swap_refine
    from spruce.core.walker import run_layer

    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    peak = Peak(device)
    started = time.perf_counter()
    config, arch, layer, batches = build_layer(shape, args, device)
    build_s = time.perf_counter() - started
    if args.save is not None:
        _save_for_llmc(args.save, config, layer, batches, args.batch)
    spec = CompressionSpec(model="scaling", sparsity=Sparsity(args.sparsity))
    ind = spec.induction
    unstructured = LayerTarget(args.sparsity)
    nm = LayerTarget(0.5, 2, 4)
    linears = dict(layer.named_modules())
    names = list(arch.linears)
    out: dict[str, Any] = {}
    state: dict[str, Any] = {}

    def timed(stage: str, fn: Callable[[], str | Callable[[], str]]) -> None:
        """Time ``fn``; a note it returns as a function (an error to measure) runs off the clock."""
        if stage not in stages:
            return
        peak.reset()
        t0 = time.perf_counter()
        note = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, peak_mib = time.perf_counter() - t0, peak.read()
        out[stage] = {"seconds": seconds, "peak_mib": peak_mib, "note": note() if callable(note) else note}
        print(f"  {stage}: {seconds:.2f} s  {out[stage]['note']}", flush=True)

    def stats() -> str:
        state["stats"], state["dense"] = collect_stats(layer, arch, batches, device=device, want_hessian=True)
        return "input norms and X^T X of the 4 input groups"

    def wanda_stats() -> str:
        every = traits("wanda").hessian_every
        collect_stats(layer, arch, batches, device=device, want_hessian=True, hessian_every=every)
        return f"Wanda's: input norms, X^T X (for its swaps) from one token in {every}"

    def pruner(name: str) -> Callable[[], Callable[[], str]]:
        def run() -> Callable[[], str]:
            res = {n: prune_weight(linears[n].weight.data, name, unstructured, state["stats"][n],
                                   blocksize=spec.blocksize, dampening=spec.dampening) for n in names}  # fmt: skip
            state[name] = res
            return lambda: (
                f"{args.sparsity:.0%}, mean rel. error "
                + (f"{_mean_error(res, linears, state['stats'], reconstruction_error):.4f}")
            )

        return run

    def swaps() -> str:
        gained, n = 0.0, 0
        for name in names:
            W, st = linears[name].weight.data, state["stats"][name]
            base = state["wanda"][name].keep if "wanda" in state else None
            if base is None:
                base = prune_weight(W, "wanda", unstructured, st).keep
            r = swap_refine(W, base, st.H, unstructured, spec.swaps)
            gained, n = gained + r.gain, n + r.swaps
        return f"{spec.swaps} rounds, {n} swaps, mean gain {gained / len(names):.3f}"

    def permute() -> str:
        rounds = ind.rounds_for("wanda", trains=False)
        perm = choose_permutations(layer, plan_layer(layer, arch), nm, "wanda", state["stats"], {},
                                   dampening=spec.dampening, rounds=rounds, generator=torch.Generator().manual_seed(0))  # fmt: skip
        return f"2:4, {rounds} rounds (down, o)" + (
            " both found" if perm.down is not None and perm.o is not None else ""
        )

    def induction() -> str:
        from dataclasses import replace

        work = copy.deepcopy(layer)
        with torch.enable_grad():
            r = induce_layer(work, arch, batches, device=device, target=nm, pruner="sparsegpt",
                             spec=replace(ind, permute=False), generator=torch.Generator().manual_seed(0),
                             dampening=spec.dampening, blocksize=spec.blocksize)  # fmt: skip
        return f"SparseGPT 2:4, {len(r.losses)} steps, loss {r.init_loss:.4f} -> {r.final_loss:.4f}"

    def recovery() -> str:
        work = copy.deepcopy(layer)
        for n, lin in work.named_modules():
            if n in names:
                lin.weight.data.copy_(prune_weight(lin.weight.data, "wanda", nm, state["stats"][n]).W)
        with torch.enable_grad():
            r = recover_layer(work, arch, batches, state["dense"], device=device,
                              epochs=ind.recover_epochs_for("wanda"), lr=ind.recover_lr,
                              weights_lr=ind.recover_weights_lr, samples=ind.samples_for("wanda"),
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
        return f"Wanda 2:4 layer, {len(r.losses)} steps, {r.identity_loss:.4f} -> {r.final_loss:.4f} ({r.chosen})"

    def measure() -> str:
        work = state["pruned"]
        err = relative_error(state["dense"], run_layer(work, batches, device=device))
        return f"pruned layer's forward, rel. output error {err:.4f}"

    timed("stats", stats)
    if "stats" not in state:  # every later stage reads them
        stats()
    timed("wanda_stats", wanda_stats)
    for name in ("sparsegpt", "wanda"):
        timed(name, pruner(name))
    if "measure" in stages:  # the pruned layer it measures, built off the clock
        state["pruned"] = work = copy.deepcopy(layer)
        for n, lin in work.named_modules():
            if n in names:
                lin.weight.data.copy_(state["sparsegpt"][n].W if "sparsegpt" in state else
                                      prune_weight(lin.weight.data, "magnitude", unstructured, None).W)  # fmt: skip
    for stage, fn in (("swaps", swaps), ("permute", permute), ("induction", induction),
                      ("recovery", recovery), ("measure", measure)):  # fmt: skip
        timed(stage, fn)
    return {
        "hidden": shape["hidden"], "mlp": shape["mlp"], "samples": args.samples, "seq_len": args.seq_len,
        "device": str(device), "build_s": build_s, "stages": out,
    }  # fmt: skip


def _mean_error(res: dict[str, Any], linears: dict[str, Any], stats: dict[str, Any], err: Callable) -> float:
    vals = [err(linears[n].weight.data, r.W, stats[n].H) for n, r in res.items()]
    return sum(vals) / len(vals)


def _save_for_llmc(folder: Path, config: Any, layer: torch.nn.Module, batches: list[Any], batch: int) -> None:
    """The layer's weights, config and calibration inputs, for ``benchmarks/scaling_llmc.py``."""
    from safetensors.torch import save_file

    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "num_hidden_layers", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_parameters")  # fmt: skip
    cfg = {k: getattr(config, k) for k in keys if hasattr(config, k)}
    (folder / "config.json").write_text(json.dumps({"config": cfg, "batch": batch}))
    save_file({k: v.detach().cpu().contiguous() for k, v in layer.state_dict().items()},
              str(folder / "layer.safetensors"))  # fmt: skip
    hidden = torch.cat([b.hidden.detach().cpu() for b in batches])
    save_file({"hidden": hidden.contiguous()}, str(folder / "hidden.safetensors"))
