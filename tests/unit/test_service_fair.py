"""The fair scheduler on SQLite with the engine stubbed: which job a message starts, the running
limit, a retry's backoff, and that one message per queued job runs every job exactly once.
The same on Postgres with a real worker: tests/integration/test_fairness.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from spruce.common.db import session_scope, upgrade
from spruce.common.jobs import set_status
from spruce.common.keys import create_key
from spruce.common.models import Job, Team, utcnow
from spruce.common.settings import Settings
from spruce.common.states import JobStatus
from spruce.worker.claim import claim_next
from spruce.worker.runner import RetryLater, run
from tests.unit.test_service_worker import good_run, stub

pytestmark = pytest.mark.unit

SPEC = {"model": "smollm2-135m", "sparsity": 0.5}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, device="cpu", progress_interval=0.0, checkpoints=False)
    upgrade(s.resolved_database_url)
    return s


def submit(settings: Settings, team: str, n: int = 1, queue: str | None = "spruce") -> list[str]:
    """``n`` queued jobs of ``team`` (created if new) on ``queue``, in creation order."""
    ids = []
    with session_scope(settings.resolved_database_url) as s:
        team_id = s.scalar(select(Team.id).where(Team.name == team))
        if team_id is None:
            team_id = create_key(s, team, "ci").row.team_id
        for _ in range(n):
            job = Job(team_id=team_id, submitted_by="ci", spec=SPEC, queue=queue)
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def update(settings: Settings, job_id: str, status: JobStatus | None = None, **values: object) -> None:
    with session_scope(settings.resolved_database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        if status is not None:
            set_status(s, job, status)
        for key, value in values.items():
            setattr(job, key, value)


def team_limits(settings: Settings, team: str, **values: object) -> None:
    with session_scope(settings.resolved_database_url) as s:
        row = s.scalar(select(Team).where(Team.name == team))
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)


def next_job(settings: Settings, hint: str) -> str | None:
    found = claim_next(settings.resolved_database_url, hint, "w1", "cpu", settings)
    return found.job.id if found.job is not None else None


def test_a_team_with_a_long_queue_does_not_delay_another(settings: Settings) -> None:
    a = submit(settings, "a", 5)
    (b,) = submit(settings, "b")
    update(settings, a[0], JobStatus.RUNNING, heartbeat_at=utcnow())  # a runs one already
    assert next_job(settings, a[1]) == b  # a's message, b's turn: b runs nothing yet
    # Both run one now; a's last start is older (never recorded), so a's oldest queued job is next.
    assert next_job(settings, a[2]) == a[1]


def test_a_worker_starts_only_its_own_queues_jobs(settings: Settings) -> None:
    (other,) = submit(settings, "a", queue="gpu-h100")  # older, but another pool's job
    (legacy,) = submit(settings, "b", queue=None)  # submitted before jobs had a queue
    (own,) = submit(settings, "c")
    assert settings.queue == "spruce"
    assert next_job(settings, own) == legacy
    assert next_job(settings, own) == own
    assert next_job(settings, own) is None
    found = claim_next(settings.resolved_database_url, own, "w1", "cpu", settings)
    assert found.waiting is None  # the other pool's queued job keeps no message of this queue
    with session_scope(settings.resolved_database_url) as s:
        assert s.get(Job, other).status == JobStatus.QUEUED


def test_ties_go_to_the_team_whose_last_start_is_oldest(settings: Settings) -> None:
    a = submit(settings, "a", 2)
    (b,) = submit(settings, "b")
    team_limits(settings, "a", last_started_at=utcnow() - timedelta(seconds=5))
    team_limits(settings, "b", last_started_at=utcnow() - timedelta(seconds=60))
    assert next_job(settings, a[0]) == b  # neither runs anything; b started longer ago
    assert next_job(settings, a[1]) == a[0]


def test_the_running_limit_holds_jobs_back_until_one_ends(settings: Settings) -> None:
    a = submit(settings, "a", 2)
    team_limits(settings, "a", max_running=1)
    update(settings, a[0], JobStatus.RUNNING, heartbeat_at=utcnow())
    found = claim_next(settings.resolved_database_url, a[1], "w1", "cpu", settings)
    assert found.job is None and found.waiting is not None  # a job waits: keep the message
    with pytest.raises(RetryLater) as later:
        run(a[1], settings)
    assert later.value.cause is None and 0.5 <= later.value.delay <= settings.defer_interval
    update(settings, a[0], JobStatus.SUCCEEDED)
    assert next_job(settings, a[1]) == a[1]


def test_the_default_running_limit_comes_from_settings(settings: Settings) -> None:
    a = submit(settings, "a", 2)
    capped = settings.model_copy(update={"team_max_running": 1})
    update(settings, a[0], JobStatus.RUNNING, heartbeat_at=utcnow())
    assert claim_next(settings.resolved_database_url, a[1], "w1", "cpu", capped).job is None
    team_limits(settings, "a", max_running=0)  # the team's override: no limit
    assert next_job(capped, a[1]) == a[1]


def test_a_retry_waits_out_its_backoff(settings: Settings) -> None:
    (job,) = submit(settings, "a")
    update(settings, job, run_after=utcnow() + timedelta(seconds=60))
    slow = settings.model_copy(update={"defer_interval": 600.0})
    with pytest.raises(RetryLater) as later:
        run(job, slow)
    assert 50 <= later.value.delay <= 60  # the message comes back when the backoff ends
    update(settings, job, run_after=utcnow() - timedelta(seconds=1))
    assert next_job(settings, job) == job


def test_nothing_queued_drops_the_message(settings: Settings) -> None:
    (job,) = submit(settings, "a")
    update(settings, job, JobStatus.CANCELLED)
    assert run(job, settings) == "skipped"


def test_one_message_per_job_runs_every_job_once_alternating_teams(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub(monkeypatch, good_run)
    a = submit(settings, "a", 3)
    b = submit(settings, "b", 2)
    started = []
    for message in a + b:  # the queue's order: every a job was sent before any b job
        assert run(message, settings) == "succeeded"
        with session_scope(settings.resolved_database_url) as s:
            started.append(
                s.scalar(select(Job.id).where(Job.worker.is_not(None)).order_by(Job.started_at.desc()))
            )
    assert started == [a[0], b[0], a[1], b[1], a[2]]
    with session_scope(settings.resolved_database_url) as s:
        jobs = s.scalars(select(Job)).all()
        assert {(j.status, j.attempts) for j in jobs} == {("succeeded", 1)}


def test_a_lost_workers_job_is_taken_over_by_its_own_message(settings: Settings) -> None:
    (old,) = submit(settings, "a")
    (other,) = submit(settings, "b")
    stale = utcnow() - timedelta(seconds=settings.heartbeat_timeout + 5)
    update(settings, old, JobStatus.RUNNING, attempts=1, worker="gpu0@dead", heartbeat_at=stale)
    assert next_job(settings, old) == old  # redelivered: resumes where it was, not the fairest
    assert next_job(settings, old) == other  # now fresh: the duplicate message is a turn for b
