"""Which queued job starts next: fair between teams, not first-in first-out.

A message on the queue does not mean "run job X": it means "a job was queued; start the fairest
one". Every change that makes a job queued sends one message (submission, a retry, the stuck-job
sweep, `spruce serve` requeueing), so there are at least as many messages as queued jobs, and a
worker taking a message starts whichever job this module picks:

1. among teams with a queued job that may start now (``run_after`` passed), those under their
   running limit (common/quotas.py);
2. the team with the fewest running jobs; ties: the team whose last start is oldest (never
   started first), then the team whose oldest queued job is oldest;
3. that team's oldest queued job.

Team A holding 50 queued jobs therefore delays team B's new job by at most the jobs already
running. The order is computed without locks; ``take_from`` then locks the chosen team's row
(so that its running limit is exact on Postgres) and its oldest job with ``SKIP LOCKED`` (so that
concurrent workers never wait on each other's job), and the caller claims that job with the usual
compare-and-set on its status (common.jobs.set_status). One transaction holds at most one team
lock, so claims cannot deadlock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from spruce.common.models import Job, Team
from spruce.common.quotas import count_jobs, limits_for, lock_team
from spruce.common.settings import Settings
from spruce.common.states import JobStatus

NEVER = datetime.min.replace(tzinfo=UTC)


def startable(now: datetime, queue: str) -> ColumnElement[bool]:
    """Queued jobs of ``queue`` that may start at ``now`` (a retry waits out its backoff)."""
    return and_(
        Job.status == JobStatus.QUEUED,
        or_(Job.queue == queue, Job.queue.is_(None)),
        Job.deleted_at.is_(None),  # deleted while its last attempt failed: housekeeping cancels it
        or_(Job.run_after.is_(None), Job.run_after <= now),
    )


def team_order(session: Session, settings: Settings, now: datetime) -> list[str]:
    """Ids of the teams with a startable job and room under their running limit, fairest first."""
    heads = dict(
        session.execute(
            select(Job.team_id, func.min(Job.created_at))
            .where(startable(now, settings.queue))
            .group_by(Job.team_id)
        ).all()
    )
    if not heads:
        return []
    running = dict(
        session.execute(
            select(Job.team_id, func.count())
            .where(Job.status == JobStatus.RUNNING, Job.team_id.in_(heads))
            .group_by(Job.team_id)
        ).all()
    )
    teams = session.scalars(select(Team).where(Team.id.in_(heads))).all()
    room = []
    for team in teams:
        cap = limits_for(team, settings).max_running
        n = int(running.get(team.id, 0))
        if cap is None or n < cap:
            room.append((n, team.last_started_at or NEVER, heads[team.id], team.id))
    return [entry[-1] for entry in sorted(room)]


def take_from(session: Session, team_id: str, settings: Settings, now: datetime) -> Job | None:
    """Lock the team and its oldest startable job; None if it has none free or is at its limit.

    The caller claims the job (queued -> running) and calls ``started`` in the same transaction.
    """
    team = lock_team(session, team_id)
    cap = limits_for(team, settings).max_running
    if cap is not None and count_jobs(session, team_id, JobStatus.RUNNING) >= cap:
        return None  # another worker started one of its jobs since team_order looked
    return session.scalar(
        select(Job)
        .where(Job.team_id == team_id, startable(now, settings.queue))
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def started(session: Session, team_id: str, now: datetime) -> None:
    """Record that one of the team's jobs started (the tie-break of ``team_order``)."""
    team = session.get(Team, team_id)
    if team is not None:
        team.last_started_at = now


def any_queued(session: Session, queue: str) -> datetime | None:
    """When the earliest queued job may start (``now``-ish if one may already), or None if none
    is queued: a message that started nothing is kept for later only while jobs wait."""
    row = session.execute(
        select(func.count(), func.min(func.coalesce(Job.run_after, Job.created_at))).where(
            Job.status == JobStatus.QUEUED,
            Job.deleted_at.is_(None),
            or_(Job.queue == queue, Job.queue.is_(None)),
        )
    ).one()
    count, earliest = row
    if not count:
        return None
    if earliest is not None and earliest.tzinfo is None:  # SQLite returns naive UTC from func.min
        earliest = earliest.replace(tzinfo=UTC)
    return earliest or NEVER
