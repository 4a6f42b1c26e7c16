"""The Spruce benchmark (../shared/BENCHMARK.md): quality and speed of every pruner configuration.

Each configuration runs in its own process (so peak memory is per row) through the same
``core.compress.compress`` the service uses: calibrated on pydoc (text A), evaluated on pydoc's
held-out span and on fortunes (text C, never calibrated on), on SmolLM2-135M or Gemma 3 270M.

    python benchmarks/quality.py                       # the table without Sparsity Induction
    python benchmarks/quality.py --induction both      # with and without induction
    python benchmarks/quality.py --only wanda:2:4 --only sparsegpt:0.5
    python benchmarks/quality.py --model gemma3-270m   # the second benchmark model
    python benchmarks/quality.py --reference llmc.json # llm-compressor's same rows, same run
    python benchmarks/quality.py --json results.json   # also save the raw rows
    python benchmarks/quality.py --preset reference    # the papers' methods, as llm-compressor runs them
    python benchmarks/quality.py --experimental '{"swap_rounds": 0, "induction": {"epochs": 2}}'

Reference figures (llm-compressor 0.14, SmolLM2, pydoc) are in ../shared/anchors.md; the
``ref`` columns repeat them, or take every text and model from ``--reference``, the JSON that
``reference_llmcompressor.py --json`` writes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

# llm-compressor 0.14 on this exact work (../shared/anchors.md): perplexity, seconds.
ANCHORS: dict[str, tuple[float, float]] = {
    "magnitude:0.5": (399.78, 7),
    "magnitude:2:4": (1877.50, 3),
    "magnitude:0.7": (596299, 9),
    "wanda:0.5": (24.71, 106),
    "wanda:2:4": (69.94, 103),
    "wanda:0.7": (363.33, 106),
    "sparsegpt:0.5": (18.21, 178),
    "sparsegpt:2:4": (29.16, 178),
    "sparsegpt:0.7": (58.92, 178),
}
DENSE_ANCHOR = 12.33

PRUNERS = ("magnitude", "wanda", "sparsegpt")
# (sparsity, allocation) per BENCHMARK.md: 50%, 2:4, 4:8, 70% uniform and 70% OWL.
TARGETS: tuple[tuple[str, str], ...] = (
    ("0.5", "uniform"),
    ("2:4", "uniform"),
    ("4:8", "uniform"),
    ("0.7", "uniform"),
    ("0.7", "owl"),
)


def _body(
    pruner: str,
    sparsity: str,
    allocation: str,
    induction: bool,
    samples: int,
    dense: bool,
    seed: int = 0,
    experimental: dict[str, Any] | None = None,
    model: str = "smollm2-135m",
    texts: tuple[str, ...] = ("pydoc", "fortunes"),
    preset: str = "default",
) -> dict[str, Any]:
    return {
        "model": model,
        "sparsity": sparsity if ":" in sparsity else float(sparsity),
        "method": {"pruner": pruner, "preset": preset, "allocation": allocation, "induction": induction},
        "calibration": {"source": "pydoc", "samples": samples, "seq_len": 512, "seed": seed},
        "evaluation": {"sources": list(texts)},
        "experimental": {
            **(experimental or {}),
            "evaluation": {"seq_len": 512, "max_windows": 40, "dense": dense},
        },
    }


def _child(body: dict[str, Any], threads: int, queue: Any) -> None:
    import torch

    from spruce.core.compress import compress
    from spruce.core.spec import CompressionSpec

    torch.set_num_threads(threads)
    report = compress(CompressionSpec.from_dict(body), device="cpu").to_dict()
    queue.put(report)


def run_one(body: dict[str, Any], threads: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(body, threads, queue))
    proc.start()
    report = queue.get()
    proc.join()
    return report


def row_of(label: str, key: str, report: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    t = report["timings"]
    step = t.get("prune", 0.0) + t.get("allocate", 0.0) + t.get("induction", 0.0)
    sp = report["sparsity"]
    ref = reference.get(key, {})
    ref_ppl, ref_s = (
        ANCHORS.get(key, (None, None)) if not reference else (ref.get("pydoc"), ref.get("seconds"))
    )
    return {
        "config": label,
        "ppl": report["perplexity"]["sparse"]["pydoc"],
        "ppl_c": report["perplexity"]["sparse"].get("fortunes"),
        "ref_c": ref.get("fortunes"),
        "seconds": step,
        "induction_s": t.get("induction", 0.0),
        "peak_gib": report.get("peak_rss_after_prune_bytes", report["peak_rss_bytes"]) / 2**30,
        "sp_mean": sp["mean"],
        "sp_min": sp["min"],
        "sp_max": sp["max"],
        "nm_ok": sp["nm_ok"],
        "ref_ppl": ref_ppl,
        "ref_s": ref_s,
    }


def _ppl(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(rows: list[dict[str, Any]], dense: dict[str, float]) -> None:
    if dense:
        print("\ndense perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in dense.items()))
    head = (
        "| config | A ppl | ref A | C ppl | ref C | step s | ref s | speed-up | induction s | peak GiB |"
        " sparsity mean/min/max | N:M ok |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        ref_ppl = f"{r['ref_ppl']:.2f}" if r["ref_ppl"] else "-"
        ref_s = f"{r['ref_s']:.0f}" if r["ref_s"] else "-"
        speed = f"{r['ref_s'] / r['seconds']:.1f}x" if r["ref_s"] and r["seconds"] > 0 else "-"
        nm = "-" if r["nm_ok"] is None else ("yes" if r["nm_ok"] else "NO")
        print(
            f"| {r['config']} | {r['ppl']:.2f} | {ref_ppl} | {_ppl(r['ppl_c'])} | {_ppl(r['ref_c'])} |"
            f" {r['seconds']:.1f} | {ref_s} | {speed} |"
            f" {r['induction_s']:.1f} | {r['peak_gib']:.2f} |"
            f" {r['sp_mean']:.4f}/{r['sp_min']:.4f}/{r['sp_max']:.4f} | {nm} |"
        )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--induction", choices=["off", "on", "both"], default="off")
    ap.add_argument("--only", action="append", default=None, help="pruner:sparsity[:owl], e.g. wanda:2:4")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="calibration sampling seed (BENCHMARK.md: 0)")
    ap.add_argument("--preset", choices=("default", "reference"), default="default")
    ap.add_argument(
        "--experimental",
        type=json.loads,
        default=None,
        help="experimental settings as JSON (the job body's object), e.g. '{\"dampening\": 0.1}'",
    )
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, gemma3-270m, or any model ref")
    ap.add_argument("--texts", default="pydoc,fortunes", help="evaluation texts, comma-separated")
    ap.add_argument(
        "--reference", type=Path, default=None, help="reference_llmcompressor.py --json output for this model"
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reports", type=Path, default=None, help="folder for each row's full report.json")
    ap.add_argument(
        "--skip-dense", action="store_true", help="do not evaluate the dense model (saves a pass)"
    )
    args = ap.parse_args(argv)

    configs = [(p, s, a) for p in PRUNERS for s, a in TARGETS]
    if args.only:
        wanted = set(args.only)
        # "wanda:0.7" is the uniform row, "wanda:0.7:owl" the OWL one
        configs = [
            (p, s, a) for p, s, a in configs if (f"{p}:{s}" if a == "uniform" else f"{p}:{s}:{a}") in wanted
        ]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.induction]
    rows: list[dict[str, Any]] = []
    dense: dict[str, float] = {}
    texts = tuple(t for t in args.texts.split(",") if t)
    reference = _reference(args.reference) if args.reference else {}
    dense_wanted = not args.skip_dense
    started = time.time()
    for pruner, sparsity, allocation in configs:
        for induction in modes:
            # anchors.md is SmolLM2's: another model's reference comes from --reference only
            anchored = allocation == "uniform" and (args.model == "smollm2-135m" or args.reference)
            key = f"{pruner}:{sparsity}" if anchored else ""
            body = _body(
                pruner, sparsity, allocation, induction, args.samples, dense_wanted, args.seed,
                args.experimental, args.model, texts, args.preset,
            )  # fmt: skip
            dense_wanted = False
            preset = "" if args.preset == "default" else f" [{args.preset}]"
            label = f"{pruner} {sparsity}{' owl' if allocation == 'owl' else ''}{' +SI' if induction else ''}{preset}"
            report = run_one(body, args.threads)
            if args.reports:
                args.reports.mkdir(parents=True, exist_ok=True)
                name = label.replace(" ", "_").replace(":", "-").replace("+", "")
                (args.reports / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
            dense = dense or report["perplexity"].get("dense", {})
            rows.append(row_of(label, key, report, reference))
            ppl = " / ".join(f"{t} {_ppl(v)}" for t, v in report["perplexity"]["sparse"].items())
            print(f"[{time.time() - started:.0f}s] {label}: ppl {ppl}", file=sys.stderr, flush=True)
    print_table(rows, dense)
    if args.json:
        args.json.write_text(json.dumps({"dense": dense, "rows": rows}, indent=2))
    return 0


def _reference(path: Path) -> dict[str, Any]:
    """llm-compressor's rows by config key: perplexity per text and seconds of the pruning call."""
    rows = json.loads(path.read_text())["rows"]
    return {r["config"]: {**r.get("perplexity", {}), "seconds": r.get("seconds")} for r in rows}


if __name__ == "__main__":
    sys.exit(main())
