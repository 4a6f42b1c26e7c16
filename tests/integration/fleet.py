"""Workers a test can kill: real Celery worker processes on the machine's Postgres and Redis (or the
default mode's SQLite and filesystem broker) and the moto S3 server, with short heartbeat,
sweep and visibility timeouts so that faults are noticed in seconds. Each test gets its own
database (or data folder) and queue, so the sweepers of its workers see only its jobs.

Jobs are inserted and enqueued the way the API does it (row first, then the message by task name),
without an API process: the faults under test are between the queue, the worker and the row.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.integration.conftest import (
    PG_ADMIN,
    REDIS,
    REDIS_DB,
    ROOT,
    WORKER_CMD,
    stack_env,
    stop,
    wait_until,
)

TERMINAL = ("succeeded", "failed", "cancelled")

# Fast failure detection; the worker's heartbeat beats 10x per timeout, so a busy CI machine does
# not make a live worker look dead.
FAST = {
    "SPRUCE_HEARTBEAT_INTERVAL": "0.5",
    "SPRUCE_HEARTBEAT_TIMEOUT": "5",
    "SPRUCE_SWEEP_INTERVAL": "1",
    "SPRUCE_VISIBILITY_TIMEOUT": "4",
    "SPRUCE_PROGRESS_INTERVAL": "0.1",
    "SPRUCE_CANCEL_CHECK_INTERVAL": "0.2",
    "SPRUCE_MAX_RETRIES": "1",
    "SPRUCE_RETRY_BACKOFF": "1",
    "SPRUCE_DEVICE": "cpu",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class Fleet:
    env: dict[str, str]
    tmp: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    team_id: str = ""

    def settings(self) -> Any:
        from spruce.common.settings import Settings

        values: dict[str, Any] = {k[7:].lower(): v for k, v in self.env.items() if k.startswith("SPRUCE_")}
        return Settings(**values)

    @property
    def url(self) -> str:
        return str(self.settings().resolved_database_url)

    # -- workers --------------------------------------------------------------------------------

    def start_worker(self, *, wait: bool = True) -> subprocess.Popen[bytes]:
        """A worker process; ``wait=False`` returns at once (start the next worker while a job
        runs, to keep its import time off the test's critical path), then ``ready(proc)``."""
        log = self.tmp / f"worker-{len(self.logs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *WORKER_CMD, "-n", f"w{len(self.logs)}@%h"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(proc)
        self.logs.append(log)
        if wait:
            self.ready(proc)
        return proc

    def ready(self, proc: subprocess.Popen[bytes]) -> None:
        log = self.logs[self.workers.index(proc)]

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            return b" ready." in log.read_bytes()

        wait_until(up, 120, "a worker")

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """kill -9: no warm shutdown, no ack, no cleanup; as an OOM killer would."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.logs)

    # -- jobs -------------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], *, send: bool = True, **row: Any) -> str:
        """Insert the job row (as the API does, with ``row`` overrides) and send its message."""
        from spruce.common.db import session_scope
        from spruce.common.models import Job

        with session_scope(self.url) as session:
            job = Job(team_id=self.team_id, submitted_by="faults", spec=spec, **row)
            session.add(job)
            session.flush()
            job_id = job.id
        if send:
            self.send(job_id)
        return job_id

    def send(self, job_id: str) -> None:
        from spruce.common.queue import enqueue, make_celery

        settings = self.settings()
        enqueue(make_celery(settings), settings, job_id)

    def job(self, job_id: str) -> Any:
        from spruce.common.db import session_scope
        from spruce.common.models import Job

        with session_scope(self.url) as session:
            job = session.get(Job, job_id)
            session.expunge_all()
        return job

    def events(self, job_id: str) -> list[Any]:
        from spruce.common.db import session_scope
        from spruce.common.models import JobEvent

        with session_scope(self.url) as session:
            rows = list(
                session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            )
            session.expunge_all()
        return rows

    def wait(self, job_id: str, until: Callable[[Any], bool], what: str, timeout: float = 120) -> Any:
        def check() -> Any:
            job = self.job(job_id)
            return job if until(job) else None

        try:
            return wait_until(check, timeout, what, interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; job: {self.job(job_id).__dict__}\n{self.log_text()}") from None

    def done(self, job_id: str, timeout: float = 120) -> Any:
        return self.wait(job_id, lambda j: j.status in TERMINAL, "a terminal status", timeout)

    # -- storage ------------------------------------------------------------------------------------

    def storage(self) -> Any:
        from spruce.common.storage import build_storage

        return build_storage(self.settings())

    def read(self, key: str) -> bytes:
        return b"".join(self.storage().open_stream(key))

    def report(self, job_id: str) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.read(f"jobs/{job_id}/report.json"))
        return report


def _team(url: str) -> str:
    from spruce.common.db import session_scope, upgrade
    from spruce.common.keys import create_key

    upgrade(url)
    with session_scope(url) as session:
        return str(create_key(session, "faults", "ci").row.team_id)


def _finish(fleet: Fleet) -> None:
    # Every job is over by now, so the workers are idle and hold no message: kill them rather
    # than wait seconds for each one's shutdown (the queue's keys are deleted below anyway).
    for proc in fleet.workers:
        stop(proc, signal.SIGKILL)
    if os.environ.get("SPRUCE_TEST_SHOW_LOGS"):
        print(fleet.log_text())


@pytest.fixture()
def fleet(s3: dict[str, str], models: dict[str, Path], tmp_path: Path) -> Iterator[Fleet]:
    """Postgres (a database of its own), Redis (a queue of its own), moto S3; no worker yet."""
    from sqlalchemy import create_engine, text

    from spruce.common.db import get_engine

    name = f"spruce_faults_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    queue = f"spruce-faults-{secrets.token_hex(4)}"
    env = {**stack_env(tmp_path, url, queue, s3, models), **FAST}
    fleet = Fleet(env=env, tmp=tmp_path, team_id=_team(url))
    try:
        yield fleet
    finally:
        _finish(fleet)
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        import redis

        r = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}")
        for key in r.scan_iter(f"*{queue}*"):
            r.delete(key)


@pytest.fixture()
def default_fleet(models: dict[str, Path], tmp_path: Path) -> Iterator[Fleet]:
    """The default mode: SQLite, kombu's filesystem broker and local artifacts under one folder."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPRUCE_")}
    env.update(FAST)
    env.update(
        {
            "SPRUCE_DATA_DIR": str(data),
            "SPRUCE_MODEL_ROOTS": str(models["tiny"].parent),
            "SPRUCE_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    fleet = Fleet(env=env, tmp=tmp_path)
    fleet.team_id = _team(fleet.url)
    try:
        yield fleet
    finally:
        _finish(fleet)


def slow_spec(model: Path) -> dict[str, Any]:
    """Six layers of a few tenths of a second each: time to kill a worker in the middle."""
    return {
        "model": str(model),
        "sparsity": 0.5,
        "method": {"pruner": "wanda", "induction": False},
        "calibration": {"source": "pydoc", "samples": 32, "seq_len": 128, "seed": 0},
        "evaluation": {"sources": ["pydoc"]},
        "experimental": {"evaluation": {"seq_len": 32, "max_windows": 2}},
    }
