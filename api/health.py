"""Liveness, readiness, the caller's identity, and the models this service offers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import CallerDep, CtxDep, SessionDep
from api.errors import COMMON, error_response
from api.schemas import Me, ModelList, ModelOut
from api.validation import MODEL_ALIASES, local_models
from common.db import get_engine
from common.queue import check_broker

log = logging.getLogger(__name__)

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is checked)."""
    return {"status": "ok"}


def _checks(ctx: CtxDep) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with get_engine(ctx.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"down: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"
    try:
        check_broker(ctx.celery, ctx.settings.broker_timeout)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"down: {exc.__class__.__name__}: {str(exc)[:200]}"
    try:
        ctx.storage.check()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"down: {str(exc)[:200]}"
    return checks


@router.get("/readyz", responses={503: {"description": "a dependency is down; the body names it"}})
def readyz(ctx: CtxDep) -> Any:
    """Ready when the database, the broker and object storage all answer; 503 names the ones down."""
    checks = _checks(ctx)
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        log.warning("not ready: %s", checks)
        return error_response(
            503,
            "not_ready",
            f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} down",
            extra={"status": "unavailable", "checks": checks},
        )
    return JSONResponse({"status": "ok", "checks": checks})


@router.get("/v1/me", response_model=Me, responses=COMMON)
def me(caller: CallerDep) -> Me:
    """Who the key belongs to: the dashboard signs in by calling this."""
    return Me(
        team=caller.team_name,
        team_id=caller.team_id,
        key_name=caller.key_name,
        key_id=caller.key_id,
        key_prefix=caller.key_prefix,
    )


@router.get("/v1/models", response_model=ModelList, responses=COMMON)
def models(ctx: CtxDep, caller: CallerDep, session: SessionDep) -> ModelList:
    """Suggested models: the built-in alias and model folders under the allowed roots.

    Any hub id or s3:// URI may be submitted as well; this list is not a limit.
    """
    data = [ModelOut(id=a, source="alias") for a in MODEL_ALIASES]
    data += [ModelOut(id=p, source="local") for p in local_models(ctx.settings.resolved_model_roots)]
    return ModelList(data=data)
