"""A sweep's children as jobs: each child body validated as POST /v1/jobs validates a job body,
an error named by the sweep body's field (``targets[1]``, ``pruners[0]``, ``spec.model``)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from spruce.api.deps import CallerDep, CtxDep
from spruce.api.errors import ApiError, body_param
from spruce.api.jobs import validate_job
from spruce.api.schemas import JobCreate
from spruce.common import sweeps
from spruce.core.spec import CompressionSpec

# the words POST /v1/jobs answers for these pydantic errors (api/errors.py)
_WORDS = {"extra_forbidden": "unknown field", "missing": "is required"}


def _parse(child: sweeps.Child) -> JobCreate:
    """The child's body as POST /v1/jobs parses it (from JSON, strict), or a 422 naming the field."""
    try:
        return JobCreate.model_validate_json(json.dumps(child.body))
    except ValidationError as exc:
        err = exc.errors()[0]
        param = body_param(tuple(err.get("loc", ())), JobCreate)
        where = sweeps.item_param(child, param)
        message = _WORDS.get(str(err.get("type")), str(err.get("msg", "is invalid")))
        raise ApiError(422, "invalid_request", f"{where}: {message}", where) from exc


def _check(
    child: sweeps.Child, parsed: JobCreate, session: Session, ctx: CtxDep, caller: CallerDep
) -> dict[str, Any]:
    try:
        return validate_job(parsed, session, ctx, caller)
    except ApiError as exc:
        where = sweeps.item_param(child, exc.param)
        message = (
            exc.message.split(": ", 1)[1]
            if exc.param and exc.message.startswith(f"{exc.param}: ")
            else exc.message
        )
        raise ApiError(exc.status, exc.code, f"{where}: {message}", where, exc.headers, exc.extra) from exc


def shared_settings(first: sweeps.Child) -> tuple[dict[str, Any], str | None]:
    """The calibration section every child gets (the first child's, defaults filled in) and the
    first evaluation text (None where evaluation is off)."""
    parsed = _parse(first).model_dump(mode="json")
    calibration: dict[str, Any] = parsed["calibration"]
    sources = parsed["evaluation"]["sources"]
    texts = [sources] if isinstance(sources, str) else list(sources)
    text = texts[0] if texts and texts[0] != "none" else None
    return calibration, text


def validated_children(
    children: list[sweeps.Child],
    calibration: dict[str, Any],
    session: Session,
    ctx: CtxDep,
    caller: CallerDep,
) -> list[sweeps.Child]:
    """Every child with the shared calibration, validated; its ``body`` becomes the job's
    recorded spec. Two children that would run the same job are a 422 on the later one."""
    out: list[sweeps.Child] = []
    seen: dict[str, sweeps.Child] = {}
    for child in children:
        child = replace(child, body={**child.body, "calibration": calibration})
        submitted = _check(child, _parse(child), session, ctx, caller)
        spec = CompressionSpec.from_dict(submitted)  # valid: validate_job has just built it
        key = json.dumps({**submitted, "sparsity": spec.sparsity.to_json()}, sort_keys=True)
        if key in seen:
            where, first = _duplicate(child, seen[key])
            raise ApiError(422, "invalid_request", f"{where}: the same job as {first}", where)
        seen[key] = child
        out.append(replace(child, body=submitted))
    return out


def _duplicate(child: sweeps.Child, other: sweeps.Child) -> tuple[str, str]:
    names = ("targets", "pruners", "presets")
    for name, mine, theirs in zip(names, child.index, other.index, strict=True):
        if mine is not None and mine != theirs:
            return f"{name}[{mine}]", f"{name}[{theirs}]"
    return "targets", "targets"
