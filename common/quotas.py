"""Per-team limits and usage: queued jobs, running jobs, stored bytes.

A limit is the team's override (``teams.max_*``, set by `spruce teams limits`) or else the
``SPRUCE_TEAM_MAX_*`` default; 0 means no limit. The API refuses a submission over the queued
limit and an upload over the storage quota (``check_submit``, ``check_upload``); the running limit
is the scheduler's (common/fair.py): jobs over it wait queued.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from spruce.common.models import Artifact, Dataset, Job, Team
from spruce.common.settings import Settings
from spruce.common.states import JobStatus

GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Effective limits of one team; None: no limit."""

    max_queued: int | None
    max_running: int | None
    max_stored_bytes: int | None


@dataclass(frozen=True)
class Usage:
    queued: int
    running: int
    stored_bytes: int


class QuotaExceeded(Exception):
    """A request over one of the team's limits; ``code`` names which, ``message`` its value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _effective(override: int | None, default: int) -> int | None:
    value = default if override is None else override
    return value or None


def limits_for(team: Team, settings: Settings) -> Limits:
    return Limits(
        max_queued=_effective(team.max_queued, settings.team_max_queued),
        max_running=_effective(team.max_running, settings.team_max_running),
        max_stored_bytes=_effective(team.max_stored_bytes, settings.team_max_stored_bytes),
    )


def count_jobs(session: Session, team_id: str, status: JobStatus) -> int:
    stmt = select(func.count()).select_from(Job).where(Job.team_id == team_id, Job.status == status)
    return int(session.scalar(stmt) or 0)


def stored_bytes(session: Session, team_id: str) -> int:
    """Bytes the team keeps in storage: its jobs' artifacts (not yet removed) and its datasets."""
    artifacts = session.scalar(
        select(func.coalesce(func.sum(Artifact.size), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.team_id == team_id, Artifact.deleted_at.is_(None))
    )
    datasets = session.scalar(
        select(func.coalesce(func.sum(Dataset.size), 0)).where(Dataset.team_id == team_id)
    )
    return int(artifacts or 0) + int(datasets or 0)


def usage(session: Session, team_id: str) -> Usage:
    return Usage(
        queued=count_jobs(session, team_id, JobStatus.QUEUED),
        running=count_jobs(session, team_id, JobStatus.RUNNING),
        stored_bytes=stored_bytes(session, team_id),
    )


def lock_team(session: Session, team_id: str) -> Team:
    """The team's row, locked until the transaction ends: on Postgres, a check and the write it
    allows are then one step for concurrent requests of one team (SQLite has no row locks: there
    two concurrent requests may pass a limit by one)."""
    stmt = select(Team).where(Team.id == team_id).with_for_update()
    team = session.scalar(stmt.execution_options(populate_existing=True))
    if team is None:
        raise LookupError(f"no team {team_id}")
    return team


def describe_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB ({n} bytes)" if n >= GIB else f"{n} bytes"


def _storage_message(team: Team, used: int, more: int, cap: int) -> str:
    adding = f" + {describe_bytes(more)}" if more else ""
    return (
        f"team {team.name!r} stores {describe_bytes(used)}{adding}, over its storage quota "
        f"max_stored_bytes={cap}; delete jobs or datasets (DELETE /v1/jobs/{{id}}, /v1/datasets/{{id}})"
    )


def check_submit(session: Session, team: Team, settings: Settings) -> None:
    """Raise ``QuotaExceeded`` if the team may not queue one more job."""
    limits = limits_for(team, settings)
    if limits.max_queued is not None:
        queued = count_jobs(session, team.id, JobStatus.QUEUED)
        if queued >= limits.max_queued:
            raise QuotaExceeded(
                "queue_limit_exceeded",
                f"team {team.name!r} has {queued} queued jobs, its limit max_queued={limits.max_queued}; "
                "wait for some to start, or cancel some",
            )
    if limits.max_stored_bytes is not None:
        used = stored_bytes(session, team.id)
        if used >= limits.max_stored_bytes:
            raise QuotaExceeded(
                "storage_quota_exceeded", _storage_message(team, used, 0, limits.max_stored_bytes)
            )


def check_upload(session: Session, team: Team, settings: Settings, size: int) -> None:
    """Raise ``QuotaExceeded`` if ``size`` more bytes would pass the team's storage quota."""
    cap = limits_for(team, settings).max_stored_bytes
    if cap is None:
        return
    used = stored_bytes(session, team.id)
    if used + size > cap:
        raise QuotaExceeded("storage_quota_exceeded", _storage_message(team, used, size, cap))
