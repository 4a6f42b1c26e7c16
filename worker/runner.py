"""One job, start to finish: claim the row, resolve inputs, run the engine, upload, record.

Everything here is keyed by the job id and safe to run again for the same id (a redelivered
message): claiming is a compare-and-set on the status, artifacts are replaced, not appended.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from common.db import session_scope
from common.jobs import StaleStatus, add_event, get_job, set_status
from common.models import Artifact, Dataset, Job, utcnow
from common.refs import DATASET_ID, check_model_ref, looks_like_path
from common.settings import Settings
from common.states import JobStatus, is_terminal
from common.storage import Storage, build_storage, download_s3_uri, sha256_file
from core.errors import Cancelled, DatasetUnavailable, ModelNotFound, SpecError, SystemFault, UserError
from core.progress import Progress

log = logging.getLogger(__name__)

RESULT_KEYS = ("perplexity", "sparsity", "sizes", "timings", "layers")


class RetryLater(Exception):
    """A system fault with retries left: the task re-queues itself after ``delay`` seconds."""

    def __init__(self, delay: float, cause: BaseException) -> None:
        super().__init__(f"retry in {delay:.0f}s: {cause}")
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


# -- claiming -------------------------------------------------------------------------------------


def claim(url: str, job_id: str, worker: str, device: str) -> Job | None:
    """Mark the job running for this worker; None if there is nothing to run.

    A job cancelled (or otherwise finished) while queued is skipped. A job already ``running``
    is a redelivered message: the worker that had it died (acks_late), so this one takes over.
    """
    for _ in range(3):
        with session_scope(url) as session:
            job = get_job(session, job_id)
            if job is None:
                log.warning("job %s does not exist; dropping the message", job_id)
                return None
            if is_terminal(job.status):
                log.info("job %s is already %s; skipping", job_id, job.status)
                return None
            values: dict[str, Any] = {"attempts": job.attempts + 1, "worker": worker, "device": device}
            try:
                if job.status == JobStatus.QUEUED:
                    set_status(session, job, JobStatus.RUNNING, f"running on {worker} ({device})", **values)
                else:
                    session.execute(update(Job).where(Job.id == job_id).values(**values, updated_at=utcnow()))
                    add_event(
                        session, job_id, "status", f"redelivered: taken over by {worker}", stage=job.stage
                    )
            except StaleStatus:
                continue  # the API cancelled it in the meantime: look again
            session.expunge(job)
            return job
    return None


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
    stage: str | None = None
    timed_out: bool = False
    _last_write: float = 0.0
    _last_check: float = 0.0
    _cancel: bool = False
    _t0: float = field(default_factory=time.monotonic)
    _f0: float | None = None

    def eta(self, fraction: float) -> int | None:
        """Seconds left, from the rate since this attempt's first report (None until it means something)."""
        if self._f0 is None:
            self._f0 = fraction
            return None
        done = fraction - self._f0
        elapsed = time.monotonic() - self._t0
        if done < 0.01 or elapsed < 1.0:
            return None
        return max(0, round(elapsed * (1.0 - fraction) / done))

    def __call__(self, p: Progress) -> None:
        fraction = max(self.floor, min(1.0, p.fraction))
        self.floor = fraction
        new_stage = p.stage != self.stage
        now = time.monotonic()
        eta = self.eta(fraction)
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
                update(Job).where(Job.id == self.job_id, Job.status == JobStatus.RUNNING).values(**values)
            )
            if new_stage:
                message = f"stage {p.stage}" + (f": {p.message}" if p.message else "")
                data = {"fraction": round(fraction, 4), "layers": p.layers}
                add_event(session, self.job_id, "stage", message, stage=p.stage, data=data)
        self.stage = p.stage

    def should_stop(self) -> bool:
        """True once a cancel was requested (read at most every ``check_interval``) or time is up."""
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
    elif not looks_like_path(model) and Path(model).exists():
        # A hub-id-shaped name that happens to be a folder next to the worker must not be read.
        raise SpecError(
            f"{model!r} is ambiguous on this worker; name hub models as owner/name", param="model"
        )

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


def finish(url: str, job_id: str, status: JobStatus, message: str, **kwargs: Any) -> str:
    """Move the job to a final (or retry) status; a job already finished elsewhere is left alone."""
    with session_scope(url) as session:
        job = get_job(session, job_id)
        if job is None or is_terminal(job.status):
            return job.status if job else "missing"
        try:
            set_status(session, job, status, message, **kwargs)
        except StaleStatus:
            log.warning("job %s changed while finishing; leaving it %s", job_id, job.status)
        return str(job.status)


# -- the run ----------------------------------------------------------------------------------------


def run(job_id: str, settings: Settings, *, retries_done: int = 0, worker: str | None = None) -> str:
    """Run one job; returns its final status, or raises ``RetryLater`` for a retryable fault."""
    from celery.exceptions import SoftTimeLimitExceeded

    url = settings.resolved_database_url
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    device = pick_device(settings)
    job = claim(url, job_id, worker, device)
    if job is None:
        return "skipped"
    log.info("job %s: attempt %d on %s", job_id, job.attempts, device)
    storage = build_storage(settings)
    reporter = Reporter(
        url=url,
        job_id=job_id,
        interval=settings.progress_interval,
        check_interval=settings.cancel_check_interval,
        deadline=time.monotonic() + settings.task_time_limit,
        floor=job.progress,
        stage=job.stage,
    )
    try:
        with tempfile.TemporaryDirectory(prefix=f"spruce-{job_id}-", dir=settings.work_dir) as tmp_name:
            tmp = Path(tmp_name)
            spec_dict = resolve_inputs(job.spec, job.team_id, settings, storage, tmp / "inputs")
            out_dir = tmp / "out"
            _compress(spec_dict, device, out_dir, reporter, settings)
            artifacts = upload_outputs(out_dir, job_id, storage)
            results = results_of(out_dir)
        with session_scope(url) as session:
            current = get_job(session, job_id)
            assert current is not None
            session.execute(delete(Artifact).where(Artifact.job_id == job_id))
            session.add_all(artifacts)
            set_status(
                session,
                current,
                JobStatus.SUCCEEDED,
                f"succeeded: {len(artifacts)} artifacts",
                results=results,
                error_code=None,
                error_message=None,
            )
        return JobStatus.SUCCEEDED.value
    except Cancelled:
        if reporter.timed_out:
            msg = f"the job ran past its time limit of {settings.task_time_limit} s"
            return finish(url, job_id, JobStatus.FAILED, "time limit", error=("time_limit_exceeded", msg))
        return finish(url, job_id, JobStatus.CANCELLED, "cancelled between layers")
    except SoftTimeLimitExceeded:
        msg = f"the job ran past its time limit of {settings.task_time_limit} s"
        return finish(url, job_id, JobStatus.FAILED, "time limit", error=("time_limit_exceeded", msg))
    except UserError as exc:
        log.info("job %s failed: %s: %s", job_id, exc.code, exc.message)
        message = f"{exc.param}: {exc.message}" if exc.param else exc.message
        return finish(url, job_id, JobStatus.FAILED, "failed", error=(exc.code, message))
    except Exception as exc:  # SystemFault and anything unexpected: retry, then fail
        return _system_fault(url, job_id, exc, retries_done, settings)


def _compress(
    spec_dict: dict[str, Any], device: str, out_dir: Path, reporter: Reporter, settings: Settings
) -> None:
    from core.compress import compress  # torch and transformers: only in the worker, only when running
    from core.spec import CompressionSpec

    spec = CompressionSpec.from_dict(spec_dict)
    out_dir.mkdir(parents=True, exist_ok=True)
    compress(
        spec,
        device=device,
        out_dir=out_dir,
        on_progress=reporter,
        should_stop=reporter.should_stop,
        cache_dir=settings.cache_dir,
    )


def _system_fault(url: str, job_id: str, exc: Exception, retries_done: int, settings: Settings) -> str:
    code = exc.code if isinstance(exc, SystemFault) else "system_error"
    detail = f"{type(exc).__name__}: {exc}"
    attempt = retries_done + 1
    if retries_done < settings.max_retries:
        delay = backoff(retries_done, settings.retry_backoff)
        log.warning("job %s attempt %d failed (%s); retrying in %.0fs", job_id, attempt, detail, delay)
        status = finish(
            url,
            job_id,
            JobStatus.QUEUED,
            f"attempt {attempt} failed ({detail}); retrying in {delay:.0f}s",
        )
        if status == JobStatus.QUEUED:
            raise RetryLater(delay, exc) from exc
        return status
    log.error("job %s failed after %d attempts: %s", job_id, attempt, detail, exc_info=exc)
    message = f"{detail} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
    return finish(url, job_id, JobStatus.FAILED, "failed", error=(code, message))
