"""Spruce from Python: ``spruce.Client`` for the service, ``spruce.compress`` on this machine.

Both take the same job body as ``POST /v1/jobs`` (``model``, ``sparsity``, ``method``,
``calibration``, ``evaluation``, ``experimental``), whole or as keyword fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spruce.client import ApiError, Client, Job, SpruceError, Sweep

__all__ = ["ApiError", "Client", "Job", "SpruceError", "Sweep", "compress"]


def compress(
    body: dict[str, Any] | None = None,
    /,
    *,
    device: str = "cpu",
    out: Path | str | None = None,
    on_progress: Any = None,
    **fields: Any,
) -> dict[str, Any]:
    """Run one job here (the engine the workers run) and return its report as a dict.

    With ``out`` the folder gets ``hf/`` (with its model card), ``compact/`` and ``report.json``.
    Bad input raises ``core.errors.SpecError`` naming the field, as the API's 422 does.
    """
    # the engine pulls in torch and transformers: imported on use, so `import spruce` stays light
    from spruce.core.compress import compress as run
    from spruce.core.spec import CompressionSpec

    spec = CompressionSpec.from_dict({**(body or {}), **fields})
    report = run(spec, device=device, out_dir=None if out is None else Path(out), on_progress=on_progress)
    return dict(report.to_dict())
