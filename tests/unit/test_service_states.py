"""Job statuses: the transition table, and set_status's compare-and-set plus its event."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from spruce.common.db import session_scope, upgrade
from spruce.common.jobs import StaleStatus, set_status
from spruce.common.keys import create_key
from spruce.common.models import Job, JobEvent
from spruce.common.settings import Settings
from spruce.common.states import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    check_transition,
    is_terminal,
)

pytestmark = pytest.mark.unit

S = JobStatus


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.CANCELLED),
        (S.QUEUED, S.FAILED),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.CANCELLED),
        (S.RUNNING, S.QUEUED),
    ],
)
def test_allowed(old: JobStatus, new: JobStatus) -> None:
    assert check_transition(old, new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (S.QUEUED, S.SUCCEEDED),
        (S.QUEUED, S.QUEUED),
        (S.RUNNING, S.RUNNING),
        (S.SUCCEEDED, S.RUNNING),
        (S.FAILED, S.QUEUED),
        (S.CANCELLED, S.RUNNING),
        (S.SUCCEEDED, S.FAILED),
        ("queued", "paused"),
        ("bogus", "running"),
    ],
)
def test_illegal(old: str, new: str) -> None:
    with pytest.raises(IllegalTransition, match="cannot go from"):
        check_transition(old, new)


def test_terminal_states_have_no_way_out() -> None:
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED} == TERMINAL
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert is_terminal("cancelled") and not is_terminal("running")
    assert set(TRANSITIONS) == set(JobStatus)


@pytest.fixture()
def url(tmp_path: Path) -> str:
    url = Settings(data_dir=tmp_path).resolved_database_url
    upgrade(url)
    return url


def _job(url: str) -> str:
    with session_scope(url) as s:
        key = create_key(s, "t", "k")
        job = Job(team_id=key.row.team_id, api_key_id=key.row.id, submitted_by="k", spec={"model": "m"})
        s.add(job)
        s.flush()
        return job.id


def test_set_status_writes_row_and_event(url: str) -> None:
    job_id = _job(url)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.started_at is None
        set_status(s, job, S.RUNNING, "go", attempts=1)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.status, job.attempts) == ("running", 1)
        assert job.started_at is not None and job.finished_at is None
        set_status(s, job, S.FAILED, error=("boom", "it broke"))
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.status, job.error_code, job.error_message) == ("failed", "boom", "it broke")
        assert job.finished_at is not None and job.finished_at >= job.started_at  # type: ignore[operator]
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        assert [(e.type, (e.data or {}).get("to")) for e in events] == [
            ("status", "running"),
            ("status", "failed"),
        ]
        assert events[1].data == {
            "from": "running",
            "to": "failed",
            "error": {"code": "boom", "message": "it broke"},
        }


def test_set_status_refuses_illegal_and_stale(url: str) -> None:
    job_id = _job(url)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        with pytest.raises(IllegalTransition):
            set_status(s, job, S.SUCCEEDED)
    # Two sessions read "queued"; the first to write wins, the second sees StaleStatus.
    with session_scope(url) as a, session_scope(url) as b:
        ja, jb = a.get(Job, job_id), b.get(Job, job_id)
        assert ja is not None and jb is not None
        set_status(a, ja, S.CANCELLED)
        a.commit()
        with pytest.raises(StaleStatus):
            set_status(b, jb, S.RUNNING)
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "cancelled"
