"""The one place that changes a job's status: checks the transition table, writes the row with
a compare-and-set on the old status (so the API and a worker racing on one job cannot both win),
and records the change as a ``job_events`` row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from spruce.common.models import Job, JobEvent, storable, utcnow
from spruce.common.states import JobStatus, check_transition


class StaleStatus(Exception):
    """The row's status changed under us (another process moved the job first)."""


def add_event(
    session: Session,
    job_id: str,
    type: str,
    message: str = "",
    *,
    stage: str | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(job_id=job_id, type=type, message=message, stage=stage, data=data)
    session.add(event)
    return event


def set_status(
    session: Session,
    job: Job,
    new: JobStatus | str,
    message: str = "",
    *,
    error: tuple[str, str] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> Job:
    """Move ``job`` to ``new`` or raise ``IllegalTransition`` / ``StaleStatus``; the caller commits.

    ``error`` is ``(code, message)`` for failed jobs; ``values`` are other columns to set in
    the same write (results, attempts...). started_at / finished_at follow the status.
    ``where`` adds conditions to the compare-and-set: a worker passes ``Job.attempts == n`` so
    that an attempt that lost the job (to a takeover) cannot write over its new owner.
    """
    old = job.status
    status = check_transition(old, str(new))
    now = utcnow()
    values = {**values, "status": status.value, "updated_at": now}
    if status == JobStatus.RUNNING and job.started_at is None:
        values["started_at"] = now
    if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        values["finished_at"] = now
        values["eta_seconds"] = None
    if status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    if error is not None:
        values["error_code"], values["error_message"] = error
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == old, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StaleStatus(f"job {job.id} is no longer {old!r}" + (" (or no longer ours)" if where else ""))
    for key, value in values.items():  # mirror the write on the object without dirtying it
        set_committed_value(job, key, value)
    data: dict[str, Any] = {"from": old, "to": status.value}
    if error is not None:
        data["error"] = {"code": error[0], "message": error[1]}
    add_event(session, job.id, "status", message or f"{old} -> {status.value}", stage=job.stage, data=data)
    return job


def get_job(session: Session, job_id: str, *, for_update: bool = False) -> Job | None:
    if not storable(job_id):  # e.g. ?after=%00 (found by the API fuzz test on Postgres)
        return None
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)
