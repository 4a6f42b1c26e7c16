"""Spruce against llm-compressor on the same rows, back to back, row by row.

BENCHMARK.md asks for speed as a ratio against a reference run on the same machine at the same
time. This driver runs each configuration twice back to back (Spruce's ``quality.py`` in this
project's venv, then ``reference_llmcompressor.py`` in llm-compressor's venv, see
benchmarks/README.md), so that both figures of a row come from the same minutes of the same
machine, and prints one table: perplexity, seconds of the compression step, the speed ratio and
peak memory of both.

    .venv/bin/python benchmarks/same_session.py --json /tmp/same.json
    .venv/bin/python benchmarks/same_session.py --only wanda:0.7 --only sparsegpt:4:8
    .venv/bin/python benchmarks/same_session.py --preset reference   # the papers' methods on both sides

Nothing else should run on the machine meanwhile: the ratio is only as good as the quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_LLMC_PYTHON = Path("/opt/llmc-venv/bin/python")
# The rows both tools can run (llm-compressor 0.14's magnitude modifier has no N:M masks).
CONFIGS = (
    "magnitude:0.5",
    "magnitude:0.7",
    "wanda:0.5",
    "wanda:2:4",
    "wanda:4:8",
    "wanda:0.7",
    "sparsegpt:0.5",
    "sparsegpt:2:4",
    "sparsegpt:4:8",
    "sparsegpt:0.7",
)


def _run(cmd: list[str], out: Path) -> dict[str, Any]:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    if proc.returncode != 0 or not out.exists():
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd[:3])} ...: failed (exit {proc.returncode})")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _row(tool: str, python: Path, script: str, config: str, tmp: Path, extra: list[str]) -> dict[str, Any]:
    """One configuration through one tool's benchmark script: the first row of its JSON."""
    out = tmp / f"{tool}-{config.replace(':', '-')}.json"
    cmd = [str(python), str(HERE / script), "--only", config, *extra, "--json", str(out)]
    row: dict[str, Any] = _run(cmd, out)["rows"][0]
    return row


def table(pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    lines = [
        "| row | Spruce ppl | llm-c ppl | change | Spruce s | llm-c s | speed | Spruce peak GiB | llm-c peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, ours, ref in pairs:
        ppl, rppl = ours["ppl"], ref["perplexity"]
        s, rs = ours["seconds"], ref["seconds"]
        lines.append(
            f"| {config} | {ppl:.2f} | {rppl:.2f} | {100 * (ppl / rppl - 1):+.1f}% | {s:.1f} | {rs:.1f} |"
            f" {rs / s:.2f}x | {ours['peak_gib']:.2f} | {ref['peak_rss_after_prune_gib']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=CONFIGS, help="row to run (repeatable); default all")
    ap.add_argument("--llmc-python", type=Path, default=DEFAULT_LLMC_PYTHON)
    ap.add_argument("--seed", type=int, default=0, help="calibration sampling seed (BENCHMARK.md: 0)")
    ap.add_argument(
        "--preset", choices=("default", "reference"), default="default", help="Spruce's preset (method.preset)"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.llmc_python.exists():
        raise SystemExit(f"--llmc-python: {args.llmc_python} not found (benchmarks/README.md sets it up)")
    pairs: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    started = time.time()
    with tempfile.TemporaryDirectory() as d:
        for config in args.only or CONFIGS:
            seed = ["--seed", str(args.seed)]
            extra = ["--skip-dense", "--preset", args.preset, *seed]
            ours = _row("spruce", Path(sys.executable), "quality.py", config, Path(d), extra)
            ref = _row("llmc", args.llmc_python, "reference_llmcompressor.py", config, Path(d), seed)
            pairs.append((config, ours, ref))
            print(
                f"[{time.time() - started:.0f}s] {config}: Spruce {ours['ppl']:.2f} in {ours['seconds']:.1f} s,"
                f" llm-c {ref['perplexity']:.2f} in {ref['seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            if args.json:  # after every row, so an interrupted run keeps what it measured
                args.json.write_text(
                    json.dumps([{"config": c, "spruce": o, "llmc": r} for c, o, r in pairs], indent=2)
                )
    print(table(pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
