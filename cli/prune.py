"""`spruce prune`: run the engine locally, with a progress bar and a summary table."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    from core.spec import COMPUTE_DTYPES, DTYPES  # light: no torch; the choices come from the spec

    p = sub.add_parser(
        "prune",
        help="prune a model locally (no service needed)",
        description="Run Sparsity Induction (optional) and pruning on this machine and write the results to --out.",
    )
    p.add_argument("--model", required=True, help="hub id, local folder, .gguf file, or 'smollm2-135m'")
    p.add_argument("--sparsity", required=True, help="a ratio such as 0.5, or N:M such as 2:4 or 4:8")
    p.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt"], help="pruner")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "owl"])
    p.add_argument(
        "--calib", default="pydoc", help="'pydoc', a .txt/.jsonl path, or a dataset name (wikitext2, c4)"
    )
    p.add_argument("--field", default="text", help="jsonl field holding the text")
    p.add_argument("--samples", type=int, default=32, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--eval",
        action="append",
        default=None,
        metavar="SOURCE",
        help="evaluation text (repeatable); 'none' skips evaluation; default: pydoc",
    )
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=40, help="at most this many evaluation windows")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument(
        "--compute-dtype",
        default="auto",
        choices=COMPUTE_DTYPES,
        help="dtype of the calibration forwards (auto: bfloat16 where the hardware has it natively)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward pass")
    p.add_argument("--blocksize", type=int, default=128, help="SparseGPT block size")
    p.add_argument(
        "--dampening", type=float, default=0.01, help="SparseGPT dampening (fraction of mean diag H)"
    )
    p.add_argument(
        "--order",
        choices=["auto", "ascending", "descending", "natural"],
        default="auto",
        help="SparseGPT: the column sweep order by input activity (auto: ascending unstructured, "
        "N:M groups descending)",
    )
    p.add_argument(
        "--row-weight",
        choices=["output", "none"],
        default="output",
        help="SparseGPT, unstructured: weigh the rows of gate/up (fc1) by their effect on the MLP's "
        "output (output), or every row alike (none)",
    )
    p.add_argument(
        "--sequential",
        choices=["auto", "linear", "layer"],
        default="auto",
        help="SparseGPT fitting the dense model, and Wanda with swaps: prune q/k/v, o, gate/up, down "
        "in turn inside one forward of every calibration token (linear), or take every linear's "
        "statistics from the dense layer (layer); auto: linear for those two when that forward "
        "fits a 4 GiB activation budget",
    )
    p.add_argument(
        "--swap-rounds",
        type=int,
        default=-1,
        help="Wanda: rounds of mask swaps against each linear's full X^T X (one swap per row per "
        "round, kept weights unchanged); 0 is the paper's Wanda; -1 (default): 20 for Wanda",
    )
    p.add_argument(
        "--fit-to",
        choices=["auto", "model", "layer"],
        default="auto",
        help="fit the layers that write into the residual stream to the dense model's outputs or "
        "to the dense layer's. SparseGPT (auto: model at N:M and ratios >= 0.5); Wanda with swaps "
        "(auto: layer; 'model' moves the swaps' target a quarter of the way to the dense model's)",
    )
    p.add_argument(
        "--fit-share",
        type=float,
        default=-1.0,
        help="where the pruner fits the dense model: how far the writers' target moves from the dense "
        "layer's output (0) to the dense model's (1), in (0, 1]; -1 (default): 0.5 for SparseGPT, "
        "0.25 for Wanda",
    )
    p.add_argument("--owl-lambda", type=float, default=0.08)
    p.add_argument("--owl-m", type=float, default=5.0)
    p.add_argument("--induction", action="store_true", help="run Sparsity Induction before pruning")
    p.add_argument(
        "--induction-epochs",
        type=int,
        default=None,
        help="training passes per layer (default 1; 0 for Wanda with swaps, unstructured SparseGPT "
        "and magnitude: docs/induction.md); 0 keeps the statistics initialisation alone",
    )
    p.add_argument("--induction-lr", type=float, default=None)
    p.add_argument("--induction-reg", type=float, default=None)
    p.add_argument("--induction-mask", choices=["ste", "soft"], default=None)
    p.add_argument(
        "--induction-targets",
        choices=["auto", "model", "layer"],
        default=None,
        help="train against the dense model's outputs of each layer (model, the default where the "
        "scales train) or the dense layer's on the pruned model's inputs (layer, the paper's)",
    )
    p.add_argument(
        "--induction-recover-epochs",
        type=int,
        default=None,
        help="after pruning, passes training one output and one input scale per linear with the mask "
        "fixed, folded into the sparse weights (default 1, 0 for magnitude; 0 turns the recovery off)",
    )
    p.add_argument("--induction-recover-lr", type=float, default=None)
    p.add_argument(
        "--induction-recover-weights-lr",
        type=float,
        default=None,
        help="recovery: Adam's step on each kept weight, relative to its linear's mean kept weight (0: scales only)",
    )
    p.add_argument(
        "--induction-samples",
        type=int,
        default=None,
        help="first calibration sequences induction trains and guards on (default: all, 1 for magnitude; 0: all)",
    )
    p.add_argument("--no-induction-shifts", action="store_true", help="scales only, no shifts")
    p.add_argument(
        "--no-induction-permute",
        action="store_true",
        help="N:M: keep the channel order of o and down (no permutation of their inputs)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for hf/, compact/ and report.json")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache (default $SPRUCE_CACHE_DIR or ~/.cache/spruce)",
    )
    p.add_argument("--json", action="store_true", help="print report.json to stdout instead of the table")
    p.set_defaults(func=run)


def spec_body(args: argparse.Namespace) -> dict[str, Any]:
    """The job body (same shape as the HTTP API) that these flags describe."""
    induction: dict[str, Any] = {"enabled": bool(args.induction)}
    for flag, key in (
        ("induction_epochs", "epochs"),
        ("induction_lr", "lr"),
        ("induction_reg", "reg"),
        ("induction_mask", "mask"),
        ("induction_targets", "targets"),
        ("induction_recover_epochs", "recover_epochs"),
        ("induction_recover_lr", "recover_lr"),
        ("induction_recover_weights_lr", "recover_weights_lr"),
        ("induction_samples", "samples"),
    ):
        if getattr(args, flag) is not None:
            induction[key] = getattr(args, flag)
    if args.no_induction_shifts:
        induction["shifts"] = False
    if args.no_induction_permute:
        induction["permute"] = False
    sparsity: Any = args.sparsity
    with contextlib.suppress(ValueError):
        sparsity = float(args.sparsity)
    evals = args.eval or ["pydoc"]
    return {
        "model": args.model,
        "sparsity": sparsity,
        "method": {
            "pruner": args.method,
            "allocation": args.allocation,
            "induction": induction,
            "blocksize": args.blocksize,
            "dampening": args.dampening,
            "fit_to": args.fit_to,
            "order": args.order,
            "row_weight": args.row_weight,
            "sequential": args.sequential,
            "swap_rounds": args.swap_rounds,
            "fit_share": args.fit_share,
            "owl_lambda": args.owl_lambda,
            "owl_m": args.owl_m,
        },
        "calibration": {
            "source": args.calib,
            "samples": args.samples,
            "seq_len": args.seq_len,
            "seed": args.seed,
            "field": args.field,
        },
        "evaluation": {
            "sources": [] if evals == ["none"] else evals,
            "seq_len": args.eval_seq_len,
            "max_windows": args.eval_windows,
        },
        "options": {"dtype": args.dtype, "compute_dtype": args.compute_dtype, "batch_size": args.batch_size},
    }


def run(args: argparse.Namespace) -> int:
    from core.errors import SpruceError, UserError
    from core.spec import CompressionSpec

    try:
        spec = CompressionSpec.from_dict(spec_body(args))
    except UserError as exc:
        print(f"spruce prune: error: {_flag(exc.param)}: {exc.message}", file=sys.stderr)
        return 2
    try:
        report = _run_with_bar(spec, args)
    except UserError as exc:
        print(f"spruce prune: error: {exc.message}", file=sys.stderr)
        return 2
    except SpruceError as exc:
        print(f"spruce prune: failed ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_summary(report.to_dict()))
        if args.out is not None:
            print(f"\nwrote {args.out}/hf, {args.out}/compact and {args.out}/report.json")
    return 0


def _flag(param: str | None) -> str:
    flags = {
        "model": "--model",
        "sparsity": "--sparsity",
        "method.pruner": "--method",
        "method.allocation": "--allocation",
        "calibration.samples": "--samples",
        "calibration.seq_len": "--seq-len",
        "calibration.source": "--calib",
        "evaluation.seq_len": "--eval-seq-len",
        "evaluation.max_windows": "--eval-windows",
    }
    if param is None:
        return "invalid arguments"
    if param.startswith("method.induction."):
        return "--induction-" + param.rsplit(".", 1)[1]
    return flags.get(param, param)


def _run_with_bar(spec: Any, args: argparse.Namespace) -> Any:
    from tqdm import tqdm

    from core.compress import compress
    from core.progress import Progress

    with tqdm(total=1000, unit="‰", file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}") as bar:

        def on_progress(p: Progress) -> None:
            where = f" layer {p.layer}/{p.layers}" if p.layer else ""
            bar.set_description_str(f"{p.stage}{where}")
            bar.update(int(p.fraction * 1000) - bar.n)

        return compress(
            spec, device=args.device, out_dir=args.out, on_progress=on_progress, cache_dir=args.cache_dir
        )


def format_summary(r: dict[str, Any]) -> str:
    """A plain-text table of what matters in a report."""
    lines = [
        f"model {r['model'].get('ref')}  target {r['sparsity']['target']}  pruner {r['spec']['method']['pruner']}"
    ]
    ppl = r["perplexity"]
    for src, s in ppl["sparse"].items():
        d = ppl["dense"].get(src)
        change = f"  dense {d:.3f}  ({(s / d - 1) * 100:+.1f}%)" if d else ""
        lines.append(f"perplexity[{src}]  sparse {s:.3f}{change}")
    sp = r["sparsity"]
    nm = "" if sp.get("nm_ok") is None else f"  N:M pattern {'ok' if sp['nm_ok'] else 'VIOLATED'}"
    lines.append(f"sparsity  overall {sp['overall']:.4f}  min {sp['min']:.4f}  max {sp['max']:.4f}{nm}")
    sizes = r.get("sizes", {})
    if sizes:
        lines.append("sizes  " + "  ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
    lines.append("seconds  " + "  ".join(f"{k} {v:.1f}" for k, v in r["timings"].items()))
    lines.append(f"peak memory {r['peak_rss_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)
