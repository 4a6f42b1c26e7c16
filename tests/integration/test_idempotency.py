"""Idempotency-Key against the real stack (uvicorn, Postgres, Redis, a Celery worker): concurrent
retries make exactly one job that runs once; a job the broker never got is submitted again."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.integration.conftest import TINY_SPEC, Stack
from tests.integration.test_service_jobs import TERMINAL, poll

pytestmark = pytest.mark.integration


def _jobs_with_key(stack: Stack, key: str) -> list[Any]:
    from spruce.common.db import session_scope
    from spruce.common.models import Job

    with session_scope(stack.database_url) as s:
        return list(s.scalars(select(Job).where(Job.idempotency_key == key)).all())


def _running_transitions(client: httpx.Client, job_id: str) -> int:
    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    return sum(1 for e in events if e["type"] == "status" and e["data"]["to"] == "running")


def test_concurrent_retries_make_one_job_that_runs_once(stack: Stack, models: dict[str, Path]) -> None:
    key = f"conc-{secrets.token_hex(6)}"
    body = {**TINY_SPEC, "model": str(models["tiny"])}
    n = 12
    start = threading.Barrier(n)

    def submit(_: int) -> httpx.Response:
        with stack.client() as client:
            start.wait(timeout=60)  # all at once, so that inserts really race
            return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(submit, range(n)))
    assert [r.status_code for r in answers] == [201] * n, [r.text for r in answers if r.status_code != 201]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == n - 1
    rows = _jobs_with_key(stack, key)
    assert len(rows) == 1

    with stack.client() as client:
        job, _ = poll(client, rows[0].id, lambda j: j["status"] in TERMINAL)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert _running_transitions(client, job["id"]) == 1  # one message, one run
        late = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        assert late.status_code == 201 and late.json()["status"] == "succeeded"  # the job as it is now


def test_a_lost_race_on_the_unique_constraint_answers_the_winner(
    stack: Stack, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between "no job with this key" and the insert, made certain: the insert hits
    Postgres' unique (team_id, idempotency_key) and the request answers the other's job."""
    from spruce.api import idempotency
    from spruce.api.app import create_app

    key = f"race-{secrets.token_hex(6)}"
    body = {**TINY_SPEC, "model": str(models["tiny"])}
    with stack.client() as client:
        winner = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}).json()

    real_find = idempotency.find
    blinded: list[bool] = []

    def find_late(*args: Any) -> Any:
        if not blinded:  # the first look happens "before the other request committed"
            blinded.append(True)
            return None
        return real_find(*args)

    monkeypatch.setattr(idempotency, "find", find_late)
    app = TestClient(create_app(stack.settings()), headers={"Authorization": f"Bearer {stack.keys['acme']}"})
    r = app.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert blinded and r.status_code == 201, r.text
    assert r.json()["id"] == winner["id"] and r.headers["idempotent-replayed"] == "true"
    assert len(_jobs_with_key(stack, key)) == 1
    other = app.post("/v1/jobs", json={**body, "sparsity": 0.25}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"


def test_a_job_the_broker_never_got_is_submitted_again_and_runs(
    stack: Stack, models: dict[str, Path]
) -> None:
    from spruce.api.app import create_app

    key = f"lost-{secrets.token_hex(6)}"
    body = {**TINY_SPEC, "model": str(models["tiny"])}
    dead = TestClient(
        create_app(stack.settings(broker_url="redis://127.0.0.1:1/0", broker_timeout=1.0)),
        headers={"Authorization": f"Bearer {stack.keys['acme']}"},
    )
    first = dead.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 503 and first.json()["error"]["code"] == "broker_unavailable"

    with stack.client() as client:
        retry = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
        assert retry.json()["id"] != first.json()["job"]
        job, _ = poll(client, retry.json()["id"], lambda j: j["status"] in TERMINAL)
        assert job["status"] == "succeeded"
        lost = client.get(f"/v1/jobs/{first.json()['job']}").json()
        assert lost["status"] == "failed" and lost["error"]["code"] == "broker_unavailable"
    assert [j.id for j in _jobs_with_key(stack, key)] == [job["id"]]
