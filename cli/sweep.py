"""`spruce sweep`: one job body at several targets (x pruners x presets) through POST /v1/sweeps;
with --wait, follows it and prints the table and the Pareto front.

Reads the service URL and key from --url/--key or SPRUCE_URL / SPRUCE_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from spruce.client import Client, SpruceError, Sweep


def register(sub: Any) -> None:
    s = sub.add_parser(
        "sweep",
        help="run one job at several sparsity targets and compare them",
        description="Submit a sweep: one job per target (x pruner x preset) on one calibration set; "
        "prints its id, or with --wait its table and Pareto front.",
    )
    s.add_argument("--url", default=None, help="service URL (default $SPRUCE_URL or http://127.0.0.1:8000)")
    s.add_argument("--key", default=None, help="API key (default $SPRUCE_API_KEY)")
    s.add_argument("--file", type=Path, help="a job.json body shared by every child (flags override it)")
    s.add_argument("--model", help="the model (required unless --file names it)")
    s.add_argument("--targets", required=True, help="comma-separated targets, e.g. 0.5,2:4,0.7")
    s.add_argument("--pruners", help="comma-separated pruners, e.g. wanda,sparsegpt (each target with each)")
    s.add_argument("--presets", help="comma-separated presets, e.g. default,reference")
    s.add_argument("--calib", help="calibration source shared by every child")
    s.add_argument("--samples", type=int, help="calibration sequences")
    s.add_argument("--eval", action="append", help="evaluation source (repeat for several; the first ranks)")
    s.add_argument("--within", type=float, help="with --wait: also name the sparsest row within this "
                   "fraction of dense perplexity (0.1: 10%%)")  # fmt: skip
    s.add_argument("--wait", action="store_true", help="follow the sweep until every job ends")
    s.add_argument("--json", action="store_true", help="print the sweep as JSON")
    s.set_defaults(func=run_sweep)


def _items(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _target(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value  # "2:4"


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The shared job body from --file and the flags (a flag wins over the file's field)."""
    spec: dict[str, Any] = json.loads(args.file.read_text()) if args.file else {}
    if args.model:
        spec["model"] = args.model
    if "model" not in spec:
        raise SpruceError("--model is required (or give it in --file)")
    calibration = {k: v for k, v in (("source", args.calib), ("samples", args.samples)) if v is not None}
    if calibration:
        spec["calibration"] = {**spec.get("calibration", {}), **calibration}
    if args.eval:
        spec.setdefault("evaluation", {})["sources"] = args.eval
    return spec


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def table_lines(rows: list[dict[str, Any]], text: str | None) -> list[str]:
    """The sweep's rows as aligned text: one line per child."""
    head = ("target", "pruner", "preset", "status", "sparsity", f"dense ppl {text or ''}".strip(),
            f"sparse ppl {text or ''}".strip(), "hf MB", "compact MB", "job")  # fmt: skip
    cells = [head]
    for r in rows:
        dense = r["perplexity"]["dense"].get(text) if text else None
        sparse = r["perplexity"]["sparse"].get(text) if text else None
        cells.append((
            str(r["target"]), r.get("pruner") or "-", r.get("preset") or "-", r["status"],
            _num(r["sparsity"], ".4f"), _num(dense, ".3f"), _num(sparse, ".3f"),
            _mb(r.get("hf_bytes")), _mb(r.get("compact_bytes")), r["job"],
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def report(sweep: Sweep) -> str:
    raw = sweep.raw
    text = raw.get("text")
    lines = [f"sweep {sweep.id}: {sweep.status} ({raw['progress']['done']}/{raw['progress']['total']} jobs)", ""]
    lines += table_lines(sweep.table, text)
    if sweep.pareto:
        lines += ["", f"Pareto front (sparsity up, perplexity on {text} down):"]
        lines += table_lines(sweep.pareto, text)
    if raw.get("within") is not None:
        best = raw.get("best_within")
        pct = f"{raw['within']:.0%}"
        lines += ["", f"sparsest within {pct} of dense: " + (
            f"target {best['target']} (sparsity {best['sparsity']:.4f}, job {best['job']})" if best else "none"
        )]  # fmt: skip
    return "\n".join(lines)


def run_sweep(args: argparse.Namespace) -> int:
    try:
        client = Client(args.url, args.key)
        sweep = client.sweep(
            build_spec(args),
            [_target(t) for t in _items(args.targets) or []],
            pruners=_items(args.pruners),
            presets=_items(args.presets),
        )
        if args.wait:
            last = [-1]

            def show(s: Sweep) -> None:
                done = s.raw["progress"]["done"]
                if done != last[0] and not args.json:
                    print(f"{s.id}: {s.status}, {done}/{s.raw['progress']['total']} jobs done", file=sys.stderr)
                last[0] = done

            client.wait_sweep(sweep.id, on_progress=show)
            sweep = _read(client, sweep.id, args.within)
    except SpruceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(sweep.raw, indent=2))
    elif args.wait:
        print(report(sweep))
    else:
        print(sweep.id)
    return 0 if not args.wait or sweep.status == "succeeded" else 1


def _read(client: Client, sweep_id: str, within: float | None) -> Sweep:
    params = {} if within is None else {"within": within}
    return Sweep.of(client.request("GET", f"/v1/sweeps/{sweep_id}", params=params))
