"""One job, start to finish: claim a row, resolve inputs, run the engine, upload, record.

A message is a turn: the worker starts the job the fair scheduler picks (worker/claim.py).
Everything here is keyed by the job id and safe to run again for the same id (a redelivered
message): claiming is a compare-and-set on the status, artifacts are replaced, not appended.
Each attempt is numbered (``jobs.attempts``) and every write it makes is guarded by its number,
so an attempt that lost the job to another worker cannot write over it (worker/liveness.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from spruce.common.db import session_scope
from spruce.common.jobs import StaleStatus, add_event, get_job, set_status
from spruce.common.logging import job_id as log_job_id
from spruce.common.models import Artifact, Dataset, Job, utcnow
from spruce.common.refs import DATASET_ID, check_model_ref, is_hub_id
from spruce.common.retention import purge_one
from spruce.common.settings import Settings
from spruce.common.states import JobStatus, is_terminal
from spruce.common.storage import Storage, build_storage, download_s3_uri, sha256_file
from spruce.core.checkpoint import ResumeState
from spruce.core.errors import Cancelled, DatasetUnavailable, ModelNotFound, SystemFault, UserError
from spruce.core.progress import Eta, Progress
from spruce.core.report import RESULT_KEYS
from spruce.worker.checkpoint import StorageCheckpoint, discard, fingerprint
from spruce.worker.claim import claim_next
from spruce.worker.hub import hub_folder
from spruce.worker.liveness import Heartbeat, reset_gpu_peak

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """The message goes back on the queue after ``delay`` seconds: a system fault with retries
    left (``cause``), or queued jobs that cannot start yet (a backoff, a team's running limit)."""

    def __init__(self, delay: float, cause: BaseException | None = None) -> None:
        super().__init__(f"retry in {delay:.0f}s" + (f": {cause}" if cause else ": jobs wait"))
        self.delay = delay
        self.cause = cause


def pick_device(settings: Settings) -> str:
    if settings.device:
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backoff(retries_done: int, base: float) -> float:
    """Exponential: base, 2 base, 4 base, ... capped at one hour."""
    return float(min(3600.0, base * (2**retries_done)))


# -- progress and cancellation --------------------------------------------------------------------


@dataclass
class Reporter:
    """The engine's ``on_progress`` and ``should_stop``, writing to and reading from the job row.

    Progress is written at most every ``interval`` seconds (and at every stage change, which also
    becomes an event); the fraction written never decreases, even across a retry.
    """

    url: str
    job_id: str
    interval: float
    check_interval: float
    deadline: float  # time.monotonic() after which the run is stopped as too long
    floor: float = 0.0  # progress already on the row
    attempt: int | None = None  # guards every write: a superseded attempt changes nothing
    lost: threading.Event | None = None  # set by the heartbeat once the job is another attempt's
    stage: str | None = None
    timed_out: bool = False
    _last_write: float = 0.0
    _last_check: float = 0.0
    _cancel: bool = False
    clock: Callable[[], float] = time.monotonic
    # Seconds left, from this attempt's measured stages and layers (core/progress.py: ``Eta``).
    _eta: Eta = field(default_factory=Eta)

    def __call__(self, p: Progress) -> None:
        fraction = max(self.floor, min(1.0, p.fraction))
        self.floor = fraction
        new_stage = p.stage != self.stage
        now = self.clock()
        eta = self._eta.update(p, now)  # every report, written or not: it measures the stages
        if not new_stage and now - self._last_write < self.interval:
            return
        self._last_write = now
        values: dict[str, Any] = {
            "progress": fraction,
            "stage": p.stage,
            "layer": p.layer,
            "layers": p.layers,
            "eta_seconds": eta,
            "updated_at": utcnow(),
        }
        if p.message:
            values["message"] = p.message
        with session_scope(self.url) as session:
            # Guarded by status: a job that is no longer running keeps its final numbers.
            session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == JobStatus.RUNNING, *self.guard)
                .values(**values)
            )
            if new_stage:
                message = f"stage {p.stage}" + (f": {p.message}" if p.message else "")
                data = {"fraction": round(fraction, 4), "layers": p.layers}
                add_event(session, self.job_id, "stage", message, stage=p.stage, data=data)
        self.stage = p.stage

    @property
    def guard(self) -> tuple[Any, ...]:
        return () if self.attempt is None else (Job.attempts == self.attempt,)

    def should_stop(self) -> bool:
        """True once a cancel was requested (read at most every ``check_interval``), time is up,
        or the job was taken from this attempt."""
        if self.lost is not None and self.lost.is_set():
            return True
        now = time.monotonic()
        if now > self.deadline:
            self.timed_out = True
            return True
        if not self._cancel and now - self._last_check >= self.check_interval:
            self._last_check = now
            with session_scope(self.url) as session:
                flag = session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
            self._cancel = bool(flag)
        return self._cancel


# -- inputs -----------------------------------------------------------------------------------------


def resolve_inputs(
    spec: dict[str, Any], team_id: str, settings: Settings, storage: Storage, tmp: Path
) -> dict[str, Any]:
    """The spec with uploaded datasets and s3:// models replaced by local copies under ``tmp``."""
    spec = json.loads(json.dumps(spec))  # a deep copy; the row keeps the spec as submitted
    model = str(spec.get("model", "")).strip()
    check_model_ref(model, settings)
    if model.startswith("s3://"):
        try:
            spec["model"] = str(download_s3_uri(model, tmp / "model", settings))
        except Exception as exc:
            if "nothing at" in str(exc):
                raise ModelNotFound(f"model {model!r}: no objects at that S3 location") from exc
            raise SystemFault(f"could not download {model}: {exc}") from exc
    elif is_hub_id(model):  # from the Hugging Face cache, never the worker's directory (worker/hub.py)
        spec["model"] = str(hub_folder(model))

    cache: dict[str, str] = {}

    def local(source: str, param: str) -> str:
        if not DATASET_ID.match(source):
            return source
        if source not in cache:
            with session_scope(settings.resolved_database_url) as session:
                ds = session.get(Dataset, source)
                if ds is None or ds.team_id != team_id:
                    raise DatasetUnavailable(f"dataset {source} no longer exists", param=param)
                key, fmt = ds.storage_key, ds.format
            path = tmp / "datasets" / f"{source}.{fmt}"
            storage.download(key, path)
            cache[source] = str(path)
        return cache[source]

    calibration = spec.setdefault("calibration", {})
    calibration["source"] = local(calibration.get("source", "pydoc"), "calibration.source")
    evaluation = spec.setdefault("evaluation", {})
    sources = evaluation.get("sources", ["pydoc"])
    if isinstance(sources, str):
        sources = [sources]
    evaluation["sources"] = [local(s, f"evaluation.sources[{i}]") for i, s in enumerate(sources)]
    return spec


# -- outputs ----------------------------------------------------------------------------------------


def upload_outputs(out_dir: Path, job_id: str, storage: Storage) -> list[Artifact]:
    """Upload every file under ``out_dir`` to ``jobs/<id>/...``; returns unsaved artifact rows."""
    rows: list[Artifact] = []
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        name = path.relative_to(out_dir).as_posix()
        key = f"jobs/{job_id}/{name}"
        storage.put_file(key, path)
        rows.append(
            Artifact(
                job_id=job_id, name=name, size=path.stat().st_size, sha256=sha256_file(path), storage_key=key
            )
        )
    return rows


def results_of(out_dir: Path) -> dict[str, Any]:
    report = json.loads((out_dir / "report.json").read_text())
    return {k: report.get(k) for k in RESULT_KEYS}


def finish(
    url: str, job_id: str, status: JobStatus, message: str, *, attempt: int | None = None, **kwargs: Any
) -> str:
    """Move the job to a final (or retry) status; a job already finished elsewhere is left alone,
    and so is one that another attempt owns by now (``attempt`` is this one's number)."""
    with session_scope(url) as session:
        job = get_job(session, job_id)
        if job is None or is_terminal(job.status):
            return job.status if job else "missing"
        where = () if attempt is None else (Job.attempts == attempt,)
        try:
            set_status(session, job, status, message, where=where, **kwargs)
        except StaleStatus:
            log.warning("job %s changed while finishing; leaving it %s", job_id, job.status)
        return str(job.status)


# -- the run ----------------------------------------------------------------------------------------


def run(job_id: str, settings: Settings, *, worker: str | None = None) -> str:
    """Take one turn for the message of ``job_id``: run the job the scheduler picks (``job_id``
    itself when its worker died, else the fairest queued job) and return its final status.

    Raises ``RetryLater`` for a retryable fault, and when no job may start now while some wait
    (the message looks again later). Returns "skipped" when nothing is queued, "superseded" when
    this attempt lost the job to another one midway (it then writes nothing).
    """
    url = settings.resolved_database_url
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    # A dry run never touches torch, so it never asks torch which device there is.
    device = (settings.device or "none") if settings.dry_run else pick_device(settings)
    found = claim_next(url, job_id, worker, device, settings)
    if settings.checkpoints:  # out of attempts: nothing will resume them
        for failed in found.failed:
            if _failed(url, failed):
                discard(build_storage(settings), failed)
    job = found.job
    if job is None:
        if found.waiting is None:
            return "skipped"
        wait = (found.waiting - utcnow()).total_seconds()
        raise RetryLater(min(settings.defer_interval, max(0.5, wait)))
    if job.id != job_id:
        log.info("message for job %s: the fair turn goes to job %s", job_id, job.id)
    log.info("job %s: attempt %d of at most %d on %s", job.id, job.attempts, settings.max_attempts, device)
    reset_gpu_peak(device)  # the peak each heartbeat reports is this job's
    heartbeat = Heartbeat(url, job.id, job.attempts, settings.heartbeat_interval, device).start()
    logged_as = log_job_id.set(job.id)  # every log line of the attempt names its job
    try:
        return _attempt(job, settings, worker, device, heartbeat)
    finally:
        log_job_id.reset(logged_as)
        heartbeat.stop()
        _purge_if_deleted(settings, job.id)


def _purge_if_deleted(settings: Settings, job_id: str) -> None:
    """A job deleted while it ran is removed once it stops (DELETE /v1/jobs/{id}, common/retention.py)."""
    try:
        with session_scope(settings.resolved_database_url) as session:
            job = get_job(session, job_id)
            if job is not None and job.deleted_at is not None:
                purge_one(session, build_storage(settings), job_id)
    except Exception as exc:  # storage or database away: the periodic housekeeping finishes it
        log.warning("job %s: could not remove the deleted job yet: %s", job_id, exc)


def _attempt(job: Job, settings: Settings, worker: str, device: str, heartbeat: Heartbeat) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    url, job_id, attempt = settings.resolved_database_url, job.id, job.attempts
    storage = build_storage(settings)
    reporter = Reporter(
        url=url,
        job_id=job_id,
        interval=settings.progress_interval,
        check_interval=settings.cancel_check_interval,
        deadline=time.monotonic() + settings.task_time_limit,
        floor=job.progress,
        stage=job.stage,
        attempt=attempt,
        lost=heartbeat.lost,
    )
    checkpoint = None
    if settings.checkpoints and not settings.dry_run:
        checkpoint = StorageCheckpoint(
            storage, job_id, fingerprint(job.spec), _on_resume(url, job_id, attempt)
        )

    def ended(status: str) -> str:
        """A final status: the checkpoint has no further use (a retry keeps it to resume from)."""
        if checkpoint is not None and is_terminal(status):
            discard(storage, job_id)
        return status

    try:
        with tempfile.TemporaryDirectory(prefix=f"spruce-{job_id}-", dir=settings.work_dir) as tmp_name:
            tmp = Path(tmp_name)
            if settings.dry_run:
                artifacts, results = [], dry_run(reporter, attempt=attempt, worker=worker)
            else:
                spec_dict = resolve_inputs(job.spec, job.team_id, settings, storage, tmp / "inputs")
                out_dir = tmp / "out"
                _compress(spec_dict, device, out_dir, reporter, settings, checkpoint)
                artifacts = upload_outputs(out_dir, job_id, storage)
                results = results_of(out_dir)
        if checkpoint is not None:
            # Before the final write: a client that sees "succeeded" finds only the artifacts under
            # jobs/<id>/. A crash right here only costs a run from scratch on redelivery.
            discard(storage, job_id)
        return _succeed(url, job_id, attempt, artifacts, results)
    except Cancelled:
        if heartbeat.lost.is_set():
            log.warning(
                "job %s: attempt %d was superseded; leaving the job to its new owner", job_id, attempt
            )
            return "superseded"
        if reporter.timed_out:
            msg = f"the job ran past its time limit of {settings.task_time_limit} s"
            status = finish(
                url,
                job_id,
                JobStatus.FAILED,
                "time limit",
                attempt=attempt,
                error=("time_limit_exceeded", msg),
            )
            return ended(status)
        return ended(finish(url, job_id, JobStatus.CANCELLED, "cancelled between layers", attempt=attempt))
    except SoftTimeLimitExceeded:
        msg = f"the job ran past its time limit of {settings.task_time_limit} s"
        status = finish(
            url, job_id, JobStatus.FAILED, "time limit", attempt=attempt, error=("time_limit_exceeded", msg)
        )
        return ended(status)
    except UserError as exc:
        log.info("job %s failed: %s: %s", job_id, exc.code, exc.message)
        message = f"{exc.param}: {exc.message}" if exc.param else exc.message
        return ended(
            finish(url, job_id, JobStatus.FAILED, "failed", attempt=attempt, error=(exc.code, message))
        )
    except Exception as exc:  # SystemFault and anything unexpected: retry, then fail
        return ended(_system_fault(url, job, exc, settings))


def _failed(url: str, job_id: str) -> bool:
    with session_scope(url) as session:
        return session.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.FAILED


def _succeed(url: str, job_id: str, attempt: int, artifacts: list[Artifact], results: dict[str, Any]) -> str:
    with session_scope(url) as session:
        current = get_job(session, job_id)
        if current is None or current.attempts != attempt or is_terminal(current.status):
            log.warning("job %s: attempt %d finished, but the job is no longer its own", job_id, attempt)
            return "superseded"
        session.execute(delete(Artifact).where(Artifact.job_id == job_id))
        session.add_all(artifacts)
        set_status(
            session,
            current,
            JobStatus.SUCCEEDED,
            f"succeeded: {len(artifacts)} artifacts",
            where=(Job.attempts == attempt,),
            results=results,
            error_code=None,
            error_message=None,
        )
    return JobStatus.SUCCEEDED.value


def _on_resume(url: str, job_id: str, attempt: int) -> Any:
    """The checkpoint's callback: count the resume on the row and say so in the job's events."""

    def note(state: ResumeState) -> None:
        k, n = state.next_layer, state.last.layers
        where = f"continuing at layer {k + 1} of {n}" if k < n else "every layer was done; evaluating"
        message = f"resumed from the checkpoint: {k} of {n} layers restored, {where}"
        with session_scope(url) as session:
            result: Any = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempts == attempt)
                .values(resumes=Job.resumes + 1, message=message, updated_at=utcnow())
            )
            if result.rowcount == 1:
                add_event(
                    session, job_id, "resume", message, stage="prune", data={"from_layer": k, "layers": n}
                )
        log.info("job %s: %s", job_id, message)

    return note


DRY_RUN_STAGES = ("load", "calibration", "prune", "evaluate_sparse", "export")
DRY_RUN_LAYERS = 4


def dry_run(reporter: Reporter, *, attempt: int, worker: str) -> dict[str, Any]:
    """Walk a job through the engine's stages without loading anything; the results it returns.

    Exercises what a load test must (the queue, the claim, progress rows, stage events, the final
    write) at no cost, so hundreds of jobs finish in seconds; ``SPRUCE_DRY_RUN=1`` turns it on.
    """
    from spruce.core.progress import overall_fraction  # torch-free

    for stage in DRY_RUN_STAGES:
        if reporter.should_stop():
            raise Cancelled(f"cancelled before stage {stage!r}")
        steps = DRY_RUN_LAYERS if stage == "prune" else 1
        for i in range(1, steps + 1):
            layer = (i, DRY_RUN_LAYERS) if stage == "prune" else (None, None)
            fraction = overall_fraction(stage, i / steps)
            reporter(Progress(stage, fraction, layer=layer[0], layers=layer[1], within=i / steps))
    return {"dry_run": True, "stages": list(DRY_RUN_STAGES), "attempt": attempt, "worker": worker}


def _compress(
    spec_dict: dict[str, Any],
    device: str,
    out_dir: Path,
    reporter: Reporter,
    settings: Settings,
    checkpoint: StorageCheckpoint | None,
) -> None:
    from spruce.core.compress import compress  # torch and transformers: only in the worker, only when running
    from spruce.core.spec import CompressionSpec

    spec = CompressionSpec.from_dict(spec_dict)
    out_dir.mkdir(parents=True, exist_ok=True)
    compress(
        spec,
        device=device,
        out_dir=out_dir,
        on_progress=reporter,
        should_stop=reporter.should_stop,
        cache_dir=settings.cache_dir,
        checkpoint=checkpoint,
    )


def _system_fault(url: str, job: Job, exc: Exception, settings: Settings) -> str:
    """Queue the job again after a backoff (counted on the row: ``jobs.retries``), or fail it."""
    job_id, attempt = job.id, job.attempts
    code = exc.code if isinstance(exc, SystemFault) else "system_error"
    detail = f"{type(exc).__name__}: {exc}"
    if job.retries < settings.max_retries and attempt < settings.max_attempts:
        delay = backoff(job.retries, settings.retry_backoff)
        log.warning("job %s attempt %d failed (%s); retrying in %.0fs", job_id, attempt, detail, delay)
        status = finish(
            url,
            job_id,
            JobStatus.QUEUED,
            f"attempt {attempt} failed ({detail}); retrying in {delay:.0f}s",
            attempt=attempt,
            retries=job.retries + 1,
            run_after=utcnow() + timedelta(seconds=delay),
        )
        if status == JobStatus.QUEUED:
            raise RetryLater(delay, exc) from exc
        return status
    log.error("job %s failed after %d attempts: %s", job_id, attempt, detail, exc_info=exc)
    message = f"{detail} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
    return finish(url, job_id, JobStatus.FAILED, "failed", attempt=attempt, error=(code, message))
