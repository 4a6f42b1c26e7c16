"""/v1/sweeps: one job body run at several targets (x pruners x presets), compared in one table.

The children are ordinary jobs (they appear in /v1/jobs with their ``sweep_id``), created and
queued together; the sweep's status, progress, table and Pareto front are derived from them
(``common.sweeps``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spruce.api import idempotency
from spruce.api.deps import CallerDep, CtxDep, SessionDep
from spruce.api.errors import COMMON, ApiError, not_found, unavailable
from spruce.api.jobs import BROKER_DOWN, IdempotencyKeyHeader, cancel_job
from spruce.api.sweep_children import shared_settings, validated_children
from spruce.api.usage import quota_error
from spruce.common import quotas, sweeps
from spruce.common.jobs import StaleStatus, add_event, set_status
from spruce.common.models import Job, Sweep, storable
from spruce.common.queue import enqueue
from spruce.common.states import JobStatus

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=COMMON)
ERRORS: dict[int | str, dict[str, Any]] = {404: {"description": "no such sweep in your team"}}
_AXIS = 32  # the longest list per axis; the grid itself is capped at sweeps.MAX_CHILDREN


class SweepCreate(BaseModel):
    """The body of POST /v1/sweeps."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "example": {
                "spec": {
                    "model": "smollm2-135m",
                    "method": {"pruner": "wanda"},
                    "evaluation": {"sources": ["pydoc"]},
                },
                "targets": ["0.5", "2:4", 0.7],
                "pruners": ["wanda", "sparsegpt"],
            }
        },
    )

    spec: dict[str, Any] = Field(
        description="a job body as POST /v1/jobs takes it; each child sets its sparsity (and "
        "method.pruner / method.preset where those lists are given)"
    )
    targets: list[float | str] = Field(min_length=1, max_length=_AXIS, description="sparsity targets")
    pruners: list[str] | None = Field(default=None, min_length=1, max_length=_AXIS)
    presets: list[str] | None = Field(default=None, min_length=1, max_length=_AXIS)


class SweepProgress(BaseModel):
    done: int = Field(description="children that ended (succeeded, failed, cancelled or deleted)")
    total: int


class SweepOut(BaseModel):
    id: str
    object: Literal["sweep"] = "sweep"
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    jobs: list[str] = Field(description="the child jobs' ids, in the table's order")
    progress: SweepProgress
    table: list[dict[str, Any]] = Field(
        description="one row per child: job, target, pruner, preset, status, sparsity (achieved), "
        "perplexity {dense, sparse} per evaluation text, hf_bytes, compact_bytes (null until it succeeds)"
    )
    pareto: list[dict[str, Any]] = Field(
        description="the finished rows on the Pareto front of sparsity (higher) and perplexity on "
        "`text` (lower), by sparsity"
    )
    text: str | None = Field(description="the evaluation text of `pareto` and `best_within` (the first one)")
    calibration: dict[str, Any] = Field(description="the calibration every child uses")
    within: float | None = Field(default=None, description="the `within` query parameter, echoed")
    best_within: dict[str, Any] | None = Field(
        default=None,
        description="with ?within=X: the sparsest finished row whose perplexity is within X (0.10: "
        "10%) of dense; null if none is",
    )
    cancel_requested: bool
    team: str
    submitted_by: str
    created_at: datetime


class SweepList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SweepOut]
    has_more: bool


def sweep_out(session: Session, sweep: Sweep, team: str, within: float | None = None) -> SweepOut:
    rows = sweeps.rows_of(sweep, sweeps.child_jobs(session, sweep))
    statuses = [r["status"] for r in rows]
    text = sweep.text
    return SweepOut(
        id=sweep.id,
        status=sweeps.sweep_status(statuses, sweep.cancel_requested),  # type: ignore[arg-type]
        jobs=[c["job"] for c in sweep.children],
        progress=SweepProgress(**sweeps.progress(statuses)),
        table=rows,
        pareto=sweeps.pareto(rows, text) if text else [],
        text=text,
        calibration=sweep.calibration,
        within=within,
        best_within=sweeps.best_within(rows, text, within) if text and within is not None else None,
        cancel_requested=sweep.cancel_requested,
        team=team,
        submitted_by=sweep.submitted_by,
        created_at=sweep.created_at,
    )


def team_sweep(session: Session, sweep_id: str, team_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id) if storable(sweep_id) else None
    if sweep is None or sweep.team_id != team_id:
        raise not_found("sweep")
    return sweep


@router.post(
    "",
    status_code=201,
    response_model=SweepOut,
    responses={409: {"description": "the Idempotency-Key was used with another body"}, 413: {}},
)
def create_sweep(
    body: SweepCreate,
    session: SessionDep,
    ctx: CtxDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SweepOut:
    """Validate every child, check the team's limits for all of them, record the sweep and its
    jobs, then queue the jobs. Nothing is created when any child is invalid or the children
    would pass the team's queued-jobs limit (429 naming ``max_queued``).

    ``Idempotency-Key`` works as on POST /v1/jobs: a retry with the same key and body answers
    the sweep the first request made (header ``Idempotent-Replayed: true``).
    """
    submitted = body.model_dump(mode="json", exclude_unset=True)
    count = sweeps.grid_size(body.targets, body.pruners, body.presets)
    if count > sweeps.MAX_CHILDREN:
        raise ApiError(
            422,
            "invalid_request",
            f"targets: {count} children (targets x pruners x presets), at most {sweeps.MAX_CHILDREN}",
            "targets",
        )
    grid = sweeps.expand(body.spec, body.targets, body.pruners, body.presets)
    calibration, text = shared_settings(grid[0])
    children = validated_children(grid, calibration, session, ctx, caller)
    request_hash = idempotency.request_hash(submitted) if idempotency_key else None
    for _ in range(3):  # each pass answers, or saw a concurrent request with the same key
        if idempotency_key:
            existing = _find(session, caller.team_id, idempotency_key)
            if existing is not None:
                replay = _replay(session, existing, idempotency_key, request_hash, caller.team_name)
                if replay is not None:
                    response.headers[idempotency.REPLAYED] = "true"
                    return replay
        _check_room(session, ctx, caller, len(children))  # locks the team's row until the commit
        sweep = Sweep(
            team_id=caller.team_id,
            api_key_id=caller.key_id,
            submitted_by=caller.key_name,
            body=submitted,
            children=[],
            calibration=calibration,
            text=text,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
        )
        session.add(sweep)
        try:
            session.flush()
            jobs = _add_jobs(session, sweep, children, caller, ctx.settings.queue)
            session.commit()
        except IntegrityError:
            session.rollback()  # the (team_id, idempotency_key) constraint: another request won
            if not idempotency_key or _find(session, caller.team_id, idempotency_key) is None:
                raise
            continue
        _enqueue_all(session, ctx, sweep, jobs)
        return sweep_out(session, sweep, caller.team_name)
    raise ApiError(
        409,
        "idempotency_conflict",
        f"{idempotency.HEADER}: requests with this key keep racing each other; retry",
        idempotency.HEADER,
    )


def _add_jobs(
    session: Session, sweep: Sweep, children: list[sweeps.Child], caller: CallerDep, queue: str
) -> list[Job]:
    jobs, plan = [], []
    for child in children:
        job = Job(
            team_id=caller.team_id,
            api_key_id=caller.key_id,
            submitted_by=caller.key_name,
            spec=child.body,
            sweep_id=sweep.id,
            queue=queue,
        )
        session.add(job)
        session.flush()
        add_event(
            session, job.id, "status", f"job created by sweep {sweep.id}",
            data={"to": JobStatus.QUEUED.value, "sweep": sweep.id},
        )  # fmt: skip
        jobs.append(job)
        plan.append({"job": job.id, "target": child.target, "pruner": child.pruner, "preset": child.preset})
    sweep.children = plan
    return jobs


def _check_room(session: Session, ctx: CtxDep, caller: CallerDep, count: int) -> None:
    try:
        sweeps.check_room(session, quotas.lock_team(session, caller.team_id), ctx.settings, count)
    except quotas.QuotaExceeded as exc:
        session.rollback()
        raise quota_error(exc) from exc


def _enqueue_all(session: Session, ctx: CtxDep, sweep: Sweep, jobs: list[Job]) -> None:
    """Queue every child; if the broker is down, the children not queued are marked failed (as
    POST /v1/jobs marks its job) and the answer is a 503 naming the sweep."""
    for n, job in enumerate(jobs):
        try:
            enqueue(ctx.celery, ctx.settings, job.id)
        except Exception as exc:  # kombu's OperationalError and friends: the broker is unreachable
            log.error("could not enqueue %s of sweep %s: %s", job.id, sweep.id, exc)
            message = (
                f"the job queue is unreachable; sweep {sweep.id} was recorded, its jobs not queued are failed"
            )
            for rest in jobs[n:]:
                try:
                    set_status(
                        session, rest, JobStatus.FAILED, "could not enqueue", error=(BROKER_DOWN, message)
                    )
                    session.commit()
                except StaleStatus:  # a worker took it after all (the send raised late)
                    session.rollback()
            raise unavailable(BROKER_DOWN, message, extra={"sweep": sweep.id}) from exc


def _find(session: Session, team_id: str, key: str) -> Sweep | None:
    return session.scalar(select(Sweep).where(Sweep.team_id == team_id, Sweep.idempotency_key == key))


def _replay(session: Session, sweep: Sweep, key: str, body_hash: str | None, team: str) -> SweepOut | None:
    """The stored sweep for a retry; None (the key released) when none of its jobs was queued."""
    if sweep.request_hash != body_hash:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"{idempotency.HEADER} {key!r} was already used for sweep {sweep.id} with a different "
            "body; use a new key for a new sweep",
            idempotency.HEADER,
            extra={"sweep": sweep.id},
        )
    jobs = sweeps.child_jobs(session, sweep)
    never = [j for j in jobs.values() if j.error_code == BROKER_DOWN and j.started_at is None]
    if not jobs or len(never) < len(jobs):
        return sweep_out(session, sweep, team)
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep.id, Sweep.idempotency_key == key)
        .values(idempotency_key=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    log.info("sweep %s was never queued; a retry creates a new sweep for its key", sweep.id)
    return None


@router.get("", response_model=SweepList)
def list_sweeps(
    session: SessionDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="the last sweep id of the previous page")] = None,
) -> SweepList:
    """The team's sweeps, newest first; page with ``after=<last id>`` while ``has_more``."""
    stmt = select(Sweep).where(Sweep.team_id == caller.team_id)
    if after:
        cursor = session.get(Sweep, after) if storable(after) else None
        if cursor is None or cursor.team_id != caller.team_id:
            raise ApiError(422, "invalid_request", "after: no such sweep in your team", "after")
        stmt = stmt.where(
            or_(
                Sweep.created_at < cursor.created_at,
                and_(Sweep.created_at == cursor.created_at, Sweep.id < cursor.id),
            )
        )
    rows = session.scalars(stmt.order_by(Sweep.created_at.desc(), Sweep.id.desc()).limit(limit + 1)).all()
    data = [sweep_out(session, s, caller.team_name) for s in rows[:limit]]
    return SweepList(data=data, has_more=len(rows) > limit)


@router.get("/{sweep_id}", response_model=SweepOut, responses=ERRORS)
def read_sweep(
    sweep_id: str,
    session: SessionDep,
    caller: CallerDep,
    within: Annotated[
        float | None,
        Query(
            ge=0.0,
            le=100.0,
            description="adds best_within: the sparsest row within this fraction of dense perplexity",
        ),
    ] = None,
) -> SweepOut:
    return sweep_out(session, team_sweep(session, sweep_id, caller.team_id), caller.team_name, within)


@router.post("/{sweep_id}/cancel", response_model=SweepOut, responses={**ERRORS, 409: {}})
def cancel_sweep(sweep_id: str, session: SessionDep, caller: CallerDep) -> SweepOut:
    """Cancel every child that has not ended (queued ones at once, running ones at their next
    layer); a sweep whose children all ended is a 409 unless it is already cancelled."""
    sweep = team_sweep(session, sweep_id, caller.team_id)
    jobs = sweeps.child_jobs(session, sweep)
    if all(sweeps.is_done(j.status) for j in jobs.values()):
        current = sweep_out(session, sweep, caller.team_name)
        if current.status == JobStatus.CANCELLED.value:
            return current
        raise ApiError(409, "sweep_not_cancellable", f"sweep {sweep.id} already {current.status}")
    sweep.cancel_requested = True
    session.commit()
    for job in jobs.values():
        if not sweeps.is_done(job.status):
            try:
                cancel_job(job.id, session, caller)
            except ApiError as exc:  # it ended (or was deleted) since we looked: nothing to cancel
                log.info("sweep %s: job %s not cancelled: %s", sweep.id, job.id, exc.message)
    return sweep_out(session, sweep, caller.team_name)


@router.delete("/{sweep_id}", status_code=204, response_class=Response, responses={**ERRORS, 409: {}})
def delete_sweep(sweep_id: str, session: SessionDep, ctx: CtxDep, caller: CallerDep) -> Response:
    """Delete the sweep and every child job as DELETE /v1/jobs/{id} deletes one: queued children
    are cancelled, running ones asked to stop, their artifacts and checkpoints removed. The sweep
    and its children are gone from the API at once; a running child's row and files are removed
    when its worker stops, at the next layer."""
    sweep = team_sweep(session, sweep_id, caller.team_id)
    try:
        running = sweeps.delete_sweep(session, ctx.storage, sweep, caller.key_name)
    except StaleStatus as exc:
        session.rollback()
        raise ApiError(
            409, "sweep_busy", f"a job of sweep {sweep_id} kept changing while being deleted; retry"
        ) from exc
    log.info("sweep %s: deleted by %s (%d jobs still stopping)", sweep_id, caller.key_name, len(running))
    return Response(status_code=204)
