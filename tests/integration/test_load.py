"""500 jobs submitted concurrently over HTTP to the real service, none lost and none doubled.

The stack is the production one: a uvicorn API process, Postgres, Redis, and a real Celery worker
process in dry-run mode (``SPRUCE_DRY_RUN=1``: it claims each job, walks it through the stages
writing progress and stage events, and marks it succeeded without loading a model), so the test
exercises the queue and the database, not the engine. 100 clients submit at once (more than one
API process has worker threads and pooled connections: before admission control in api.deps this
deadlocked the process, see get_session); 100 of the
submissions carry an ``Idempotency-Key`` and are sent twice, concurrently, as a client retrying
after a lost response would. Afterwards: every submission got 201; the 500 distinct jobs are each
recorded once; every one reaches ``succeeded`` (generous deadline, polled), ran once, and has
its status and stage events; the queue is empty.
"""

from __future__ import annotations

import os
import random
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from spruce.common.db import session_scope, upgrade
from spruce.common.keys import create_key
from spruce.common.models import Job, JobEvent
from tests.integration.conftest import REDIS, REDIS_DB, api_and_worker, wait_until

pytestmark = pytest.mark.integration

N_JOBS = 500
CLIENTS = 100
KEYED = 100  # of the N_JOBS, this many carry an Idempotency-Key and are submitted twice
DEADLINE_S = 600  # for all jobs to finish; they take well under a minute on a quiet machine

# Threads, not solo: a dry-run job is a handful of short DB writes, so several at once keep a
# 2-core machine busy without a process per job.
WORKER_CMD = [
    "-m", "celery", "-A", "spruce.worker.app", "worker",
    "--pool", "threads", "--concurrency", "8", "--loglevel", "INFO",
]  # fmt: skip

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda", "allocation": "uniform", "induction": False},
    "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 0},
    "evaluation": {"sources": ["pydoc"]},
}


@dataclass(frozen=True)
class Service:
    url: str
    key: str
    team_id: str
    database_url: str
    queue: str


@dataclass(frozen=True)
class Submission:
    index: int  # which job it is meant to create: retries of one keyed job share it
    idempotency_key: str | None


@dataclass(frozen=True)
class Answer:
    submission: Submission
    status: int
    job_id: str | None
    replayed: bool
    text: str


@pytest.fixture(scope="module")
def service(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("load")
    queue = f"spruce-load-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "SPRUCE_DATA_DIR": str(tmp / "data"),
        "SPRUCE_DATABASE_URL": pg_url,
        "SPRUCE_BROKER_URL": f"{REDIS}/{REDIS_DB}",
        "SPRUCE_QUEUE": queue,
        "SPRUCE_STORAGE": "local",
        "SPRUCE_DRY_RUN": "1",
        "SPRUCE_DEVICE": "cpu",
        "SPRUCE_RATE_LIMIT_PER_MINUTE": "0",  # one key sends all of it; limits are tested elsewhere
        "PYTHONUNBUFFERED": "1",
    }
    upgrade(pg_url)
    with session_scope(pg_url) as session:
        new = create_key(session, f"load-{secrets.token_hex(4)}", "load")
        key, team_id = new.secret, new.row.team_id
    try:
        with api_and_worker(
            env, tmp, worker_cmd=WORKER_CMD, api_args=("--log-level", "warning"), api_wait=90,
            worker_wait=120, probe_timeout=5,
        ) as url:  # fmt: skip
            yield Service(url=url, key=key, team_id=team_id, database_url=pg_url, queue=queue)
    finally:
        if os.environ.get("SPRUCE_TEST_SHOW_LOGS"):
            print((tmp / "worker.log").read_text()[-5000:], (tmp / "api.log").read_text()[-5000:])
        r = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}")
        for name in r.scan_iter(f"*{queue}*"):
            r.delete(name)


def submissions() -> list[Submission]:
    """N_JOBS jobs, KEYED of them sent twice under one key; shuffled so retries race their twin."""
    subs = [Submission(i, None) for i in range(N_JOBS - KEYED)]
    for i in range(N_JOBS - KEYED, N_JOBS):
        key = f"load-{secrets.token_hex(6)}-{i}"
        subs += [Submission(i, key), Submission(i, key)]
    random.Random(0).shuffle(subs)
    return subs


def submit_all(service: Service, subs: list[Submission]) -> list[Answer]:
    # Idle pooled connections expire on the client before uvicorn's 5 s keep-alive closes them:
    # with equal timeouts a request can go out on a connection the server is closing, which a
    # busy machine turns into "connection reset by peer" (seen in CI); a POST is not retried.
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS, keepalive_expiry=1.0)
    headers = {"Authorization": f"Bearer {service.key}"}
    # A generous timeout: on a busy 2-core machine 100 requests at once queue behind each other.
    with httpx.Client(base_url=service.url, headers=headers, limits=limits, timeout=120) as client:

        def send(sub: Submission) -> Answer:
            extra = {"Idempotency-Key": sub.idempotency_key} if sub.idempotency_key else {}
            r = client.post("/v1/jobs", json=BODY, headers=extra)
            job_id = r.json().get("id") if r.status_code == 201 else None
            replayed = r.headers.get("Idempotent-Replayed") == "true"
            return Answer(sub, r.status_code, job_id, replayed, r.text[:500])

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            return list(pool.map(send, subs))


def team_counts(service: Service) -> dict[str, int]:
    with session_scope(service.database_url) as s:
        rows = s.execute(
            select(Job.status, func.count()).where(Job.team_id == service.team_id).group_by(Job.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def status_events(service: Service) -> dict[str, list[str]]:
    """job id -> the statuses its status events moved it to, in order."""
    with session_scope(service.database_url) as s:
        rows = s.execute(
            select(JobEvent.job_id, JobEvent.data)
            .join(Job, Job.id == JobEvent.job_id)
            .where(Job.team_id == service.team_id, JobEvent.type == "status")
            .order_by(JobEvent.id)
        ).all()
    out: dict[str, list[str]] = defaultdict(list)
    for job_id, data in rows:
        out[job_id].append((data or {}).get("to", "?"))
    return out


def listed_ids(service: Service, status: str) -> list[str]:
    """Every job id the API lists with ``status``, page by page."""
    seen: list[str] = []
    after: str | None = None
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {service.key}"}, timeout=60
    ) as c:
        while True:
            params: dict[str, Any] = {"status": status, "limit": 100, **({"after": after} if after else {})}
            page = c.get("/v1/jobs", params=params)
            assert page.status_code == 200, page.text
            seen += [j["id"] for j in page.json()["data"]]
            if not page.json()["has_more"]:
                return seen
            after = seen[-1]


def test_500_concurrent_jobs_are_each_recorded_once_and_finish(service: Service) -> None:
    subs = submissions()
    answers = submit_all(service, subs)

    failed = [a for a in answers if a.status != 201 or a.job_id is None]
    assert not failed, f"{len(failed)} submissions failed, e.g. {failed[:3]}"
    by_index: dict[int, set[str]] = defaultdict(set)
    for a in answers:
        by_index[a.submission.index].add(str(a.job_id))
    assert all(len(ids) == 1 for ids in by_index.values()), "a retry with the same key made a second job"
    ids = {next(iter(v)) for v in by_index.values()}
    assert len(ids) == N_JOBS  # distinct jobs for distinct submissions
    replays = Counter(a.submission.index for a in answers if a.replayed)
    keyed = {a.submission.index for a in answers if a.submission.idempotency_key}
    assert set(replays) == keyed and set(replays.values()) == {1}  # one of each pair was the replay

    # Recorded exactly once: the team has these rows and no others (ids are primary keys).
    assert sum(team_counts(service).values()) == N_JOBS
    with session_scope(service.database_url) as s:
        rows = s.execute(select(Job.id, Job.idempotency_key).where(Job.team_id == service.team_id)).all()
    assert {r.id for r in rows} == ids
    assert len({r.idempotency_key for r in rows if r.idempotency_key}) == KEYED

    def all_finished() -> bool:
        counts = team_counts(service)
        return counts.get("queued", 0) + counts.get("running", 0) == 0

    wait_until(all_finished, DEADLINE_S, f"{N_JOBS} dry-run jobs to finish", interval=1.0)
    assert team_counts(service) == {"succeeded": N_JOBS}

    with session_scope(service.database_url) as s:
        jobs = s.scalars(select(Job).where(Job.team_id == service.team_id)).all()
        stage_events = dict(
            s.execute(
                select(JobEvent.job_id, func.count())
                .join(Job, Job.id == JobEvent.job_id)
                .where(Job.team_id == service.team_id, JobEvent.type == "stage")
                .group_by(JobEvent.job_id)
            ).all()
        )
    assert all(j.attempts == 1 for j in jobs), Counter(j.attempts for j in jobs)  # none ran twice
    assert all((j.results or {}).get("dry_run") is True and j.progress == 1.0 for j in jobs)
    transitions = status_events(service)
    wrong = {k: v for k, v in transitions.items() if v != ["queued", "running", "succeeded"]}
    assert set(transitions) == ids and not wrong, list(wrong.items())[:3]
    assert set(stage_events) == ids and min(stage_events.values()) >= 1

    assert sorted(listed_ids(service, "succeeded")) == sorted(ids)  # the API agrees with the rows
    assert redis.Redis.from_url(f"{REDIS}/{REDIS_DB}").llen(service.queue) == 0  # nothing left queued
