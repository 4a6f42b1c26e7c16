"""The queue between API and worker: one task name, one Celery configuration for both sides.

The API sends by name (``send_task``) and never imports worker/; the worker registers the task
under the same name. Both build their Celery app from ``celery_config`` so they agree on broker,
queue and serialisation.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from spruce.common.settings import Settings

TASK_NAME = "spruce.run_job"
FOLDERS = ("queue", "control", "processed")  # the filesystem broker's folders under broker_folder
FOLDER_TRANSPORT = "spruce.common.fsbroker:FolderTransport"


class BrokerUnavailable(Exception):
    """The queue did not take the message (or did not answer); the message names no server path."""


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if not settings.broker_url:
        # kombu's filesystem transport: producer and consumer share one folder, so in == out.
        folder = settings.broker_folder
        for sub in FOLDERS:
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
        }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # With acks_late, Redis puts a message back on the queue when it has not been acked within
        # the visibility timeout: that is how the job of a worker killed with -9 is delivered again,
        # so the timeout bounds how long such a job waits. A job that runs longer than it is
        # delivered again while still running; the worker that gets that copy sees a fresh
        # heartbeat and starts no second run (worker.claim: the copy is a turn for another queued
        # job, and there are at least as many messages as queued jobs). Keep it above the
        # longest retry backoff: a retry's countdown waits as an unacked message too.
        vt = settings.visibility_timeout
        return {
            "visibility_timeout": vt,
            # kombu scans for such messages every interval x throttle seconds (default 10 x 10):
            # scan every interval instead, a quarter of the timeout, so redelivery takes at most
            # about 1.25 x the timeout.
            "unacked_restore_interval": max(1, min(60, vt // 4)),
            "unacked_restore_throttle": 1,
        }
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the API (producer) and the worker (consumer); why each is set:"""
    return {
        "broker_url": settings.resolved_broker_url,
        # The filesystem transport, made to wait out a missing queue folder (common/fsbroker.py).
        "broker_transport": None if settings.broker_url else FOLDER_TRANSPORT,
        "broker_transport_options": broker_transport_options(settings),
        # Fail fast when the broker is down: the API answers 503 instead of hanging a request.
        "broker_connection_timeout": settings.broker_timeout,
        # A worker whose broker goes away keeps trying to reconnect, at startup and later, for
        # as long as it takes (Celery's default gives up after 100 tries and exits), and a
        # channel error (a broker folder it cannot write) is retried like a lost connection.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        # One queue per deployment (tests use a unique one per session); the worker consumes it
        # without a -Q flag, so the compose command and the tests' command are the same.
        "task_default_queue": settings.queue,
        "task_routes": {TASK_NAME: {"queue": settings.queue}},
        # JSON only: the only argument is a job id; never unpickle what a broker hands us.
        "task_serializer": "json",
        "accept_content": ["json"],
        # The job row is the source of truth for state and results; no result backend.
        "task_ignore_result": True,
        "result_backend": None,
        # Ack after the task returns, so a worker that dies mid-job leaves the message to be redelivered...
        "task_acks_late": True,
        # ...including when the worker process is killed (OOM on a big layer), not only on clean errors.
        "task_reject_on_worker_lost": True,
        # A job runs for minutes to hours on one GPU: reserve one message at a time, so queued jobs
        # wait in the broker where any idle worker can take them, not in a busy worker's buffer.
        "worker_prefetch_multiplier": 1,
        # Hard and soft limits (enforced by Celery under the prefork pool; the task also checks the
        # deadline cooperatively between layers, which works under the solo pool too).
        "task_time_limit": settings.task_time_limit + 300,
        "task_soft_time_limit": settings.task_time_limit,
        # A fresh process per job under prefork returns all GPU and host memory after each job.
        "worker_max_tasks_per_child": 1,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
    }


def make_celery(settings: Settings, name: str = "spruce") -> Any:
    """A Celery app configured from ``settings`` (no connection is made until it is used)."""
    from celery import Celery

    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def enqueue(celery_app: Any, settings: Settings, job_id: str) -> None:
    """Send the job to the queue by task name; ``BrokerUnavailable`` if the broker does not take it."""
    try:
        celery_app.send_task(
            TASK_NAME,
            args=[job_id],
            queue=settings.queue,
            # A couple of quick retries absorb a blip; beyond that the caller reports the broker down.
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
        )
    except Exception as exc:  # kombu's OperationalError, a ChannelError naming the broker's folder
        raise BrokerUnavailable(f"the broker did not take the message ({exc.__class__.__name__})") from exc


def check_broker(settings: Settings, timeout: float) -> None:
    """Raise unless the queue takes messages now: the filesystem broker's folders exist and take
    a file, Redis answers PING within ``timeout`` seconds (another broker: a connection)."""
    url = settings.broker_url
    if not url:
        for sub in FOLDERS:
            probe = settings.broker_folder / sub / f".probe-{os.getpid()}-{uuid.uuid4().hex}"
            probe.write_bytes(b"")  # no ".msg" suffix: the transport never reads it
            probe.unlink()
        return
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
