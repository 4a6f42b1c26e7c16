"""Request and response shapes of the /v1 API (they make the OpenAPI schema at /docs).

The job body is generated from the engine's one declaration of the spec (``core.spec``: each
option's type, default, bounds, choices and help): the public options in their sections, every
other one under ``experimental`` (unset: the preset's value). The pydantic layer checks shape,
types and bounds (``extra="forbid"``); ``CompressionSpec.from_dict`` then checks combinations.
An option that moved under ``experimental`` is refused with a message that says where it went.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from spruce.core.spec import CompressionSpec
from spruce.core.spec.schema import Leaf, induction_moved_message, leaves, moved, moved_message

STRICT = ConfigDict(extra="forbid", strict=True)
_SECTIONS = {
    "method": "The pruner, the preset of its settings, the allocation, and Sparsity Induction on or off.",
    "calibration": "Calibration text: 'pydoc', 'wikitext2', 'c4' or an uploaded dataset id 'ds_...'.",
    "evaluation": "Evaluation texts: any of 'pydoc', 'wikitext2', 'c4' or uploaded dataset ids.",
    "options": "The model's dtype.",
}
_EXPERIMENTAL_DOC = (
    "Unstable settings for experiments and benchmarks (their names and meaning may change in any "
    "release); each one left out takes its value from method.preset."
)


def _annotation(leaf: Leaf) -> Any:
    d = leaf.default
    if leaf.meta.choices is not None:
        return Literal[leaf.meta.choices]  # type: ignore[valid-type]
    if isinstance(d, tuple):
        return list[str] | str  # a bare string means one item
    for kind in (bool, int, float):
        if isinstance(d, kind):
            return kind
    return str


def _field(leaf: Leaf, *, optional: bool) -> tuple[Any, Any]:
    m = leaf.meta
    bounds: dict[str, Any] = {}
    if m.lo is not None:
        bounds["gt" if m.lo_open else "ge"] = m.lo
    if m.hi is not None:
        bounds["le"] = m.hi
    if isinstance(leaf.default, bool):
        bounds = {}
    annotation = _annotation(leaf)
    default = None if optional else (list(leaf.default) if isinstance(leaf.default, tuple) else leaf.default)
    return (annotation | None if optional else annotation), Field(
        default=default, description=m.help, **bounds
    )


def _refuser(gone: dict[str, str]) -> Any:
    def refuse_moved(cls: type, value: Any, info: Any) -> Any:
        raise PydanticCustomError("moved", moved_message(gone[info.field_name]))

    return refuse_moved


def _induction_flag(cls: type, value: Any) -> Any:
    if isinstance(value, dict):
        raise PydanticCustomError("moved", induction_moved_message(value))
    return value


def _section(name: str) -> type[BaseModel]:
    """A public section: its public options, and each option that moved from it (refused)."""
    fields: dict[str, Any] = {}
    for leaf in leaves(CompressionSpec):
        if leaf.meta.public and leaf.param.startswith(name + "."):
            fields[leaf.param.split(".", 1)[1]] = _field(leaf, optional=False)
    gone = {old.split(".", 1)[1]: new for old, new in moved(CompressionSpec).items() if old.count(".") == 1
            and old.startswith(name + ".")}  # fmt: skip
    for key in gone:
        fields[key] = (Annotated[Any, SkipJsonSchema()], Field(default=None, exclude=True))
    validators: dict[str, Any] = {}
    if gone:
        validators["refuse_moved"] = field_validator(*gone, mode="before")(_refuser(gone))
    if "induction" in fields:
        validators["induction_flag"] = field_validator("induction", mode="before")(
            classmethod(_induction_flag)
        )
    return create_model(  # type: ignore[call-overload,no-any-return]
        name.capitalize(), __config__=STRICT, __doc__=_SECTIONS[name], __validators__=validators, **fields
    )


def _experimental() -> type[BaseModel]:
    """The ``experimental`` object: every non-public option, nested as in the spec, all optional."""
    groups: dict[str, dict[str, Any]] = {"": {}}
    for leaf in leaves(CompressionSpec):
        if not leaf.meta.public:
            head, _, rest = leaf.path.rpartition(".")
            groups.setdefault(head, {})[rest] = _field(leaf, optional=True)
    top = groups.pop("")
    for head, fields in groups.items():
        sub = create_model(f"Experimental{head.capitalize()}", __config__=STRICT, **fields)  # type: ignore[call-overload]
        top[head] = (sub, Field(default_factory=sub))
    return create_model(  # type: ignore[call-overload,no-any-return]
        "Experimental", __config__=STRICT, __doc__=_EXPERIMENTAL_DOC, **top
    )


Method = _section("method")
Calibration = _section("calibration")
Evaluation = _section("evaluation")
Options = _section("options")
Experimental = _experimental()
_HELP = {leaf.path: leaf.meta.help for leaf in leaves(CompressionSpec)}


class JobCreate(BaseModel):
    """The body of POST /v1/jobs."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "example": {
                "model": "smollm2-135m",
                "sparsity": "2:4",
                "method": {
                    "pruner": "wanda",
                    "preset": "default",
                    "allocation": "uniform",
                    "induction": False,
                },
                "calibration": {"source": "pydoc", "samples": 32, "seq_len": 512, "seed": 0},
                "evaluation": {"sources": ["pydoc"]},
            }
        },
    )

    model: str = Field(description=_HELP["model"])
    sparsity: float | str = Field(description=_HELP["sparsity"])
    method: Method = Field(default_factory=Method)  # type: ignore[valid-type]
    calibration: Calibration = Field(default_factory=Calibration)  # type: ignore[valid-type]
    evaluation: Evaluation = Field(default_factory=Evaluation)  # type: ignore[valid-type]
    options: Options = Field(default_factory=Options)  # type: ignore[valid-type]
    experimental: Experimental = Field(default_factory=Experimental)  # type: ignore[valid-type]


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
