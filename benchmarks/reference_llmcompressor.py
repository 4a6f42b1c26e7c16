"""Reference run of llm-compressor on the Spruce benchmark (see shared/BENCHMARK.md).

Runs llm-compressor's own MagnitudePruningModifier, WandaPruningModifier and
SparseGPTModifier (default settings) through ``oneshot`` on SmolLM2-135M, with the
benchmark's calibration set and perplexity, so that Spruce's speed can be quoted as a
ratio against a reference measured on the same machine, back to back.

It runs inside its own virtualenv (/opt/llmc-venv, see benchmarks/README.md) and must not
import Spruce: the two projects pin different transformers / compressed-tensors.

Each configuration runs in a fresh child process, so that its peak resident memory is its
own and llm-compressor's global session starts clean.

    /opt/llmc-venv/bin/python benchmarks/reference_llmcompressor.py \
        --only dense --only magnitude:0.5 --json /tmp/llmc.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("reference_llmcompressor")

DEFAULT_MODEL = Path.home() / ".cache/spruce/models/smollm2-135m"
# Text C (BENCHMARK.md), as Spruce caches it on first use (core.fortunes); evaluated whole.
DEFAULT_FORTUNES = Path.home() / ".cache/spruce/texts/fortunes.txt"
SEQ_LEN = 512
SAMPLES = 32
SEED = 0
MAX_WINDOWS = 40
EVAL_BATCH = 8
CALIB_FRACTION = 0.6

# Every Linear inside the decoder layers (q, k, v, o, gate, up, down) ends in "_proj";
# lm_head does not (and is tied to the embeddings in SmolLM2, so it must never be pruned).
TARGETS = ["re:.*_proj$"]
IGNORE = ["re:.*lm_head"]

PRUNERS = ("magnitude", "wanda", "sparsegpt")
ALL_CONFIGS = ["dense"] + [f"{p}:{s}" for p in PRUNERS for s in ("0.5", "2:4", "4:8", "0.7")]


def parse_config(config: str) -> tuple[str, float, str]:
    """'wanda:0.5' -> ('wanda', 0.5, 'unstructured'); 'sparsegpt:2:4' -> (.., 0.5, '2:4')."""
    if config == "dense":
        return "dense", 0.0, "unstructured"
    pruner, _, rest = config.partition(":")
    if pruner not in PRUNERS or not rest:
        raise SystemExit(f"bad config {config!r}: expected dense or PRUNER:SPARSITY|N:M")
    if ":" in rest:
        n, m = (int(x) for x in rest.split(":"))
        return pruner, 1.0 - n / m, f"{n}:{m}"
    return pruner, float(rest), "unstructured"


def text_a() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(v for _, v in sorted(topics.items()))


def token_spans(tokenizer) -> tuple[list[int], list[int]]:
    """The benchmark's token stream split into calibration (first 60%) and evaluation."""
    ids = tokenizer(text_a(), add_special_tokens=False)["input_ids"]
    cut = int(CALIB_FRACTION * len(ids))
    return ids[:cut], ids[cut:]


def calibration_rows(span: list[int]) -> list[list[int]]:
    import torch

    seed = int(os.environ.get("SPRUCE_REF_SEED", SEED))  # --seed, passed to the worker process
    offsets = torch.randint(0, len(span) - SEQ_LEN, (SAMPLES,), generator=torch.Generator().manual_seed(seed))
    return [span[o : o + SEQ_LEN] for o in offsets.tolist()]


def perplexity(model, span: list[int]) -> float:
    """exp(mean next-token NLL) over consecutive 512-token windows (HF labels convention)."""
    import torch
    import torch.nn.functional as F

    n = min(len(span) // SEQ_LEN, MAX_WINDOWS)
    windows = torch.tensor(span[: n * SEQ_LEN], dtype=torch.long).view(n, SEQ_LEN)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(EVAL_BATCH):
            logits = model(input_ids=batch).logits.float()  # (b, T, V)
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                batch[:, 1:].reshape(-1),
                reduction="sum",
            )
            total += nll.item()
            count += batch[:, 1:].numel()
            del logits
    return math.exp(total / count)


def achieved_sparsity(model, mask_structure: str) -> dict:
    """Zero fraction over the pruned Linears; for N:M, whether every group obeys it."""
    import torch

    fracs, nm_ok = [], True
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.Linear) and name.endswith("_proj")):
            continue
        W = module.weight.detach()
        fracs.append((W == 0).float().mean().item())
        if mask_structure != "unstructured":
            n, m = (int(x) for x in mask_structure.split(":"))
            groups = (W.reshape(W.shape[0], -1, m) != 0).sum(-1)  # (rows, cols/m)
            nm_ok = nm_ok and bool((groups <= n).all())
    out = {
        "layers": len(fracs),
        "mean": sum(fracs) / len(fracs),
        "min": min(fracs),
        "max": max(fracs),
    }
    if mask_structure != "unstructured":
        out["nm_ok"] = nm_ok
    return out


def make_recipe(pruner: str, sparsity: float, mask_structure: str):
    """llm-compressor's own modifier for this row, with its default settings."""
    if pruner == "magnitude":
        from llmcompressor.modifiers.pruning import MagnitudePruningModifier

        # Magnitude pruning is scheduled (init -> final over [start, end]); a one-shot
        # prune is the degenerate schedule that starts at step 0 at the final sparsity.
        return MagnitudePruningModifier(
            targets=TARGETS,
            init_sparsity=sparsity,
            final_sparsity=sparsity,
            start=0,
            end=1,
            mask_structure=mask_structure,
        )
    mask = "0:0" if mask_structure == "unstructured" else mask_structure
    if pruner == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return WandaPruningModifier(targets=TARGETS, ignore=IGNORE, sparsity=sparsity, mask_structure=mask)
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    return SparseGPTModifier(targets=TARGETS, ignore=IGNORE, sparsity=sparsity, mask_structure=mask)


def magnitude_step(model, recipe) -> None:
    """Apply MagnitudePruningModifier through llm-compressor's training lifecycle.

    Under ``oneshot`` this modifier computes its masks but never multiplies them into the
    weights: it does that only on an OPTIM_POST_STEP event (or in forward hooks that
    oneshot cannot enable), and oneshot's data-free pipeline sends neither, so the model
    comes back dense. One empty training step of llm-compressor's own session API sends
    that event; the masks and their application are llm-compressor's code throughout.
    """
    from llmcompressor.core import LifecycleCallbacks, active_session

    session = active_session()
    session.reset()
    session.initialize(model=model, recipe=recipe, start=0)  # masks computed here
    LifecycleCallbacks.batch_start()
    LifecycleCallbacks.optim_post_step()  # weight *= mask
    LifecycleCallbacks.batch_end()
    session.finalize()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # KiB on Linux


def run_one(
    config: str,
    model_dir: Path,
    threads: int,
    magnitude_via_oneshot: bool = False,
    fortunes: Path | None = None,
    batch_size: int = 1,
) -> dict:
    """One configuration in this process: load, prune (timed alone), evaluate."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    pruner, sparsity, mask_structure = parse_config(config)
    if pruner == "magnitude" and mask_structure != "unstructured":
        # llm-compressor's mask factory has no N:M creator for this modifier
        # ('unstructured', 'channel', 'filter', 'block_*' only): it raises ValueError.
        return {
            "config": config,
            "error": f"MagnitudePruningModifier has no mask_structure {mask_structure!r}",
        }

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    calib_span, eval_span = token_spans(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()

    row: dict = {"config": config, "tokens": len(calib_span) + len(eval_span), "batch_size": batch_size}
    seconds = None
    if pruner != "dense":
        from llmcompressor import oneshot

        dataset = Dataset.from_dict({"input_ids": calibration_rows(calib_span)})
        recipe = make_recipe(pruner, sparsity, mask_structure)
        t0 = time.perf_counter()
        if pruner == "magnitude" and not magnitude_via_oneshot:
            magnitude_step(model, recipe)
        else:
            oneshot(
                model=model,
                tokenizer=tokenizer,
                dataset=dataset,
                recipe=recipe,
                num_calibration_samples=SAMPLES,
                max_seq_length=SEQ_LEN,
                shuffle_calibration_samples=False,
                batch_size=batch_size,
                sequential_targets=[type(model.model.layers[0]).__name__],
            )
        seconds = time.perf_counter() - t0
        row["sparsity"] = achieved_sparsity(model, mask_structure)
    row["seconds"] = seconds
    row["peak_rss_after_prune_gib"] = peak_rss_gib()
    row["perplexity"] = {"pydoc": perplexity(model, eval_span)}
    if fortunes is not None:
        text_c = tokenizer(fortunes.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        row["perplexity"]["fortunes"] = perplexity(model, text_c)
    row["peak_rss_gib"] = peak_rss_gib()
    return row


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in ("llmcompressor", "compressed-tensors", "transformers", "torch", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def fmt(row: dict) -> str:
    if "error" in row:
        return f"| {row['config']} | n/a | n/a | n/a | n/a | {row['error']} |"
    secs = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
    sp = row.get("sparsity")
    sp_s = "-" if sp is None else f"{100 * sp['mean']:.2f}% [{100 * sp['min']:.2f}, {100 * sp['max']:.2f}]"
    if sp and "nm_ok" in sp:
        sp_s += " N:M ok" if sp["nm_ok"] else " N:M VIOLATED"
    ppl = " / ".join(f"{v:.2f}" for v in row["perplexity"].values())
    return (
        f"| {row['config']} | {ppl} | {secs} | "
        f"{row['peak_rss_after_prune_gib']:.2f} | {row['peak_rss_gib']:.2f} | {sp_s} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="config to run (repeatable): " + ", ".join(ALL_CONFIGS))
    ap.add_argument("--json", type=Path, help="write rows and versions here")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fortunes", type=Path, default=DEFAULT_FORTUNES, help="text C; 'none' skips it")
    ap.add_argument(
        "--magnitude-via-oneshot",
        action="store_true",
        help="run magnitude through oneshot as-is (shows that it leaves the weights dense)",
    )
    ap.add_argument("--seed", type=int, default=SEED, help="calibration sampling seed (BENCHMARK.md: 0)")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="calibration sequences per forward (oneshot's batch_size; its default 1 is the benchmark's): "
        "other values change only the forwards' rounding, which shows how much a row moves with it",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.worker:  # the worker inherits the variable (its own --seed stays the default)
        os.environ["SPRUCE_REF_SEED"] = str(args.seed)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.worker:
        fortunes = None if str(args.fortunes) == "none" else args.fortunes
        row = run_one(
            args.worker, args.model, args.threads, args.magnitude_via_oneshot, fortunes, args.batch_size
        )
        print("ROW " + json.dumps(row), flush=True)
        return 0

    configs = args.only or ALL_CONFIGS
    for c in configs:
        parse_config(c)
    if not (args.model / "model.safetensors").exists():
        raise SystemExit(f"model not found at {args.model}")

    info = versions()
    log.info("versions: %s", info)
    log.info(
        "| config | perplexity pydoc / fortunes | seconds (prune call) | peak RSS to prune GiB | peak RSS GiB | sparsity |"
    )
    log.info("|---|---|---|---|---|---|")
    rows = []
    for c in configs:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            c,
            "--model",
            str(args.model),
            "--threads",
            str(args.threads),
            "--fortunes",
            str(args.fortunes),
            "--batch-size",
            str(args.batch_size),
        ]
        if args.magnitude_via_oneshot:
            cmd.append("--magnitude-via-oneshot")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode != 0 or not found:
            sys.stderr.write(proc.stderr[-6000:])
            raise SystemExit(f"{c}: worker failed (exit {proc.returncode})")
        row = json.loads(found[-1][4:])
        rows.append(row)
        log.info(fmt(row))
    if args.json:
        args.json.write_text(json.dumps({"versions": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
