"""Is the worker of a running job still alive? Heartbeats, the stale-job sweep, the attempt limit.

- A running attempt writes ``jobs.heartbeat_at`` every ``SPRUCE_HEARTBEAT_INTERVAL`` seconds from a
  background thread (``Heartbeat``), guarded by its attempt number: once another attempt owns the
  job, the write matches no row and the old attempt learns it lost the job.
- A job whose heartbeat is older than ``SPRUCE_HEARTBEAT_TIMEOUT`` has lost its worker. A redelivered
  message for a job with a *fresh* heartbeat starts no second run (another worker is on it: the
  message is a turn for the next queued job, common/fair.py); for a stale one the new worker
  takes over (``worker.claim``).
- ``sweep`` finds stale running jobs and queues them again (or fails them once
  ``SPRUCE_MAX_ATTEMPTS`` deliveries have started). It runs in a thread of every worker process
  (``Sweeper``), so it works in both run modes with nothing else to deploy: the filesystem broker
  of the default mode never redelivers a message whose worker died, and Redis does so only after
  its visibility timeout. Several workers sweeping at once are safe: each change is a
  compare-and-set on (status, attempts, heartbeat still stale), so one sweeper wins and the
  others' writes match no row; a message sent by a losing sweeper is one more turn, harmless.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, null, select, update

from spruce.common.db import session_scope
from spruce.common.jobs import StaleStatus, set_status
from spruce.common.models import Job, utcnow
from spruce.common.settings import Settings
from spruce.common.states import JobStatus

log = logging.getLogger(__name__)

WORKER_LOST = "worker_lost"


def last_sign_of_life() -> ColumnElement[datetime]:
    """The heartbeat, or the last write for a row that has none (a job claimed before heartbeats)."""
    return func.coalesce(Job.heartbeat_at, Job.updated_at)


def is_fresh(job: Job, timeout: float, now: datetime | None = None) -> bool:
    """True while the job's worker has shown life within ``timeout`` seconds."""
    seen = job.heartbeat_at or job.updated_at
    return seen is not None and (now or utcnow()) - seen < timedelta(seconds=timeout)


def worker_lost_error(job: Job) -> tuple[str, str]:
    """(code, message) of a job whose workers died on every attempt: how often and where."""
    where = f"stage {job.stage}" if job.stage else "before its first stage"
    if job.layer is not None and job.layers:
        where += f", layer {job.layer} of {job.layers}"
    n = job.attempts
    message = (
        f"the worker running this job was lost {n} time{'s' if n != 1 else ''} "
        f"(last on {job.worker or 'an unknown worker'}, at {where}); giving up after {n} attempts. "
        "A job that kills its worker every time usually runs out of memory: try a smaller "
        "batch_size or samples, or a worker with more memory."
    )
    return WORKER_LOST, message


def stale(now: datetime, timeout: float) -> ColumnElement[bool]:
    return last_sign_of_life() < now - timedelta(seconds=timeout)


# -- heartbeat --------------------------------------------------------------------------------------


def gpu_memory(device: str | None) -> dict[str, Any] | None:
    """This process's CUDA memory on ``device``: what the running job holds now and its peak since
    ``reset_gpu_peak``, in bytes, with the GPU's name; None on a CPU (or when CUDA cannot say).

    The one place that reads ``torch.cuda`` for the heartbeat (``jobs.gpu_memory``, served by
    ``GET /metrics``)."""
    if not device or not device.startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return {
            "device": torch.cuda.get_device_name(device),
            "allocated_bytes": int(torch.cuda.memory_allocated(device)),
            "peak_bytes": int(torch.cuda.max_memory_allocated(device)),
            "total_bytes": int(torch.cuda.get_device_properties(device).total_memory),
        }
    except Exception as exc:  # a reading is worth a line in the log, never the job
        log.warning("could not read the memory of %s: %s", device, exc)
        return None


def reset_gpu_peak(device: str | None) -> None:
    """Start the peak of ``gpu_memory`` afresh: the peak it reports is then the running job's."""
    if not device or not device.startswith("cuda"):
        return
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(device)
    except Exception as exc:
        log.warning("could not reset the memory peak of %s: %s", device, exc)


class Heartbeat:
    """Refreshes ``heartbeat_at`` of a running attempt until ``stop()``; ``lost`` is set once the
    row is no longer this attempt's (taken over after a false alarm, or failed by a sweep).

    On a CUDA ``device`` each beat also records the GPU memory the job holds (``gpu_memory``)."""

    def __init__(
        self, url: str, job_id: str, attempt: int, interval: float, device: str | None = None
    ) -> None:
        self.url, self.job_id, self.attempt, self.interval = url, job_id, attempt, interval
        self.device = device
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.interval))

    def beat(self) -> bool:
        """One write; False once the job is no longer this attempt's."""
        # None on a CPU: a reading left by an earlier attempt on a GPU is not this attempt's.
        reading = gpu_memory(self.device)
        values: dict[str, Any] = {
            "heartbeat_at": utcnow(),
            "gpu_memory": null() if reading is None else reading,
        }
        with session_scope(self.url) as session:
            result: Any = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == JobStatus.RUNNING, Job.attempts == self.attempt)
                # updated_at stays: a heartbeat is not a change of the job a client should see.
                .values(**values, updated_at=Job.updated_at)
                .execution_options(synchronize_session=False)
            )
        return bool(result.rowcount == 1)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                mine = self.beat()
            except Exception as exc:  # the database is away for a moment: the next beat may work
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
                continue
            if not mine:
                self.lost.set()
                if not self._stop.is_set():  # else the attempt itself just wrote its final status
                    log.warning(
                        "job %s: attempt %d no longer owns the job (taken over, or failed by a sweep); stopping",
                        self.job_id,
                        self.attempt,
                    )
                return


# -- the sweep --------------------------------------------------------------------------------------


def sweep(
    settings: Settings,
    send: Callable[[str], None],
    now: datetime | None = None,
    on_failed: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Queue again (or fail) every running job whose heartbeat is older than the timeout.

    ``send(job_id)`` puts a message on the queue; ``on_failed(job_id)`` cleans up after a job this
    sweep failed (its checkpoint). It is called before the row is changed, so a
    broker that is down leaves the job running and stale for the next sweep instead of queued
    with no message; a message whose compare-and-set then loses is dropped by the worker.
    Returns ``{job_id: "requeued" | "failed"}`` for the jobs this sweep changed.
    """
    now = now or utcnow()
    timeout = settings.heartbeat_timeout
    with session_scope(settings.resolved_database_url) as session:
        jobs = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING, stale(now, timeout))).all()
        session.expunge_all()

    def why(job: Job) -> str:
        return f"no heartbeat from {job.worker} for {timeout:.0f}s"

    return _hand_back(jobs, settings, send, on_failed, (stale(now, timeout),), why)


def requeue_lost(
    settings: Settings,
    worker: str,
    send: Callable[[str], None],
    on_failed: Callable[[str], None] | None = None,
    cause: str = "its process exited",
) -> dict[str, str]:
    """Queue again (or fail) the running jobs of ``worker``, known dead (its supervisor saw its
    process exit): at once, without waiting for their heartbeats to go stale.

    Call it before a new process takes the name (``spruce serve`` restarts its worker under the
    same name); the send comes first, as in ``sweep``. Returns what ``sweep`` returns.
    """
    with session_scope(settings.resolved_database_url) as session:
        jobs = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.worker == worker)).all()
        session.expunge_all()
    return _hand_back(
        jobs, settings, send, on_failed, (Job.worker == worker,), lambda job: f"{worker}: {cause}"
    )


def _hand_back(
    jobs: Sequence[Job],
    settings: Settings,
    send: Callable[[str], None],
    on_failed: Callable[[str], None] | None,
    guard: tuple[ColumnElement[bool], ...],
    why: Callable[[Job], str],
) -> dict[str, str]:
    """Each job lost its worker: queue it again, or fail it once its attempts are spent. Every
    write is a compare-and-set on (running, the attempt seen, ``guard``)."""
    url = settings.resolved_database_url
    done: dict[str, str] = {}
    for job in jobs:
        exhausted = job.attempts >= settings.max_attempts
        if not exhausted:
            send(job.id)
        with session_scope(url) as session:
            where = (Job.attempts == job.attempts, *guard)
            seen = f"last heartbeat {(job.heartbeat_at or job.updated_at).isoformat()}"
            try:
                if exhausted:
                    code, message = worker_lost_error(job)
                    set_status(
                        session, job, JobStatus.FAILED, f"failed: {seen}", error=(code, message), where=where
                    )
                else:
                    note = (
                        f"re-queued: {why(job)} ({seen}); "
                        f"attempt {job.attempts} of {settings.max_attempts} was lost"
                    )
                    set_status(session, job, JobStatus.QUEUED, note, where=where)
            except StaleStatus:
                continue  # another sweeper or a worker got there first
        done[job.id] = "failed" if exhausted else "requeued"
        log.warning("job %s: %s; %s", job.id, seen, done[job.id])
        if exhausted and on_failed is not None:
            on_failed(job.id)
    return done


class Sweeper:
    """Runs ``sweep`` every ``SPRUCE_SWEEP_INTERVAL`` seconds (with jitter, so that the workers of
    one deployment spread out) in a daemon thread of a worker process."""

    def __init__(
        self, settings: Settings, send: Callable[[str], None], on_failed: Callable[[str], None] | None = None
    ) -> None:
        self.settings, self.send, self.on_failed = settings, send, on_failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stale-job-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        interval = self.settings.sweep_interval
        while not self._stop.wait(interval * random.uniform(0.8, 1.2)):
            try:
                sweep(self.settings, self.send, on_failed=self.on_failed)
            except Exception as exc:  # database or broker away: try again next time
                log.warning("stale-job sweep failed: %s", exc)


def start_sweeper(settings: Settings, name: str) -> Sweeper:
    """A running ``Sweeper`` that queues jobs through a producer of its own (``name``) and
    discards the checkpoint of each job it fails."""
    from spruce.common.queue import enqueue, make_celery
    from spruce.common.storage import build_storage
    from spruce.worker.checkpoint import discard

    producer = make_celery(settings, name=name)  # its own connections, off any consumer's
    storage = build_storage(settings)
    return Sweeper(
        settings,
        send=lambda job_id: enqueue(producer, settings, job_id),
        on_failed=lambda job_id: discard(storage, job_id),
    ).start()
