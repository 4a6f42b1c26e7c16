"""``GET /metrics``: Prometheus metrics of the API process and of the service as the database sees it.

Two sources. Request counts and latencies are recorded in this process by
``api.middleware.RequestContext``. Everything about jobs and workers is read from the database at
scrape time (one snapshot, cached ``SNAPSHOT_TTL`` seconds, queries bounded by
``QUERY_TIMEOUT_S``): the worker runs in other processes, often on other machines, and the job
rows and their stage events are already the record of what it did, so every API replica serves
the same, correct figures without Prometheus' multiprocess mode. docs/service.md, "Metrics and
logs", lists every metric.

Access: no API key (Prometheus scrapes with none); with ``SPRUCE_METRICS_TOKEN`` set, the scrape
must send ``Authorization: Bearer <token>``. The figures name teams, never keys or job ids.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select, text

from spruce.api.errors import ApiError
from spruce.common.db import get_engine
from spruce.common.models import Job, JobEvent, Team, UTCDateTime
from spruce.common.states import JobStatus

log = logging.getLogger(__name__)

SNAPSHOT_TTL = 5.0  # seconds a database snapshot is served before the next scrape reads again
QUERY_TIMEOUT_S = 2.0  # Postgres statement timeout of the snapshot's queries
PING_TIMEOUT_S = 0.5  # how long a scrape waits for idle workers to answer a Celery ping
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
STAGE_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)

router = APIRouter(tags=["service"])


class HttpMetrics:
    """This process's request counter and latency histogram, in the app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "spruce_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "spruce_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by method and route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


@dataclass
class Snapshot:
    """What the database said at ``taken`` (monotonic seconds)."""

    taken: float
    jobs: dict[str, int]  # status -> count
    queued: dict[str, int]  # team name -> queued jobs
    running: dict[str, int]  # team name -> running jobs
    job_seconds: dict[str, list[float]]  # terminal status -> run durations
    stage_seconds: dict[str, list[float]]  # stage -> durations of finished stages
    busy_workers: set[str] = field(default_factory=set)  # hostnames with a running job
    # (worker, its heartbeat's GPU reading) per running job on a CUDA worker (worker/liveness.py)
    gpus: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _read(conn: Connection) -> Snapshot:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT_S * 1000)}"))
    jobs = {s.value: 0 for s in JobStatus}
    for status, n in conn.execute(select(Job.status, func.count()).group_by(Job.status)):
        jobs[status] = int(n)
    # Every team, so a queue that empties reads 0 rather than a series that stops.
    teams = {name: 0 for (name,) in conn.execute(select(Team.name))}
    per_team: dict[str, dict[str, int]] = {"queued": dict(teams), "running": dict(teams)}
    active = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    rows = conn.execute(
        select(Team.name, Job.status, func.count())
        .join(Team, Team.id == Job.team_id)
        .where(Job.status.in_(active))
        .group_by(Team.name, Job.status)
    )
    for team, status, n in rows:
        per_team[status][team] = int(n)
    job_seconds: dict[str, list[float]] = defaultdict(list)
    finished = conn.execute(
        select(Job.status, Job.started_at, Job.finished_at).where(
            Job.started_at.is_not(None), Job.finished_at.is_not(None)
        )
    )
    for status, started, ended in finished:
        if started is not None and ended is not None:
            job_seconds[status].append(_seconds(started, ended))
    busy = conn.execute(
        select(Job.worker).where(Job.status == JobStatus.RUNNING.value, Job.worker.is_not(None)).distinct()
    )
    # Only jobs whose current attempt runs on CUDA: a retry on a CPU worker has no GPU figure.
    gpus = conn.execute(
        select(Job.worker, Job.gpu_memory)
        .where(
            Job.status == JobStatus.RUNNING.value,
            Job.worker.is_not(None),
            Job.device.like("cuda%"),
            Job.gpu_memory.is_not(None),
        )
        .order_by(Job.worker)
    )
    return Snapshot(
        taken=time.monotonic(),
        jobs=jobs,
        queued=per_team["queued"],
        running=per_team["running"],
        job_seconds=dict(job_seconds),
        stage_seconds=_stage_seconds(conn),
        busy_workers={w for (w,) in busy if w},
        gpus=[(w, g) for w, g in gpus if w and isinstance(g, dict)],
    )


def _stage_seconds(conn: Connection) -> dict[str, list[float]]:
    """Each finished stage's duration: from its ``stage`` event to the job's next stage or status event."""
    lead = func.lead(JobEvent.created_at, type_=UTCDateTime())  # typed: SQLite returns text otherwise
    nxt = lead.over(partition_by=JobEvent.job_id, order_by=JobEvent.id)
    q = select(JobEvent.type, JobEvent.stage, JobEvent.created_at, nxt.label("next_at")).where(
        JobEvent.type.in_(("stage", "status"))
    )
    out: dict[str, list[float]] = defaultdict(list)
    for kind, stage, at, next_at in conn.execute(q):
        if kind == "stage" and stage and next_at is not None:
            out[stage].append(_seconds(at, next_at))
    return dict(out)


def _seconds(start: datetime, end: datetime) -> float:
    if (start.tzinfo is None) != (end.tzinfo is None):  # SQLite's text timestamps have no zone
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    return max(0.0, (end - start).total_seconds())


def _histogram(
    name: str, doc: str, label: str, values: dict[str, list[float]], buckets: Iterable[float]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    bounds = [*buckets, float("inf")]
    for key, seconds in sorted(values.items()):
        counts = [sum(1 for s in seconds if s <= b) for b in bounds]
        family.add_metric([key], [(_le(b), c) for b, c in zip(bounds, counts, strict=True)], sum(seconds))
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class ServiceCollector(Collector):
    """Job, queue and worker figures from the database (and a Celery ping), cached a few seconds."""

    def __init__(self, database_url: str, celery: Callable[[], Any], broker_url: str) -> None:
        self.database_url = database_url
        self.celery = celery  # called on the first ping: building the app must not need a broker
        self.pings = broker_url.startswith(("redis://", "rediss://"))  # the file broker has no broadcast
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._idle: set[str] = set()
        self._ok = False

    def refresh(self) -> None:
        """Read a new snapshot when the cached one is older than ``SNAPSHOT_TTL``."""
        with self._lock:
            if self._snapshot is not None and time.monotonic() - self._snapshot.taken < SNAPSHOT_TTL:
                return
            try:
                with get_engine(self.database_url).connect() as conn, conn.begin():
                    self._snapshot = _read(conn)
                self._ok = True
            except Exception as exc:  # the last snapshot stays; spruce_metrics_database_up says so
                log.warning("metrics: the database snapshot failed: %s: %.200s", exc.__class__.__name__, exc)
                self._ok = False
            self._idle = self._ping()

    def _ping(self) -> set[str]:
        # A solo-pool worker busy with a job does not answer pings; the running jobs name those.
        if not self.pings:
            return set()
        try:
            replies = self.celery().control.ping(timeout=PING_TIMEOUT_S) or []
        except Exception as exc:
            log.warning("metrics: worker ping failed: %s", exc.__class__.__name__)
            return set()
        return {name for reply in replies for name in reply}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected on demand only: registering must not read the database

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("spruce_metrics_database_up", "1 if the last database snapshot succeeded")
        up.add_metric([], 1.0 if self._ok else 0.0)
        yield up
        snap = self._snapshot
        if snap is None:
            return
        age = GaugeMetricFamily("spruce_metrics_snapshot_age_seconds", "Age of the database snapshot served")
        age.add_metric([], time.monotonic() - snap.taken)
        yield age
        jobs = GaugeMetricFamily("spruce_jobs", "Jobs in the database, by status", labels=["status"])
        for status, n in sorted(snap.jobs.items()):
            jobs.add_metric([status], n)
        yield jobs
        for name, doc, values in (
            ("spruce_queue_depth", "Queued jobs per team", snap.queued),
            ("spruce_running_jobs", "Running jobs per team", snap.running),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["team"])
            for team, n in sorted(values.items()):
                gauge.add_metric([team], n)
            yield gauge
        workers = GaugeMetricFamily(
            "spruce_workers", "Workers seen: answering a Celery ping (Redis broker) or running a job"
        )
        workers.add_metric([], len(snap.busy_workers | self._idle))
        yield workers
        busy = GaugeMetricFamily("spruce_workers_busy", "Workers running a job")
        busy.add_metric([], len(snap.busy_workers))
        yield busy
        yield from _gpu_gauges(snap.gpus)
        yield _histogram(
            "spruce_job_duration_seconds",
            "Run time of finished jobs (started to finished, retries included), by final status",
            "status",
            snap.job_seconds,
            JOB_BUCKETS,
        )
        yield _histogram(
            "spruce_stage_duration_seconds",
            "Duration of each finished stage of a job (load, calibration, prune, evaluate, ...)",
            "stage",
            snap.stage_seconds,
            STAGE_BUCKETS,
        )


GPU_GAUGES = (
    ("spruce_worker_gpu_memory_bytes", "allocated_bytes", "GPU memory the worker's running job holds now (torch allocations)"),
    ("spruce_worker_gpu_memory_peak_bytes", "peak_bytes", "Peak GPU memory of the worker's running job so far"),
    ("spruce_worker_gpu_memory_total_bytes", "total_bytes", "Memory of the worker's GPU"),
)  # fmt: skip


def _gpu_gauges(gpus: list[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
    """Per worker on a CUDA device, from its last heartbeat; a CPU worker has no series."""
    for name, key, doc in GPU_GAUGES:
        gauge = GaugeMetricFamily(name, doc + ", from its last heartbeat", labels=["worker", "device"])
        for worker, reading in gpus:
            value = reading.get(key)
            if isinstance(value, int | float):
                gauge.add_metric([worker, str(reading.get("device") or "cuda")], float(value))
        yield gauge


def build_registry(
    database_url: str, celery: Callable[[], Any], broker_url: str
) -> tuple[CollectorRegistry, HttpMetrics, ServiceCollector]:
    """A registry per app (tests build many apps in one process; the global one would clash)."""
    registry = CollectorRegistry(auto_describe=False)
    http = HttpMetrics(registry)
    service = ServiceCollector(database_url, celery, broker_url)
    registry.register(service)
    return registry, http, service


def _check_token(request: Request, token: str | None) -> None:
    if not token:
        return
    sent = request.headers.get("authorization", "")
    scheme, _, value = sent.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "invalid_metrics_token", "send 'Authorization: Bearer <SPRUCE_METRICS_TOKEN>'")


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The Prometheus text exposition of this API process and the service's database."""
    ctx = request.app.state.ctx
    secret = ctx.settings.metrics_token
    _check_token(request, secret.get_secret_value() if secret is not None else None)
    registry, service = request.app.state.metrics_registry, request.app.state.metrics_service
    async with ctx.db_slots:  # a connection is free when we get here (see api.deps.get_session)
        await run_in_threadpool(service.refresh)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
