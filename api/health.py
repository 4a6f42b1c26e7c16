"""Liveness, readiness, the caller's identity, and the models this service offers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from spruce.api.deps import CallerDep, CtxDep, SessionDep
from spruce.api.errors import COMMON, RETRY_AFTER_DOWN, error_response
from spruce.api.schemas import Me, ModelList, ModelOut
from spruce.api.validation import MODEL_ALIASES, local_models

log = logging.getLogger(__name__)

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {
            "description": '{"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}'
        },
        503: {"description": 'a dependency is failing: "status": "not_ready", its check "failing"'},
    },
)
def readyz(ctx: CtxDep) -> Any:
    """Ready when the database takes a write, the queue takes a message and storage takes an
    object, each checked within a second; the answer holds only the words ok and failing (the
    causes are in the server's log)."""
    checks = ctx.readiness.run()
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        return error_response(
            503,
            "not_ready",
            f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} down",
            headers={"Retry-After": RETRY_AFTER_DOWN},
            extra={"status": "not_ready", "checks": checks},
        )
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/v1/me", response_model=Me, responses=COMMON, name="read_me")
def me(caller: CallerDep) -> Me:
    """Who the key belongs to: the dashboard signs in by calling this."""
    return Me(
        team=caller.team_name,
        team_id=caller.team_id,
        key_name=caller.key_name,
        key_id=caller.key_id,
        key_prefix=caller.key_prefix,
    )


@router.get("/v1/models", response_model=ModelList, responses=COMMON, name="list_models")
def models(ctx: CtxDep, caller: CallerDep, session: SessionDep) -> ModelList:
    """Suggested models: the built-in alias and model folders under the allowed roots.

    Any hub id or s3:// URI may be submitted as well; this list is not a limit.
    """
    data = [ModelOut(id=a, source="alias") for a in MODEL_ALIASES]
    data += [ModelOut(id=p, source="local") for p in local_models(ctx.settings.resolved_model_roots)]
    return ModelList(data=data)
