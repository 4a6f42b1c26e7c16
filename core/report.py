"""report.json: the full spec, versions, seeds, timings and every measurement of a run."""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.models import LoadedModel
    from core.spec import CompressionSpec

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("spruce", "torch", "transformers", "compressed-tensors", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _induction_targets(spec: CompressionSpec) -> str | None:
    """What the scales trained against, the settings' "auto" resolved; None where they did not train."""
    if spec.induction_scales_skipped is not None:
        return None
    return "model" if spec.induction_fits_model else "layer"


def induction_row(result: Any) -> dict[str, Any]:
    """A layer's induction training (``core.induction.InductionResult``) for the report."""
    return _curve(result, "init_loss", result.init_loss)


def recovery_row(result: Any) -> dict[str, Any]:
    """A layer's recovery scales (``core.induction.recover.RecoveryResult``) for the report."""
    return _curve(result, "identity_loss", result.identity_loss)


def _curve(result: Any, start_key: str, start: float) -> dict[str, Any]:
    return {
        "losses": [round(float(x), 8) for x in result.losses],
        start_key: float(start),
        "final_loss": float(result.final_loss),
        "seconds": round(float(result.seconds), 4),
        "info": result.info,
    }


def build(
    *,
    spec: CompressionSpec,
    loaded: LoadedModel,
    calibration: dict[str, Any],
    evaluation: dict[str, dict[str, Any]],
    dense_ppl: dict[str, float],
    sparse_ppl: dict[str, float],
    layers: list[dict[str, Any]],
    sparsity: dict[str, Any],
    outliers: list[float] | None,
    factorization: list[dict[str, Any]],
    device: str,
) -> dict[str, Any]:
    induction = None
    if spec.induction.enabled:
        rows = [r["induction"] for r in layers if r.get("induction")]
        induction = {
            "settings": dataclasses.asdict(spec.induction),
            "epochs": spec.induction_epochs,  # the settings' -1 resolved for this pruner
            "scales_skipped": spec.induction_scales_skipped,
            "targets": _induction_targets(spec),
            "seconds": round(sum(r["seconds"] for r in rows), 4),
            "recover_epochs": spec.induction.recover_epochs_for(spec.pruner),  # the settings' -1 resolved
            "samples": spec.induction.samples_for(spec.pruner),  # the same; 0: every sequence
            "recovery": _recovery_summary(layers) if spec.recovers else None,
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "versions": versions(),
        "device": device,
        "spec": spec.to_dict(),
        "plan": spec.resolve().to_dict(),  # every setting as it ran, auto and -1 resolved
        "model": loaded.meta,
        "calibration": calibration,
        "evaluation": evaluation,
        "perplexity": {"dense": dense_ppl, "sparse": sparse_ppl},
        "sparsity": sparsity,
        "allocation": {
            "method": spec.allocation,
            "ratios": [r["target"] for r in layers],
            "outlier_ratios": outliers,
        },
        "induction": induction,
        "factorization_retries": factorization,
        "layers": layers,
        "resumed": False,
    }


def _recovery_summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r["recovery"] for r in layers if r.get("recovery")]
    return {
        "targets": rows[0]["info"]["targets"] if rows else None,
        "layers_recovered": sum(r["info"]["chosen"] == "trained" for r in rows),
        "layers": len(rows),
        "seconds": round(sum(r["seconds"] for r in rows), 4),
    }


def write(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable))
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
