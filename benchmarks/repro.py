"""Reproduction check for engine refactors: the same jobs must prune to the same bits.

Runs ``core.compress.compress`` on tiny random models (tests/tiny.py: no download) for a fixed list
of configurations -- magnitude, Wanda and SparseGPT at 50%, 2:4 and 70% with OWL, each with and
without induction, plus the walks ``method.sequential`` chooses between and two other
architectures -- and writes, per configuration, the SHA-256 of every pruned weight tensor, the
report's per-layer rows without their timings (reconstruction errors, sparsity, swaps, induction
and recovery curves, permutation choices) and the report's key paths (its JSON shape).

    python benchmarks/repro.py --out before.json            # at one commit
    python benchmarks/repro.py --out after.json --compare before.json

``--compare`` lists every difference and exits 1 if there is one; keys the report gained are
not differences. The figures depend on the machine (bfloat16 forwards
where the CPU multiplies them natively), so compare runs of one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.tiny import tiny_model_dir

# The engine is spruce.core since the namespace change, core before: the script compares both.
try:
    import spruce.core as core
    from spruce.core.compress import compress
    from spruce.core.spec import CompressionSpec
except ImportError:
    import core  # type: ignore[no-redef]
    from core.compress import compress  # type: ignore[no-redef]
    from core.spec import CompressionSpec  # type: ignore[no-redef]

SMOLLM2 = "smollm2-135m"  # the benchmark model's alias (core.models)
SPARSITIES: dict[str, tuple[Any, str]] = {
    "50": (0.5, "uniform"),
    "2:4": ("2:4", "uniform"),
    "70owl": (0.7, "owl"),
}


def configs(smollm2: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, arch, job body without model) for every configuration checked; ``smollm2`` adds
    three on the benchmark model (2 sequences of 128 tokens)."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    if smollm2:
        for pruner, sparsity in (("magnitude", 0.5), ("wanda", "2:4"), ("sparsegpt", "2:4")):
            method = {"pruner": pruner, "induction": {"enabled": True}}
            body = _body(sparsity, method)
            body["calibration"].update(samples=2, seq_len=128)
            out.append((f"smollm2-{pruner}-{sparsity}-ind", SMOLLM2, body))
    for pruner in ("magnitude", "wanda", "sparsegpt"):
        for tag, (sparsity, allocation) in SPARSITIES.items():
            for induction in (False, True):
                method = {"pruner": pruner, "allocation": allocation, "induction": {"enabled": induction}}
                name = f"{pruner}-{tag}-{'ind' if induction else 'plain'}"
                out.append((name, "llama", _body(sparsity, method)))
    # the layer walk where "auto" takes the linear walk, and other architectures (biases, tied heads)
    for pruner, sparsity in (("sparsegpt", "2:4"), ("wanda", 0.5), ("sparsegpt", 0.5)):
        method = {"pruner": pruner, "sequential": "layer", "induction": {"enabled": True}}
        out.append((f"{pruner}-{sparsity}-layer-ind", "llama", _body(sparsity, method)))
    # induction's scales trained (against the dense model or layer), recovery, magnitude's quality setting
    trained = {
        "wanda-2:4-noswaps-train": ("2:4", {"pruner": "wanda", "swap_rounds": 0}, {}),
        "sparsegpt-2:4-fitlayer-train": ("2:4", {"pruner": "sparsegpt", "fit_to": "layer"}, {}),
        "wanda-50-noswaps-train-layer": (0.5, {"pruner": "wanda", "swap_rounds": 0}, {"targets": "layer"}),
        "magnitude-2:4-quality": (
            "2:4",
            {"pruner": "magnitude"},
            {"epochs": 1, "recover_epochs": 1, "samples": 0},
        ),
    }
    for name, (sparsity, method, induction) in trained.items():
        method = {**method, "induction": {"enabled": True, **induction}}
        out.append((name, "llama", _body(sparsity, method)))
    for arch in ("opt", "qwen2"):
        for pruner, sparsity in (("sparsegpt", "2:4"), ("wanda", 0.5)):
            method = {"pruner": pruner, "induction": {"enabled": True}}
            out.append((f"{arch}-{pruner}-{sparsity}-ind", arch, _body(sparsity, method)))
    return out


def _body(sparsity: Any, method: dict[str, Any]) -> dict[str, Any]:
    return {
        "sparsity": sparsity,
        "method": method,
        "calibration": {"source": "pydoc", "samples": 8, "seq_len": 64, "seed": 1},
        "evaluation": {"sources": ["none"]},
        "options": {"batch_size": 4},
    }


def _in_schema(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (written in the job body's first shape, settings beside the public options) in the
    shape this tree's ``CompressionSpec.from_dict`` reads: where the spec has an ``experimental``
    object, the settings move there (``core.spec.schema.moved``)."""
    try:
        schema = importlib.import_module(CompressionSpec.__module__.rsplit(".", 1)[0] + ".schema")
    except ImportError:
        return body
    moved = schema.moved(CompressionSpec)
    flat: dict[str, Any] = {}

    def visit(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{prefix}.{k}" if prefix else k)
        else:
            flat[prefix] = value

    visit(body, "")
    out: dict[str, Any] = {}
    for path, value in flat.items():
        path = "method.induction" if path == "method.induction.enabled" else moved.get(path, path)
        node = out
        *heads, last = path.split(".")
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    return out


def _scrub(value: Any) -> Any:
    """The value without wall-clock figures (keys naming seconds)."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _paths(value: Any, prefix: str = "") -> set[str]:
    """Key paths of a JSON value (list items merged under ``[]``)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(f"{prefix}.{k}")
            out |= _paths(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for v in value:
            out |= _paths(v, f"{prefix}[]")
    return out


def run_one(root: Path, name: str, arch: str, body: dict[str, Any]) -> dict[str, Any]:
    model = arch if arch == SMOLLM2 else str(tiny_model_dir(root / "models", arch, layers=3, hidden=128))
    spec = CompressionSpec.from_dict(_in_schema({"model": model, **body}))
    out = root / name.replace(":", "_")
    started = time.perf_counter()
    report = compress(spec, out_dir=out).to_dict()
    seconds = time.perf_counter() - started
    weights = load_file(out / "hf" / "model.safetensors")
    hashes = {
        k: hashlib.sha256(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for k, v in sorted(weights.items())
    }
    return {
        "weights": hashes,
        "layers": _scrub(report["layers"]),
        "sparsity": report["sparsity"],
        "allocation": report["allocation"],
        "factorization_retries": report["factorization_retries"],
        "sequential": report["sequential"],
        "compute_dtype": report["compute_dtype"],
        "report_paths": sorted(_paths(report)),
        "_seconds": round(seconds, 2),
    }


def _covers(now: Any, before: Any) -> bool:
    """``now`` holds every value of ``before``: equal, where dicts may have gained keys."""
    if isinstance(before, dict):
        return isinstance(now, dict) and all(k in now and _covers(now[k], v) for k, v in before.items())
    if isinstance(before, list):
        return isinstance(now, list) and len(now) == len(before) and all(map(_covers, now, before))
    return bool(now == before)


def compare(now: dict[str, Any], before: dict[str, Any]) -> list[str]:
    diffs = []
    for name, row in before["configs"].items():
        got = now["configs"].get(name)
        if got is None:
            diffs.append(f"{name}: not run")
            continue
        for key, value in row.items():
            if key.startswith("_"):
                continue
            if key == "report_paths":
                lost = sorted(set(value) - set(got[key]))
                if lost:  # additive changes to the report are allowed
                    diffs.append(f"{name}: report lost keys {lost[:5]}")
            elif not _covers(got[key], value):  # additive changes to the report are allowed
                diffs.append(f"{name}: {key} differs")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="an earlier --out to check against")
    parser.add_argument("-k", help="only configurations whose name contains this")
    parser.add_argument("--smollm2", action="store_true", help="also three jobs on SmolLM2-135M")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (compare runs with the same)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"core": str(Path(core.__file__).parent), "threads": args.threads, "configs": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, arch, body in configs(args.smollm2):
            if args.k and args.k not in name:
                continue
            row = run_one(Path(tmp), name, arch, body)
            result["configs"][name] = row
            print(f"{name:32s} {row['_seconds']:6.1f}s", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"core: {result['core']}; {result['seconds']} s; written to {args.out}")
    if args.compare:
        before = json.loads(args.compare.read_text())
        if args.k:
            before["configs"] = {k: v for k, v in before["configs"].items() if args.k in k}
        diffs = compare(result, before)
        for d in diffs:
            print("DIFF", d)
        print(f"{len(before['configs'])} configurations compared: {'MISMATCH' if diffs else 'all match'}")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
