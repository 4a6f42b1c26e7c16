"""What travels with a sparse checkpoint: a Hugging Face model card and the report, inside ``hf/``.

The card's metadata header is the Hub's (``base_model``, ``library_name``, ``tags``,
``pipeline_tag``); its body says how the model was made and what it measured, from the report
alone, so ``spruce download --only hf/`` keeps the whole story.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spruce.core.builtins import builtin_for

REPORT_NAME = "spruce_report.json"  # beside the weights; "report.json" could be mistaken for a config


def write_card(report: dict[str, Any], hf_dir: Path) -> None:
    """Write ``hf_dir/README.md`` (the model card) and ``hf_dir/spruce_report.json``."""
    hf_dir = Path(hf_dir)
    (hf_dir / REPORT_NAME).write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    (hf_dir / "README.md").write_text(model_card(report), encoding="utf-8")


def model_card(report: dict[str, Any]) -> str:
    """The card's text: a YAML metadata header, then the method, the figures and the plan."""
    spec = report.get("spec", {})
    method = spec.get("method", {})
    target = str(spec.get("sparsity", "?"))
    pruner = method.get("pruner", "?")
    induction = bool(report.get("induction"))
    base = base_model(report.get("model", {}))
    tags = ["sparse", "pruned", "spruce", str(pruner), f"sparsity-{target.replace(':', '-')}"]
    if induction:
        tags.append("sparsity-induction")
    header = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if base:
        header.append(f"base_model: {base}")
    header += ["tags:", *(f"- {t}" for t in tags), "---", ""]
    title = f"# {base or report.get('model', {}).get('ref', 'model')}, pruned to {target} with Spruce"
    body = [
        title,
        "",
        "Pruned weights are exact zeros inside dense safetensors: the folder loads with "
        "`AutoModelForCausalLM.from_pretrained` like the model it came from.",
        "",
        *_method(report, pruner, target, induction),
        *_figures(report),
        *_footer(report),
    ]
    return "\n".join(header + body) + "\n"


def base_model(model: dict[str, Any]) -> str:
    """The Hub id of the model that was pruned: a builtin's upstream id, or the hub ref itself."""
    ref = str(model.get("ref", ""))
    builtin = builtin_for(ref)
    if builtin is not None:
        return builtin.upstream
    return ref if model.get("source") == "hub" else ""


def _method(report: dict[str, Any], pruner: str, target: str, induction: bool) -> list[str]:
    sp = report.get("sparsity", {})
    cal = report.get("calibration", {})
    plan = report.get("plan", {})
    rows = [
        ("pruner", pruner),
        ("preset", plan.get("preset", report.get("spec", {}).get("method", {}).get("preset", "default"))),
        ("target", target),
        ("allocation", report.get("allocation", {}).get("method", "uniform")),
        ("Sparsity Induction", "on" if induction else "off"),
        ("achieved sparsity (mean, min, max)", _sparsity(sp)),
        (
            "calibration",
            f"{cal.get('source', '?')}: {cal.get('samples', '?')} x {cal.get('seq_len', '?')} tokens, "
            f"seed {cal.get('seed', '?')}",
        ),
        ("dtype", _dtype(report)),
    ]
    return ["## Method", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _dtype(report: dict[str, Any]) -> str:
    dtype_in = report.get("model", {}).get("dtype", "?")
    dtype_out = report.get("dtype_out")
    return f"{dtype_in} in, {dtype_out} out" if dtype_out else str(dtype_in)


def _sparsity(sp: dict[str, Any]) -> str:
    if "mean" not in sp:
        return "?"
    text = f"{sp['mean']:.4f}, {sp['min']:.4f}, {sp['max']:.4f}"
    if sp.get("nm_ok") is not None:
        text += ", every N:M group obeys" if sp["nm_ok"] else ", N:M VIOLATED"
    return text


def _figures(report: dict[str, Any]) -> list[str]:
    ppl = report.get("perplexity", {})
    dense, sparse = ppl.get("dense") or {}, ppl.get("sparse") or {}
    if not sparse:
        return []
    lines = ["## Evaluation", "", "| text | dense perplexity | sparse perplexity |", "|---|---|---|"]
    for text, value in sparse.items():
        before = dense.get(text)
        lines.append(f"| {text} | {'-' if before is None else f'{before:.2f}'} | {value:.2f} |")
    sizes = report.get("sizes", {})
    if sizes:
        lines += ["", "Sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in sizes.items())]
    return [*lines, ""]


def _footer(report: dict[str, Any]) -> list[str]:
    versions = report.get("versions", {})
    plan = report.get("plan") or report.get("spec") or {}
    return [
        "## Provenance",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        f"The whole report is `{REPORT_NAME}` beside this card. The resolved plan (every setting as it ran):",
        "",
        "```json",
        json.dumps(plan, indent=1, sort_keys=True, default=str),
        "```",
    ]
