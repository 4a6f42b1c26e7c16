"""/v1/usage: the caller's team's usage against its limits (common/quotas.py); and the errors a
request over a limit answers."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from spruce.api.deps import CallerDep, CtxDep, SessionDep
from spruce.api.errors import COMMON, ApiError
from spruce.common import quotas
from spruce.common.models import Team

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=COMMON)

# Retry-After of a 429 for a full queue: a job takes minutes; a client polling faster gains nothing.
QUEUE_FULL_RETRY_S = "30"


class Meter(BaseModel):
    used: int = Field(description="the current amount")
    limit: int | None = Field(description="the team's limit; null: no limit")


class UsageOut(BaseModel):
    team: str
    queued: Meter = Field(description="queued jobs (a submission over the limit is a 429)")
    running: Meter = Field(description="running jobs (jobs over the limit wait queued)")
    stored_bytes: Meter = Field(
        description="bytes of the team's artifacts and datasets (over the limit: 403)"
    )
    retention_days: int | None = Field(
        description="artifacts of jobs finished this many days ago are removed; null: kept"
    )


def quota_error(exc: quotas.QuotaExceeded) -> ApiError:
    """429 (with Retry-After) for a full queue, 403 for a storage quota: waiting does not free storage."""
    if exc.code == "storage_quota_exceeded":
        return ApiError(403, exc.code, exc.message)
    return ApiError(429, exc.code, exc.message, headers={"Retry-After": QUEUE_FULL_RETRY_S})


@router.get("", response_model=UsageOut)
def read_usage(session: SessionDep, ctx: CtxDep, caller: CallerDep) -> UsageOut:
    """What the team uses now and its limits: what the dashboard shows."""
    team = session.get(Team, caller.team_id)
    assert team is not None  # the caller's key belongs to it
    limits = quotas.limits_for(team, ctx.settings)
    now = quotas.usage(session, caller.team_id)
    return UsageOut(
        team=team.name,
        queued=Meter(used=now.queued, limit=limits.max_queued),
        running=Meter(used=now.running, limit=limits.max_running),
        stored_bytes=Meter(used=now.stored_bytes, limit=limits.max_stored_bytes),
        retention_days=ctx.settings.retention_days or None,
    )
