"""How each stage's cost grows with the model's width (BENCHMARK.md, "Scaling").

One random decoder layer per shape (a ``LlamaDecoderLayer`` from a transformers ``LlamaConfig``
with the real widths, random weights), fed seeded random hidden states as its inputs. Per stage,
the engine's own functions: the statistics passes (``core.passes.collect_stats``, input norms and
X^T X: SparseGPT's from every token, the default Wanda's from one in two, for its swaps), SparseGPT
and Wanda (``core.pruners.prune_weight``, every linear, unstructured target),
Wanda's swaps (``core.swaps.swap_refine`` on Wanda's mask, the default rounds), the N:M channel
permutation search (``core.induction.permute.choose_permutations``, 2:4, the walk's default
rounds), induction's training (``induce_layer``, SparseGPT 2:4, permutation off so it is timed
alone), recovery (``recover_layer`` on the Wanda 2:4 layer) and the measurement (the pruned
layer's forward and its relative output error). Beside them, llm-compressor's Wanda and
SparseGPT on the same layer and inputs (``benchmarks/scaling_llmc.py`` in /opt/llmc-venv).

Each shape runs in a child process so that its peak memory is its own: per stage the resident
high-water mark (VmHWM, reset before the stage) on a CPU, ``torch.cuda.max_memory_allocated``
on a GPU. The growth exponent of a stage is the least-squares slope of log(seconds) against
log(hidden) over the shapes run.

    .venv/bin/python -m benchmarks.scaling --shapes smollm2,qwen1.5b --json /tmp/scaling.json
    .venv/bin/python -m benchmarks.scaling --shapes llama8b --device cuda --samples 128 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, int]] = {
    "smollm2": {"hidden": 576, "mlp": 1536, "heads": 9, "kv": 3},
    "qwen1.5b": {"hidden": 1536, "mlp": 8960, "heads": 12, "kv": 2},
    "llama8b": {"hidden": 4096, "mlp": 14336, "heads": 32, "kv": 8},
    "llama70b": {"hidden": 8192, "mlp": 28672, "heads": 64, "kv": 8},
}
STAGES = (
    "stats", "wanda_stats", "sparsegpt", "wanda", "swaps", "permute", "induction", "recovery", "measure",
)  # fmt: skip
PRUNERS = ("sparsegpt", "wanda")
LLMC_PYTHON = Path("/opt/llmc-venv/bin/python")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2,qwen1.5b,llama8b,llama70b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=None, help="calibration sequences (32 on CPU, 128 on GPU)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (512 on CPU, 2048 on GPU)")
    ap.add_argument("--batch", type=int, default=4, help="sequences per forward")
    ap.add_argument("--sparsity", type=float, default=0.5, help="the plain pruners' unstructured target")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llmc-python", type=Path, default=LLMC_PYTHON, help="llm-compressor's venv python")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one shape, in a child process
    ap.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)  # the layer, for llm-compressor
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    args.samples = args.samples or (128 if gpu else 32)
    args.seq_len = args.seq_len or (2048 if gpu else 512)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad += [s for s in shapes if s not in SHAPES]
    if bad:
        raise SystemExit(f"unknown stage or shape {bad}: stages {STAGES}, shapes {tuple(SHAPES)}")
    if args.child:
        from benchmarks.scaling_stages import run_shape

        out = run_shape(SHAPES[args.child], stages, args)
        args.json.write_text(json.dumps(out))
        return
    results: dict[str, Any] = {
        "device": args.device, "samples": args.samples, "seq_len": args.seq_len,
        "sparsity": args.sparsity, "shapes": {},
    }  # fmt: skip
    for name in shapes:
        results["shapes"][name] = _one_shape(name, stages, args)
        _print_shape(name, results["shapes"][name])
        if args.json:  # after every shape: a slow run still leaves what it measured
            args.json.write_text(json.dumps(results, indent=1))
    results["exponents"] = exponents(results["shapes"], stages)
    _print_exponents(results["exponents"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _one_shape(name: str, stages: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Spruce's stages in one child process, then llm-compressor's pruners in another."""
    with tempfile.TemporaryDirectory(prefix=f"scaling-{name}-") as tmp:
        folder = Path(tmp)
        ours = folder / "ours.json"
        want_llmc = args.llmc_python.exists() and any(p in stages for p in PRUNERS)
        cmd = [
            sys.executable, "-m", "benchmarks.scaling", "--child", name, "--stages", ",".join(stages),
            "--device", args.device, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
            "--batch", str(args.batch), "--sparsity", str(args.sparsity), "--seed", str(args.seed),
            "--json", str(ours), *(["--save", str(folder)] if want_llmc else []),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT)
        out: dict[str, Any] = json.loads(ours.read_text())
        out["llmc"] = None
        if want_llmc:
            llmc = folder / "llmc.json"
            subprocess.run(
                [str(args.llmc_python), str(ROOT / "benchmarks/scaling_llmc.py"), str(folder),
                 "--sparsity", str(args.sparsity), "--json", str(llmc)],
                check=True, cwd=ROOT,
            )  # fmt: skip
            out["llmc"] = json.loads(llmc.read_text())
    return out


def exponents(shapes: dict[str, Any], stages: list[str]) -> dict[str, float | None]:
    """Per stage, the least-squares slope of log(seconds) against log(hidden) (None under 2 shapes)."""
    out: dict[str, float | None] = {}
    for stage in stages:
        pts = [
            (math.log(s["hidden"]), math.log(s["stages"][stage]["seconds"]))
            for s in shapes.values()
            if stage in s["stages"] and s["stages"][stage]["seconds"] > 0
        ]
        out[stage] = _slope(pts)
    return out


def _slope(pts: list[tuple[float, float]]) -> float | None:
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _print_shape(name: str, r: dict[str, Any]) -> None:
    unit = "GPU MiB" if r["device"].startswith("cuda") else "RSS MiB"
    print(
        f"\n{name}: hidden {r['hidden']}, MLP {r['mlp']}, {r['samples']} x {r['seq_len']} tokens, "
        f"{r['device']}, build {r['build_s']:.1f} s"
    )
    print(f"{'stage':<11} {'seconds':>9} {'peak ' + unit:>14} {'llmc s':>9} {'ratio':>7}  note")
    llmc = r.get("llmc") or {}
    for stage, s in r["stages"].items():
        ref = llmc.get(stage)
        ref_s = ref["prune_s"] if ref else None
        if stage in _STATS_OF and llmc:  # llm-compressor's statistics pass of that pruner
            ref_s = llmc[_STATS_OF[stage]]["stats_s"]
        ratio = f"{s['seconds'] / ref_s:7.2f}" if ref_s else f"{'-':>7}"
        ref_txt = f"{ref_s:9.2f}" if ref_s else f"{'-':>9}"
        print(f"{stage:<11} {s['seconds']:9.2f} {s['peak_mib']:14.0f} {ref_txt} {ratio}  {s.get('note', '')}")
    if llmc:
        print(
            "  llm-compressor, statistics + prune: "
            + ", ".join(f"{p} {v['stats_s']:.2f} + {v['prune_s']:.2f} s" for p, v in llmc.items())
        )
    if not llmc:
        return
    st = r["stages"]
    for pruner, stats in _STATS_FOR.items():  # issue 25's 0.6x: each pruner with the statistics it reads
        if pruner in st and stats in st:
            ours = st[stats]["seconds"] + st[pruner]["seconds"]
            ref = llmc[pruner]["stats_s"] + llmc[pruner]["prune_s"]
            print(f"  {pruner} ({stats} + prune) {ours:.2f} s = {ours / ref:.2f}x llm-compressor's {pruner}")
    pipe = [st[k]["seconds"] for k in ("wanda_stats", "permute", "wanda", "swaps", "recovery") if k in st]
    if len(pipe) == 5:
        total = sum(pipe)
        ref = llmc["sparsegpt"]["stats_s"] + llmc["sparsegpt"]["prune_s"]
        print(f"  default Wanda 2:4 pipeline (wanda_stats+permute+wanda+swaps+recovery) {total:.2f} s = "
              f"{total / ref:.2f}x llm-compressor's SparseGPT (stats + prune)")  # fmt: skip


# Which statistics stage each pruner reads, and whose llm-compressor statistics pass a stage compares to.
_STATS_FOR = {"sparsegpt": "stats", "wanda": "wanda_stats"}
_STATS_OF = {v: k for k, v in _STATS_FOR.items()}


def _print_exponents(exps: dict[str, float | None]) -> None:
    print("\ngrowth exponent in the hidden size (slope of log seconds vs log hidden):")
    for stage, e in exps.items():
        print(f"  {stage:<11} {'-' if e is None else f'{e:.2f}'}")
    known = [e for p in PRUNERS if (e := exps.get(p)) is not None]
    if not known:
        return
    bar = max(known)
    for stage, e in exps.items():
        if e is not None and stage not in PRUNERS and e > bar + 0.25:
            print(f"  FINDING: {stage} grows as hidden^{e:.2f}, faster than the pruners (hidden^{bar:.2f})")


if __name__ == "__main__":
    main()
