"""report.json: the full spec, versions, seeds, timings and every measurement of a run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import resource
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spruce.core.models import LoadedModel
    from spruce.core.spec import CompressionSpec

SCHEMA_VERSION = 1


# The report's parts the service stores on the job row (GET /v1/jobs/{id} ``results``):
# evaluation_metrics, word/byte perplexity per text; tasks, lm-eval figures (None: no tasks);
# induction, its resolved settings and what it trained against (None when off); plan, every
# concrete value that ran (core.spec.plan).
RESULT_KEYS = (
    "perplexity", "evaluation_metrics", "tasks", "sparsity", "sizes", "timings", "layers", "resume", "induction",
    "plan",
)  # fmt: skip


@dataclass
class LayerTimings:
    """Seconds of one layer's walk spent apart from the pruning step itself (None: none spent;
    the report then has no key for it)."""

    measure: float | None = None  # forwards that only measure the layer's error
    induction: float | None = None  # induction's scales, permutation and recovery

    def add_measure(self, seconds: float) -> None:
        self.measure = (self.measure or 0.0) + seconds

    def add_induction(self, seconds: float) -> None:
        self.induction = (self.induction or 0.0) + seconds


@dataclass
class LayerRecord:
    """One decoder layer's row of the report (``report["layers"][i]``, ``to_dict``)."""

    index: int
    target: float  # the layer's sparsity ratio, rounded
    induction: dict[str, Any] | None = None  # ``induction_row``: the scales' training
    induction_skipped: str | None = None  # why induction's scales were not learned
    linears: dict[str, dict[str, Any]] = field(default_factory=dict)  # per linear: sparsity, errors
    recovery: dict[str, Any] | None = None  # ``recovery_row``
    permutation: dict[str, Any] | None = None  # induction's N:M channel permutation, chosen by the walk
    error_vs: str | None = None  # "dense model" where ``rel_error`` is not against the dense layer
    rel_error: float | None = None  # ||Y_dense - Y_sparse|| / ||Y_dense|| of the layer's outputs
    sparsity: float | None = None
    timings: LayerTimings = field(default_factory=LayerTimings)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "target": self.target, "induction": self.induction}
        optional = {
            "induction_skipped": self.induction_skipped,
            "measure_seconds": self.timings.measure,
            "induction_seconds": self.timings.induction,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        out["linears"] = self.linears
        later = {"recovery": self.recovery, "permutation": self.permutation, "error_vs": self.error_vs}
        out.update({k: v for k, v in later.items() if v is not None})
        out.update(rel_error=self.rel_error, sparsity=self.sparsity)
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> LayerRecord:
        """The record of a ``to_dict`` row (a checkpoint's)."""
        timings = LayerTimings(measure=row.get("measure_seconds"), induction=row.get("induction_seconds"))
        keys = ("induction", "induction_skipped", "linears", "recovery", "permutation", "error_vs")
        return cls(
            index=row["index"],
            target=row["target"],
            rel_error=row.get("rel_error"),
            sparsity=row.get("sparsity"),
            timings=timings,
            **{k: row[k] for k in keys if k in row},
        )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("spruce", "torch", "transformers", "compressed-tensors", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def reset_peak_rss() -> None:
    """Start this process's peak resident memory afresh (Linux: VmHWM through clear_refs), so a
    job's report counts its own peak, not that of the worker's earlier jobs."""
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the peak stays the process's
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since ``reset_peak_rss`` (else since it started)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
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
