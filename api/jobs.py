"""/v1/jobs: submit, list, read, cancel; a job's events and artifacts."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from api.deps import CallerDep, CtxDep, SessionDep
from api.errors import ApiError, not_found, spec_error
from api.schemas import ArtifactList, ArtifactOut, EventList, EventOut, JobCreate, JobList, JobOut
from api.validation import check_limits, check_model_ref, check_sources
from common.jobs import StaleStatus, add_event, get_job, set_status
from common.models import Artifact, Dataset, Job, JobEvent
from common.queue import enqueue
from common.states import JobStatus
from common.storage import LocalStorage, StorageError
from core.errors import SpecError
from core.spec import CompressionSpec

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such job in your team"},
}


def job_out(job: Job, team_name: str) -> JobOut:
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return JobOut.model_validate(
        {
            "id": job.id,
            "status": job.status,
            "stage": job.stage,
            "progress": min(1.0, max(0.0, job.progress)),
            "layer": job.layer,
            "layers": job.layers,
            "eta_seconds": job.eta_seconds,
            "message": job.message,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "updated_at": job.updated_at,
            "error": error,
            "results": job.results,
            "spec": job.spec,
            "team": team_name,
            "submitted_by": job.submitted_by,
            "attempts": job.attempts,
            "cancel_requested": job.cancel_requested,
        }
    )


def team_job(session: Session, job_id: str, team_id: str) -> Job:
    job = get_job(session, job_id)
    if job is None or job.team_id != team_id:
        raise not_found("job")
    return job


def _validate(body: JobCreate, session: Session, ctx: CtxDep, caller: CallerDep) -> dict[str, Any]:
    submitted = body.model_dump(exclude_unset=True, mode="json")
    try:
        spec = CompressionSpec.from_dict(submitted)
        check_limits(spec, ctx.settings)
        check_model_ref(spec.model, ctx.settings)

        def owns(ds_id: str) -> bool:
            ds = session.get(Dataset, ds_id)
            return ds is not None and ds.team_id == caller.team_id

        check_sources(spec, owns)
    except SpecError as exc:
        raise spec_error(exc) from exc
    return submitted


@router.post("", status_code=201, response_model=JobOut, responses={**ERRORS, 422: {}, 503: {}})
def create_job(body: JobCreate, session: SessionDep, ctx: CtxDep, caller: CallerDep) -> JobOut:
    """Validate the body, record a queued job, then enqueue it (the row exists before the message)."""
    submitted = _validate(body, session, ctx, caller)
    job = Job(team_id=caller.team_id, api_key_id=caller.key_id, submitted_by=caller.key_name, spec=submitted)
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", "job created", data={"to": JobStatus.QUEUED.value})
    session.commit()
    try:
        enqueue(ctx.celery, ctx.settings, job.id)
    except Exception as exc:  # kombu's OperationalError and friends: the broker is unreachable
        log.error("could not enqueue %s: %s", job.id, exc)
        message = f"the job queue is unreachable ({exc}); job {job.id} was recorded and marked failed, submit again later"
        try:
            set_status(
                session, job, JobStatus.FAILED, "could not enqueue", error=("broker_unavailable", message)
            )
            session.commit()
        except StaleStatus:  # a worker got the message after all (the send raised late)
            session.rollback()
            return job_out(job, caller.team_name)
        raise ApiError(503, "broker_unavailable", message, extra={"job": job.id}) from exc
    return job_out(job, caller.team_name)


@router.get("", response_model=JobList, responses=ERRORS)
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="the last job id of the previous page")] = None,
) -> JobList:
    """The team's jobs, newest first; page with ``after=<last id>`` while ``has_more``."""
    stmt = select(Job).where(Job.team_id == caller.team_id)
    if status is not None:
        stmt = stmt.where(Job.status == status.value)
    if after:
        cursor = get_job(session, after)
        if cursor is None or cursor.team_id != caller.team_id:
            raise ApiError(422, "invalid_request", "after: no such job in your team", "after")
        stmt = stmt.where(
            or_(
                Job.created_at < cursor.created_at,
                and_(Job.created_at == cursor.created_at, Job.id < cursor.id),
            )
        )
    rows = session.scalars(stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    return JobList(data=[job_out(j, caller.team_name) for j in rows[:limit]], has_more=len(rows) > limit)


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS)
def read_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobOut:
    return job_out(team_job(session, job_id, caller.team_id), caller.team_name)


@router.post("/{job_id}/cancel", response_model=JobOut, responses={**ERRORS, 409: {}})
def cancel_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobOut:
    """A queued job is cancelled at once; a running one is asked to stop at its next layer."""
    job = team_job(session, job_id, caller.team_id)
    for _ in range(3):  # the worker may move the job while we look at it: re-read and decide again
        if job.status == JobStatus.QUEUED:
            try:
                set_status(session, job, JobStatus.CANCELLED, f"cancelled by {caller.key_name} while queued")
                session.commit()
                break
            except StaleStatus:
                session.rollback()
                session.refresh(job)
                continue
        if job.status == JobStatus.RUNNING:
            if not job.cancel_requested:
                job.cancel_requested = True
                add_event(
                    session, job.id, "cancel", f"cancel requested by {caller.key_name}", stage=job.stage
                )
                session.commit()
            break
        if job.status == JobStatus.CANCELLED:
            break
        raise ApiError(409, "job_not_cancellable", f"job {job.id} already {job.status}")
    return job_out(job, caller.team_name)


@router.get("/{job_id}/events", response_model=EventList, responses=ERRORS)
def list_events(
    job_id: str,
    session: SessionDep,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """The job's events, oldest first; poll with ``after=<last id>``."""
    team_job(session, job_id, caller.team_id)
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(limit + 1)
    ).all()
    data = [
        EventOut(id=e.id, created_at=e.created_at, type=e.type, stage=e.stage, message=e.message, data=e.data)
        for e in rows[:limit]
    ]
    return EventList(data=data, has_more=len(rows) > limit)


def artifact_url(job_id: str, name: str) -> str:
    return f"/v1/jobs/{job_id}/artifacts/{quote(name)}"


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=ERRORS)
def list_artifacts(job_id: str, session: SessionDep, caller: CallerDep) -> ArtifactList:
    """Every file the job produced: ``hf/...``, ``compact/...``, ``report.json``."""
    team_job(session, job_id, caller.team_id)
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).all()
    data = [
        ArtifactOut(
            name=a.name,
            size=a.size,
            sha256=a.sha256,
            created_at=a.created_at,
            url=artifact_url(job_id, a.name),
        )
        for a in rows
    ]
    return ArtifactList(data=data)


@router.get(
    "/{job_id}/artifacts/{name:path}",
    responses={
        **ERRORS,
        200: {"content": {"application/octet-stream": {}}},
        307: {"description": "presigned URL"},
    },
    response_class=Response,
)
def download_artifact(
    job_id: str, name: str, session: SessionDep, ctx: CtxDep, caller: CallerDep
) -> Response:
    """The file itself: streamed, or a 307 redirect to a presigned URL when storage is S3."""
    team_job(session, job_id, caller.team_id)
    row = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if row is None:
        raise not_found("artifact")
    filename = PurePosixPath(row.name).name
    storage = ctx.storage
    url = storage.presigned_url(row.storage_key, filename)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    headers = {"X-Checksum-Sha256": row.sha256}
    if isinstance(storage, LocalStorage):
        path = storage.local_path(row.storage_key)
        if not path.is_file():
            raise ApiError(410, "artifact_missing", f"{name} is recorded but missing from storage")
        return FileResponse(path, filename=filename, media_type="application/octet-stream", headers=headers)
    try:
        chunks = storage.open_stream(row.storage_key)
    except StorageError as exc:
        raise ApiError(410, "artifact_missing", f"{name} is recorded but missing from storage") from exc
    headers["Content-Length"] = str(row.size)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
