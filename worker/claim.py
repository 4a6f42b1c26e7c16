"""Claiming: which job a message starts, and the compare-and-set that makes it this worker's.

A message names a job, but it is a turn, not an order (common/fair.py): ``claim_next`` takes over
the named job only when it is running with a stale heartbeat (its worker died: a redelivered
message), and otherwise starts the job the fair scheduler picks. ``claim`` is the compare-and-set
on one job's row; every write it makes is guarded by the attempt number it read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from spruce.common import fair
from spruce.common.db import session_scope
from spruce.common.jobs import StaleStatus, add_event, get_job, set_status
from spruce.common.models import Job, utcnow
from spruce.common.settings import Settings
from spruce.common.states import JobStatus, is_terminal
from spruce.worker.liveness import is_fresh, worker_lost_error

log = logging.getLogger(__name__)


@dataclass
class Claimed:
    """What ``claim_next`` found: the job it started (or None), the jobs it failed on the way
    (out of attempts: their checkpoints can go), and when queued jobs it could not start yet may
    start (None when nothing waits)."""

    job: Job | None = None
    failed: list[str] = field(default_factory=list)
    waiting: datetime | None = None


def take(session: Session, job: Job, worker: str, device: str, settings: Settings) -> bool:
    """Make ``job`` this worker's next attempt; False if there is nothing to run. The caller commits.

    A finished job, or a running one with a fresh heartbeat (another worker is on it), is left
    alone. A running job with a stale heartbeat lost its worker and is taken over. Past
    ``max_attempts`` started deliveries the job is failed instead (``worker_lost``): a job that
    kills its worker every time must not loop forever. Raises ``StaleStatus`` when the row changed
    under us (the API cancelled it, another worker claimed it).
    """
    if is_terminal(job.status):
        log.info("job %s is already %s; skipping", job.id, job.status)
        return False
    running = job.status == JobStatus.RUNNING
    if running and is_fresh(job, settings.heartbeat_timeout):
        log.info(
            "job %s is running on %s with a fresh heartbeat; not starting a second run", job.id, job.worker
        )
        return False
    guard = (Job.attempts == job.attempts,)
    if job.attempts >= settings.max_attempts:
        # Running: its last worker died. Queued: requeued after a worker died (a system fault is
        # not retried past the limit), so the cause is the same.
        code, message = worker_lost_error(job)
        log.error("job %s: %s", job.id, message)
        set_status(
            session, job, JobStatus.FAILED, "failed: no attempts left", error=(code, message), where=guard
        )
        return False
    values: dict[str, Any] = {
        "attempts": job.attempts + 1,
        "worker": worker,
        "device": device,
        "heartbeat_at": utcnow(),
    }
    if not running:
        set_status(session, job, JobStatus.RUNNING, f"running on {worker} ({device})", where=guard, **values)
        return True
    lost = f"{job.worker} stopped heart-beating" if job.worker else "its worker was lost"
    message = f"redelivered: {lost}; taken over by {worker} (attempt {job.attempts + 1})"
    result: Any = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.RUNNING, *guard)
        .values(**values, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise StaleStatus(f"job {job.id} changed while being taken over")
    add_event(session, job.id, "status", message, stage=job.stage)
    for key, value in values.items():  # mirror the write without dirtying the row
        set_committed_value(job, key, value)
    return True


def claim(url: str, job_id: str, worker: str, device: str, settings: Settings) -> Job | None:
    """``take`` job ``job_id`` (re-reading it when it changed under us); None if nothing to run."""
    for _ in range(3):
        with session_scope(url) as session:
            job = get_job(session, job_id)
            if job is None:
                log.warning("job %s does not exist; dropping the message", job_id)
                return None
            try:
                if not take(session, job, worker, device, settings):
                    return None
            except StaleStatus:
                session.rollback()
                continue  # the API cancelled it, or another worker claimed it: look again
            session.expunge(job)
            return job
    return None


def _lost_worker(url: str, job_id: str, settings: Settings) -> bool:
    """True if ``job_id`` is running with a stale heartbeat: its message was delivered again
    because its worker died, and this worker takes it over (or fails it, out of attempts)."""
    with session_scope(url) as session:
        job = get_job(session, job_id)
        if job is None or job.status == JobStatus.QUEUED:
            return False
        turn = "its message is a turn for the next queued job"
        if is_terminal(job.status):
            log.info("job %s is already %s; %s", job_id, job.status, turn)
            return False
        if is_fresh(job, settings.heartbeat_timeout):  # a duplicate delivery (visibility timeout)
            log.info(
                "job %s is running on %s with a fresh heartbeat; not starting a second run; %s",
                job_id,
                job.worker,
                turn,
            )
            return False
        return True


def claim_next(
    url: str, hint: str, worker: str, device: str, settings: Settings, now: Callable[[], datetime] = utcnow
) -> Claimed:
    """Start the job a message stands for: the named job if its worker died, else the fairest."""
    out = Claimed()
    if _lost_worker(url, hint, settings):
        out.job = claim(url, hint, worker, device, settings)
        if out.job is not None:
            return out
        out.failed.append(hint)
    for _ in range(3):  # a new pass when every team in the order was taken by other workers
        with session_scope(url) as session:
            order = fair.team_order(session, settings, now())
        for team_id in order:
            job = _take_fair(url, team_id, worker, device, settings, now(), out.failed)
            if job is not None:
                out.job = job
                return out
        if not order:
            break
    with session_scope(url) as session:
        out.waiting = fair.any_queued(session, settings.queue)
    return out


def _take_fair(
    url: str, team_id: str, worker: str, device: str, settings: Settings, now: datetime, failed: list[str]
) -> Job | None:
    """Claim the oldest startable job of one team, in one transaction holding that team's lock."""
    for _ in range(settings.max_attempts + 2):  # jobs out of attempts are failed and skipped
        with session_scope(url) as session:
            job = fair.take_from(session, team_id, settings, now)
            if job is None:
                return None
            try:
                claimed = take(session, job, worker, device, settings)
            except StaleStatus:
                session.rollback()
                continue
            if not claimed:
                failed.append(job.id)  # out of attempts: failed; the team's next job is looked at
                continue
            fair.started(session, team_id, now)
            session.flush()
            session.expunge(job)
            return job
    return None
