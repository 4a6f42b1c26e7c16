"""`spruce prune`: run the engine locally, with a progress bar and a summary table."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from spruce.core.errors import SpecError


def register(sub: argparse._SubParsersAction) -> None:
    from spruce.core.spec import CompressionSpec  # light: no torch; every option flag comes from the spec
    from spruce.core.spec.schema import leaves

    p = sub.add_parser(
        "prune",
        help="prune a model locally (no service needed)",
        description="Run Sparsity Induction (optional) and pruning on this machine and write the results "
        "to --out. Experimental settings (unstable, docs/spec.md): --set path=value, --experimental JSON.",
    )
    for leaf in leaves(CompressionSpec):
        if leaf.meta.public:
            _add_public(p, leaf)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="an experimental setting (repeatable; VALUE is JSON or a word), e.g. swap_rounds=0, induction.epochs=2",
    )
    p.add_argument("--experimental", type=_json_object, default={}, metavar="JSON",
                   help="experimental settings as one JSON object (--set applies after it)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=None, help="folder for hf/, compact/ and report.json")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="model cache (default $SPRUCE_CACHE_DIR or ~/.cache/spruce)",
    )
    p.add_argument("--json", action="store_true", help="print report.json to stdout instead of the table")
    p.set_defaults(func=run)


def flag_of(leaf: Any) -> str:
    """The CLI flag of a public option: its declared one, or --name of the last part of its path."""
    return str(leaf.meta.flag or "--" + leaf.path.rsplit(".", 1)[-1].replace("_", "-"))


def _add_public(p: argparse.ArgumentParser, leaf: Any) -> None:
    m, default = leaf.meta, leaf.default
    shown = "" if default is dataclasses.MISSING else f" (default: {_shown(default)})"
    kwargs: dict[str, Any] = {"dest": leaf.path.replace(".", "__"), "help": m.help + shown, "default": None}
    names = [flag_of(leaf)] + (["--method"] if leaf.path == "pruner" else [])  # --method: the old name
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    elif isinstance(default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, tuple):
        kwargs.update(action="append", metavar="SOURCE")
    elif isinstance(default, (int, float)):
        kwargs["type"] = type(default)
    if m.choices is not None:
        kwargs["choices"] = m.choices
    elif "action" not in kwargs:
        kwargs["metavar"] = leaf.path.rsplit(".", 1)[-1].upper()
    p.add_argument(*names, **kwargs)


def _shown(value: Any) -> str:
    return ", ".join(value) if isinstance(value, tuple) else str(value)


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def spec_body(args: argparse.Namespace) -> dict[str, Any]:
    """The job body (same shape as the HTTP API) that these flags describe."""
    from spruce.core.spec import CompressionSpec
    from spruce.core.spec.schema import leaves

    body: dict[str, Any] = {}
    for leaf in leaves(CompressionSpec):
        value = getattr(args, leaf.path.replace(".", "__"), None) if leaf.meta.public else None
        if value is None:
            continue
        if leaf.path == "sparsity":
            with contextlib.suppress(ValueError):
                value = float(value)
        if leaf.path == "evaluation.sources" and value == ["none"]:
            value = []
        _put(body, leaf.param, value)
    experimental = json.loads(json.dumps(args.experimental))  # (a copy)
    for item in args.set:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise SpecError(f"--set {item!r}: expected PATH=VALUE", param=None)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare word such as layer or ste
        _put(experimental, path.strip(), value)
    if experimental:
        body["experimental"] = experimental
    return body


def _put(target: dict[str, Any], path: str, value: Any) -> None:
    *heads, last = path.split(".")
    for head in heads:
        target = target.setdefault(head, {})
    target[last] = value


def run(args: argparse.Namespace) -> int:
    from spruce.core.errors import SpruceError, UserError
    from spruce.core.spec import CompressionSpec

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
    """The flag that sets ``param`` (a dotted place in the job body)."""
    from spruce.core.spec import CompressionSpec
    from spruce.core.spec.schema import leaves

    if param is None:
        return "invalid arguments"
    for leaf in leaves(CompressionSpec):
        if leaf.meta.public and leaf.param == param:
            return flag_of(leaf)
    if param.startswith("experimental."):
        return f"--set {param.removeprefix('experimental.')}"
    return param


def _run_with_bar(spec: Any, args: argparse.Namespace) -> Any:
    from tqdm import tqdm

    from spruce.core.compress import compress
    from spruce.core.progress import Progress

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
        f"  preset {r['spec']['method'].get('preset', 'default')}"
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
