"""Request and response shapes of the /v1 API (they make the OpenAPI schema at /docs).

The job body's sections are generated from the engine's own dataclasses (``core.spec``), so a field
added there appears here with its default; the pydantic layer checks shape and types
(``extra="forbid"``), and ``CompressionSpec.from_dict`` then checks meaning (ranges, combinations).
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from core.spec import (
    ALLOCATIONS,
    COMPUTE_DTYPES,
    DTYPES,
    FIT_TARGETS,
    PRUNERS,
    ROW_WEIGHTS,
    SEQUENTIALS,
    SWEEP_ORDERS,
    Allocation,
    CompressionSpec,
    EvalSpec,
    InductionSpec,
    Pruner,
    TextSpec,
)

STRICT = ConfigDict(extra="forbid", strict=True)


def _section_model(name: str, kind: type[Any], doc: str) -> type[BaseModel]:
    """A pydantic model with the fields and defaults of the flat dataclass ``kind``."""
    hints = typing.get_type_hints(kind)
    defaults = kind()  # every field of these sections has a default
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(kind):
        annotation = hints[f.name]
        default = getattr(defaults, f.name)
        if typing.get_origin(annotation) is tuple:  # a list in JSON; a bare string means one item
            annotation = list[str] | str
            default = list(default)
        fields[f.name] = (annotation, Field(default=default))
    return create_model(name, __config__=STRICT, __doc__=doc, **fields)


Induction = _section_model("Induction", InductionSpec, "Sparsity Induction (arXiv 2602.21652).")
Calibration = _section_model(
    "Calibration",
    TextSpec,
    "Calibration text: 'pydoc', 'wikitext2', 'c4' or an uploaded dataset id 'ds_...'.",
)
Evaluation = _section_model(
    "Evaluation", EvalSpec, "Evaluation texts: any of 'pydoc', 'wikitext2', 'c4' or uploaded dataset ids."
)


def _d(name: str) -> Any:
    """The engine's default for a top-level spec field (one source of defaults)."""
    return CompressionSpec.__dataclass_fields__[name].default


class Method(BaseModel):
    model_config = STRICT

    pruner: Pruner = Field(default=_d("pruner"), description=f"one of {PRUNERS}")
    allocation: Allocation = Field(default=_d("allocation"), description=f"one of {ALLOCATIONS}")
    induction: Induction = Field(default_factory=Induction)  # type: ignore[valid-type]
    owl_lambda: float = Field(default=_d("owl_lambda"))
    owl_m: float = Field(default=_d("owl_m"))
    blocksize: int = Field(default=_d("blocksize"))
    dampening: float = Field(default=_d("dampening"))
    fit_to: str = Field(
        default=_d("fit_to"),
        description=f"SparseGPT and Wanda: fit the pruned layer to the dense 'model' or to the dense 'layer'; one of {FIT_TARGETS}",
    )
    order: str = Field(
        default=_d("order"),
        description=f"SparseGPT: the column sweep order by input activity (auto: ascending unstructured, N:M groups descending); one of {SWEEP_ORDERS}",
    )
    row_weight: str = Field(
        default=_d("row_weight"),
        description=f"SparseGPT, unstructured: 'output' weighs the MLP input linears' rows by their effect on the MLP's output, 'none' counts every row alike; one of {ROW_WEIGHTS}",
    )
    sequential: str = Field(
        default=_d("sequential"),
        description=f"SparseGPT fitting the dense model, and Wanda with swaps: 'linear' prunes q/k/v, o, gate/up, down in turn inside one forward of every calibration token, 'layer' takes every linear's statistics from the dense layer, 'auto' is 'linear' for those two where that forward fits a 4 GiB activation budget; one of {SEQUENTIALS}",
    )
    swap_rounds: int = Field(
        default=_d("swap_rounds"),
        description="Wanda: rounds of mask swaps against each linear's full X^T X, lowering its output error with the kept weights unchanged (one swap per row per round); 0 is the paper's Wanda; -1 (default): 20 for Wanda, 0 for the others (a positive value with magnitude or sparsegpt is refused)",
    )
    fit_share: float = Field(
        default=_d("fit_share"),
        description="where the pruner fits the dense model (fit_to): how far the residual writers' (o, down) target moves from the dense layer's output on the pruned model's inputs (0) towards the dense model's output (1), in (0, 1]; -1 (default): 0.5 for SparseGPT, 0.25 for Wanda (a value where the pruner fits the dense layer is refused)",
    )


class Options(BaseModel):
    model_config = STRICT

    dtype: str = Field(default=_d("dtype"), description=f"one of {DTYPES}")
    compute_dtype: str = Field(
        default=_d("compute_dtype"),
        description=f"the dtype the calibration forwards compute in (statistics and propagation; pruning, evaluation and the exported weights keep `dtype`): 'auto' is bfloat16 on hardware that multiplies it natively when the model is float32, 'model' is `dtype`; one of {COMPUTE_DTYPES}",
    )
    batch_size: int = Field(default=_d("batch_size"))


class JobCreate(BaseModel):
    """The body of POST /v1/jobs."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "example": {
                "model": "smollm2-135m",
                "sparsity": "2:4",
                "method": {"pruner": "wanda", "allocation": "uniform", "induction": {"enabled": False}},
                "calibration": {"source": "pydoc", "samples": 32, "seq_len": 512, "seed": 0},
                "evaluation": {"sources": ["pydoc"]},
            }
        },
    )

    model: str = Field(
        description="'smollm2-135m', a hub id, an s3:// URI, or a local path under SPRUCE_MODEL_ROOTS"
    )
    sparsity: float | str = Field(description="a ratio in (0, 1) or an 'N:M' pattern such as '2:4'")
    method: Method = Field(default_factory=lambda: Method())
    calibration: Calibration = Field(default_factory=Calibration)  # type: ignore[valid-type]
    evaluation: Evaluation = Field(default_factory=Evaluation)  # type: ignore[valid-type]
    options: Options = Field(default_factory=lambda: Options())


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str | None
    progress: float = Field(ge=0.0, le=1.0)
    layer: int | None
    layers: int | None
    eta_seconds: int | None
    message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    error: JobError | None
    results: dict[str, Any] | None
    spec: dict[str, Any]
    team: str
    submitted_by: str
    attempts: int
    resumes: int = Field(description="times the job continued from a checkpoint after its worker was lost")
    heartbeat_at: datetime | None = Field(description="last sign of life from the worker running it")
    cancel_requested: bool
    sweep_id: str | None = Field(default=None, description="the sweep that made this job (POST /v1/sweeps)")


class EventOut(BaseModel):
    id: int
    object: Literal["job.event"] = "job.event"
    created_at: datetime
    type: str
    stage: str | None
    message: str
    data: dict[str, Any] | None


class ArtifactOut(BaseModel):
    object: Literal["job.artifact"] = "job.artifact"
    name: str
    size: int
    sha256: str
    created_at: datetime
    url: str


class ArtifactLink(BaseModel):
    """A short-lived download link that needs no API key (``?redirect=false``)."""

    object: Literal["job.artifact.link"] = "job.artifact.link"
    url: str
    expires_at: datetime
    expires_in: int = Field(description="seconds the link stays valid from now")


class DatasetOut(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    filename: str
    format: Literal["txt", "jsonl"]
    size: int
    sha256: str
    records: int
    created_at: datetime


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    source: Literal["alias", "local"]


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    has_more: bool


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventOut]
    has_more: bool


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ArtifactOut]
    has_more: bool = False


class DatasetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatasetOut]
    has_more: bool = False


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
    has_more: bool = False


class Me(BaseModel):
    object: Literal["me"] = "me"
    team: str
    team_id: str
    key_name: str
    key_id: str
    key_prefix: str
