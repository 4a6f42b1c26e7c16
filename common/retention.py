"""Removing what teams no longer need: a deleted job, a deleted dataset, old artifacts.

- ``delete_job`` (DELETE /v1/jobs/{id}): the row is first marked deleted (hidden from the API
  from then on; its Idempotency-Key freed), then its objects (artifacts, checkpoints) are removed
  from storage and the row with its events. A queued job is cancelled first; a running one is
  asked to stop and stays marked until its worker ends it (``purge``). Marking first means that
  a storage or database failure midway leaves a marked row that the next ``purge`` finishes.
- ``expire`` (``SPRUCE_RETENTION_DAYS`` > 0): the artifacts of jobs that finished that many days
  ago are removed from storage; their rows stay, marked ``deleted_at``, so a download answers
  410 ``artifact_deleted`` rather than 404.
- ``housekeeping`` runs both periodically in every worker process (worker/app.py) and from
  `spruce retention run`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from spruce.common.db import session_scope
from spruce.common.jobs import StaleStatus, add_event, get_job, set_status
from spruce.common.models import Artifact, Job, utcnow
from spruce.common.settings import Settings
from spruce.common.states import TERMINAL, JobStatus
from spruce.common.storage import Storage, build_storage

log = logging.getLogger(__name__)


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def delete_job(session: Session, storage: Storage, job: Job, by: str) -> bool:
    """Delete ``job`` (see the module's docstring); True if it is gone, False if it still runs
    and will be removed when its worker stops. Commits."""
    for _ in range(3):  # a worker may move the job while we look at it: re-read and decide again
        if job.status == JobStatus.QUEUED:
            try:
                set_status(session, job, JobStatus.CANCELLED, f"cancelled by {by}: the job was deleted")
            except StaleStatus:
                session.rollback()
                session.refresh(job)
                continue
        if job.status == JobStatus.RUNNING:
            job.cancel_requested = True
            add_event(session, job.id, "cancel", f"deleted by {by}: stopping", stage=job.stage)
        job.deleted_at = utcnow()
        job.idempotency_key = None  # a new submission under the key makes a new job
        session.commit()
        break
    else:
        raise StaleStatus(f"job {job.id} kept changing while being deleted")
    storage.delete_prefix(job_prefix(job.id))
    if job.status == JobStatus.RUNNING:
        return False
    return purge_one(session, storage, job.id)


def purge_one(session: Session, storage: Storage, job_id: str) -> bool:
    """Remove a job marked deleted once no worker runs it: its objects, then its row. Commits.

    A deleted job that went back to queued (its last attempt hit a system fault) is cancelled.
    """
    job = get_job(session, job_id)
    if job is None:
        return True
    if job.deleted_at is None or job.status == JobStatus.RUNNING:
        return False
    if job.status == JobStatus.QUEUED:
        try:
            set_status(session, job, JobStatus.CANCELLED, "cancelled: the job was deleted")
            session.commit()
        except StaleStatus:
            session.rollback()
            return False
    storage.delete_prefix(job_prefix(job_id))  # again: a worker may have written since the mark
    session.execute(delete(Job).where(Job.id == job_id, Job.deleted_at.is_not(None)))
    session.commit()
    log.info("job %s: deleted", job_id)
    return True


def purge(url: str, storage: Storage) -> list[str]:
    """Finish every deletion whose job has stopped; returns the ids removed."""
    with session_scope(url) as session:
        ids = list(
            session.scalars(
                select(Job.id).where(Job.deleted_at.is_not(None), Job.status != JobStatus.RUNNING)
            )
        )
    removed = []
    for job_id in ids:
        with session_scope(url) as session:
            if purge_one(session, storage, job_id):
                removed.append(job_id)
    return removed


def expire(url: str, storage: Storage, days: int, now: datetime | None = None) -> list[str]:
    """Remove the artifacts of jobs that finished more than ``days`` days ago; their ids."""
    if days <= 0:
        return []
    now = now or utcnow()
    cutoff = now - timedelta(days=days)
    live = exists().where(Artifact.job_id == Job.id, Artifact.deleted_at.is_(None))
    with session_scope(url) as session:
        ids = list(
            session.scalars(
                select(Job.id).where(
                    Job.status.in_([s.value for s in TERMINAL]), Job.finished_at < cutoff, live
                )
            )
        )
    for job_id in ids:
        # Objects first: a failure here leaves the rows live, and the next pass tries again.
        storage.delete_prefix(job_prefix(job_id))
        with session_scope(url) as session:
            session.execute(
                update(Artifact)
                .where(Artifact.job_id == job_id, Artifact.deleted_at.is_(None))
                .values(deleted_at=now)
            )
            add_event(session, job_id, "retention", f"artifacts removed: finished more than {days} days ago")
        log.info("job %s: artifacts removed by retention (%d days)", job_id, days)
    return ids


@dataclass
class Housekeeping:
    """What one pass removed."""

    purged: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


def housekeeping(
    settings: Settings, storage: Storage | None = None, now: datetime | None = None
) -> Housekeeping:
    """One pass: finish pending deletions, then apply the retention policy."""
    url = settings.resolved_database_url
    storage = storage or build_storage(settings)
    return Housekeeping(
        purged=purge(url, storage), expired=expire(url, storage, settings.retention_days, now)
    )


class HousekeepingLoop:
    """Runs ``housekeeping`` every ``SPRUCE_RETENTION_INTERVAL`` seconds in a daemon thread (the
    first pass soon after start); several processes doing it at once only repeat deletes."""

    def __init__(self, settings: Settings, first_after: float = 10.0) -> None:
        self.settings, self.first_after = settings, first_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)

    def start(self) -> HousekeepingLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        wait = self.first_after
        while not self._stop.wait(wait):
            wait = self.settings.retention_interval
            try:
                housekeeping(self.settings)
            except Exception as exc:  # database or storage away: try again next time
                log.warning("housekeeping failed: %s", exc)
