"""/v1/jobs: submit, list, read, cancel; a job's events and artifacts."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spruce.api import idempotency
from spruce.api.deps import (
    AuthorizationHeader,
    Caller,
    CallerDep,
    CtxDep,
    SessionDep,
    check_rate,
    read_in_one_hop,
)
from spruce.api.errors import COMMON, ApiError, not_found, spec_error, unavailable
from spruce.api.links import check_link, signed_path
from spruce.api.schemas import (
    ArtifactLink,
    ArtifactList,
    ArtifactOut,
    EventList,
    EventOut,
    JobCreate,
    JobList,
    JobOut,
)
from spruce.api.usage import quota_error
from spruce.api.validation import check_limits, check_model_ref, check_sources
from spruce.common import quotas, retention
from spruce.common.jobs import StaleStatus, add_event, get_job, set_status
from spruce.common.models import ApiKey, Artifact, Dataset, Job, JobEvent
from spruce.common.queue import enqueue
from spruce.common.states import JobStatus
from spruce.common.storage import LocalStorage, Storage, StorageNotFound
from spruce.core.errors import SpecError
from spruce.core.spec import CompressionSpec

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=COMMON)
downloads = APIRouter(prefix="/v1/downloads", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such job in your team"},
}
BROKER_DOWN = "broker_unavailable"


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
            "resumes": job.resumes,
            "heartbeat_at": job.heartbeat_at,
            "cancel_requested": job.cancel_requested,
            "sweep_id": job.sweep_id,
        }
    )


def team_job(session: Session, job_id: str, team_id: str) -> Job:
    job = get_job(session, job_id)
    if job is None or job.team_id != team_id or job.deleted_at is not None:
        raise not_found("job")
    return job


def validate_job(body: JobCreate, session: Session, ctx: CtxDep, caller: CallerDep) -> dict[str, Any]:
    submitted = body.model_dump(exclude_unset=True, mode="json")
    try:
        spec = CompressionSpec.from_dict(submitted)
        check_limits(spec, ctx.settings)
        check_model_ref(spec.model, ctx.settings)

        def owns(ds_id: str) -> bool:
            ds = session.get(Dataset, ds_id)  # check_sources passes only ids matching DATASET_ID
            return ds is not None and ds.team_id == caller.team_id

        check_sources(spec, owns)
    except SpecError as exc:
        raise spec_error(exc) from exc
    return submitted


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        pattern=idempotency.PATTERN,
        description="a client-chosen key (1-200 printable ASCII characters, no spaces): a retry "
        "with the same key and body returns the same job instead of creating another",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={**ERRORS, 409: {"description": "the Idempotency-Key was used with another body"}, 413: {}},
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    ctx: CtxDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobOut:
    """Validate the body, record a queued job, then enqueue it (the row exists before the message).

    With an ``Idempotency-Key``, a retry (same key, same body) answers the job the first request
    created (201, header ``Idempotent-Replayed: true``) and creates nothing; the same key with
    another body is a 409. A job that was recorded but could not be enqueued (broker down) is
    not replayed: the retry creates and enqueues a fresh job under the key.
    """
    submitted = validate_job(body, session, ctx, caller)
    request_hash = idempotency.request_hash(submitted) if idempotency_key else None
    for _ in range(3):  # each pass either answers or saw a concurrent change to the key's job
        if idempotency_key:
            existing = idempotency.find(session, caller.team_id, idempotency_key)
            if existing is not None:
                idempotency.check_same_request(existing, idempotency_key, request_hash)
                if not _never_enqueued(existing):
                    response.headers[idempotency.REPLAYED] = "true"
                    return job_out(existing, caller.team_name)
                idempotency.release(session, existing, idempotency_key)
                session.commit()
                log.info("job %s was never enqueued; a retry creates a new job for its key", existing.id)
        check_quota(session, ctx, caller)  # holds the team's row until the commit below
        job = Job(
            team_id=caller.team_id,
            api_key_id=caller.key_id,
            submitted_by=caller.key_name,
            spec=submitted,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            queue=ctx.settings.queue,
        )
        session.add(job)
        try:
            session.flush()
            add_event(session, job.id, "status", "job created", data={"to": JobStatus.QUEUED.value})
            session.commit()
        except IntegrityError:
            # The unique (team_id, idempotency_key) constraint: a concurrent request with the same
            # key committed first. Its job is the answer (read it on the next pass).
            session.rollback()
            if not idempotency_key or idempotency.find(session, caller.team_id, idempotency_key) is None:
                raise
            continue
        return _enqueue(job, session, ctx, caller)
    raise ApiError(
        409,
        "idempotency_conflict",
        f"{idempotency.HEADER}: requests with this key keep racing each other; retry",
        idempotency.HEADER,
    )


def check_quota(session: Session, ctx: CtxDep, caller: CallerDep) -> None:
    """429 over the team's queued-jobs limit, 403 over its storage quota (common/quotas.py)."""
    try:
        quotas.check_submit(session, quotas.lock_team(session, caller.team_id), ctx.settings)
    except quotas.QuotaExceeded as exc:
        session.rollback()
        raise quota_error(exc) from exc


def _never_enqueued(job: Job) -> bool:
    return job.status == JobStatus.FAILED and job.error_code == BROKER_DOWN and job.started_at is None


def _enqueue(job: Job, session: Session, ctx: CtxDep, caller: CallerDep) -> JobOut:
    try:
        enqueue(ctx.celery, ctx.settings, job.id)
    except Exception as exc:  # kombu's OperationalError and friends: the broker is unreachable
        log.error("could not enqueue %s: %s", job.id, exc)
        # The broker's error stays in the log: it may name a server-side path or host.
        message = (
            f"the job queue is unreachable; job {job.id} was recorded and marked failed, submit again later"
        )
        try:
            set_status(session, job, JobStatus.FAILED, "could not enqueue", error=(BROKER_DOWN, message))
            session.commit()
        except StaleStatus:  # a worker got the message after all (the send raised late)
            session.rollback()
            return job_out(job, caller.team_name)
        raise unavailable(BROKER_DOWN, message, extra={"job": job.id}) from exc
    return job_out(job, caller.team_name)


@router.get("", response_model=JobList, responses=ERRORS)
async def list_jobs(
    ctx: CtxDep,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="the last job id of the previous page")] = None,
    authorization: AuthorizationHeader = None,
) -> JobList:
    """The team's jobs, newest first; page with ``after=<last id>`` while ``has_more``."""
    return await read_in_one_hop(
        ctx, authorization, lambda s, caller: _job_page(s, caller, status, limit, after)
    )


def _job_page(
    session: Session, caller: Caller, status: JobStatus | None, limit: int, after: str | None
) -> JobList:
    stmt = select(Job).where(Job.team_id == caller.team_id, Job.deleted_at.is_(None))
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
async def read_job(job_id: str, ctx: CtxDep, authorization: AuthorizationHeader = None) -> JobOut:
    return await read_in_one_hop(
        ctx, authorization, lambda s, caller: job_out(team_job(s, job_id, caller.team_id), caller.team_name)
    )


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


@router.delete("/{job_id}", status_code=204, response_class=Response, responses={**ERRORS, 409: {}})
def delete_job(job_id: str, session: SessionDep, ctx: CtxDep, caller: CallerDep) -> Response:
    """Delete the job: cancel it if it is queued or running, remove its artifacts and checkpoints
    from storage, and the job itself. It is gone from the API at once; a running job's row and
    files are removed when its worker stops, at the next layer."""
    job = team_job(session, job_id, caller.team_id)
    try:
        retention.delete_job(session, ctx.storage, job, caller.key_name)
    except StaleStatus as exc:
        raise ApiError(409, "job_busy", f"job {job.id} kept changing while being deleted; retry") from exc
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=EventList, responses=ERRORS)
def list_events(
    job_id: str,
    session: SessionDep,
    caller: CallerDep,
    # Bounded by the id column (BIGINT): a larger value cannot be bound and was a 500.
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="only events with a larger id")] = 0,
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


def safe_name(name: str) -> bool:
    """An artifact name as the worker stores them: relative, '/'-separated, no '.' or '..' parts.

    The lookup goes by the job's rows, so a bad name finds nothing anyway; refusing it first
    keeps a traversal attempt from ever reaching storage.
    """
    return (
        0 < len(name) <= 500
        and "\\" not in name
        and not any(ord(c) < 32 for c in name)
        and all(part not in ("", ".", "..") for part in name.split("/"))
    )


def find_artifact(session: Session, job_id: str, name: str) -> Artifact:
    row = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if row is None:
        raise not_found("artifact")
    if row.deleted_at is not None:
        raise ApiError(
            410,
            "artifact_deleted",
            f"{row.name} was removed on {row.deleted_at:%Y-%m-%d} by the retention policy "
            "(SPRUCE_RETENTION_DAYS)",
        )
    return row


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=ERRORS)
def list_artifacts(job_id: str, session: SessionDep, caller: CallerDep) -> ArtifactList:
    """Every file the job produced: ``hf/...``, ``compact/...``, ``report.json``."""
    team_job(session, job_id, caller.team_id)
    rows = session.scalars(
        select(Artifact)
        .where(Artifact.job_id == job_id, Artifact.deleted_at.is_(None))
        .order_by(Artifact.name)
    ).all()
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


def link_filename(job_id: str, name: str) -> str:
    """What a browser saves a linked artifact as: the job id and the name, flattened."""
    return f"{job_id}-{name.replace('/', '_')}"


@router.get(
    "/{job_id}/artifacts/{name:path}",
    responses={
        **ERRORS,
        200: {
            "description": "the file, or with redirect=false a link to it",
            "model": ArtifactLink,
            "content": {"application/octet-stream": {}},
        },
        307: {"description": "presigned URL"},
        410: {"description": "recorded but missing from storage"},
    },
    response_class=Response,
)
def download_artifact(
    job_id: str,
    name: str,
    request: Request,
    session: SessionDep,
    ctx: CtxDep,
    caller: CallerDep,
    redirect: Annotated[
        bool,
        Query(
            description="false: answer JSON {url, expires_at}, a short-lived link that needs no API "
            "key (a presigned S3 URL, or a signed URL of this API), for browsers"
        ),
    ] = True,
) -> Response:
    """The file itself: streamed, or a 307 redirect to a presigned URL when storage is S3."""
    team_job(session, job_id, caller.team_id)
    if not safe_name(name):
        raise not_found("artifact")
    row = find_artifact(session, job_id, name)
    storage = ctx.storage
    if not redirect:
        return _link(request, ctx, caller, row, storage)
    filename = PurePosixPath(row.name).name
    url = storage.presigned_url(row.storage_key, filename)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    return send_artifact(storage, row, filename)


def _link(request: Request, ctx: CtxDep, caller: CallerDep, row: Artifact, storage: Storage) -> JSONResponse:
    filename = link_filename(row.job_id, row.name)
    expiry = ctx.settings.s3_presign_expiry
    url = storage.presigned_url(row.storage_key, filename, expires_in=expiry)
    if url is None:  # local storage, or S3 without presigning: a signed URL of this API
        expiry = ctx.settings.download_link_expiry
        expires = int(time.time()) + expiry
        path = signed_path(ctx.signing_key, row.job_id, row.name, caller.key_id, expires)
        url = str(request.base_url).rstrip("/") + path
    expires_at = datetime.fromtimestamp(int(time.time()) + expiry, UTC)
    link = ArtifactLink(url=url, expires_at=expires_at, expires_in=expiry)
    return JSONResponse(link.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


def send_artifact(storage: Storage, row: Artifact, filename: str) -> Response:
    """Stream the artifact's bytes from storage (a file response for the local backend)."""
    headers = {"X-Checksum-Sha256": row.sha256}
    try:  # 410 only when the store answers "no such object"; StorageUnavailable is a 503
        if isinstance(storage, LocalStorage):
            path = storage.locate(row.storage_key)
            return FileResponse(
                path, filename=filename, media_type="application/octet-stream", headers=headers
            )
        chunks = storage.open_stream(row.storage_key)
    except StorageNotFound as exc:
        raise ApiError(410, "artifact_missing", f"{row.name} is recorded but missing from storage") from exc
    headers["Content-Length"] = str(row.size)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@downloads.get(
    "/{job_id}/{name:path}",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        403: {"description": "the link is forged, expired, or its key was revoked"},
        404: {"description": "no such artifact"},
        410: {"description": "recorded but missing from storage"},
        429: COMMON[429],
        503: COMMON[503],
    },
    response_class=Response,
)
def signed_download(
    job_id: str,
    name: str,
    session: SessionDep,
    ctx: CtxDep,
    key: Annotated[str | None, Query(description="the id of the key the link was made for")] = None,
    expires: Annotated[int | None, Query(description="unix time the link stops working")] = None,
    signature: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """A link from ``GET /v1/jobs/{id}/artifacts/{name}?redirect=false``: no API key needed."""
    problem = check_link(ctx.signing_key, job_id, name, key, expires, signature, time.time())
    if problem is not None:
        raise ApiError(403, problem.code, problem.message)
    api_key = session.get(ApiKey, key)
    job = get_job(session, job_id)
    if api_key is None or api_key.revoked_at is not None or job is None or job.team_id != api_key.team_id:
        raise ApiError(403, "invalid_signature", "the key this link was made for is no longer valid")
    check_rate(ctx, api_key.id)
    row = find_artifact(session, job_id, name)
    return send_artifact(ctx.storage, row, link_filename(job_id, name))
