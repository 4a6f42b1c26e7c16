"""Idempotency-Key on POST /v1/jobs, in-process (SQLite, filesystem broker): a retry finds its job,
a reused key with another body is refused, keys are per team, a never-enqueued job is not replayed.
Concurrent retries against Postgres are in tests/integration/test_idempotency.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from spruce.api.app import create_app
from spruce.common.db import session_scope
from spruce.common.models import Job
from tests.unit.service import Service

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda", "allocation": "uniform"},
    "calibration": {"source": "pydoc", "samples": 8, "seq_len": 64, "seed": 0},
}


class Svc(Service):
    def post(
        self, key: str | None, body: dict[str, Any] | None = None, team: str = "acme", app: Any = None
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[team]}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return (app or self.client).post("/v1/jobs", json=body or BODY, headers=headers)


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Svc]:
    yield Svc(tmp_path)


def test_a_retry_returns_the_same_job_and_creates_nothing(svc: Svc) -> None:
    first = svc.post("k-1")
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    # The same body with its keys in another order is the same request.
    again = svc.post("k-1", dict(reversed(list(BODY.items()))))
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert (svc.count(Job), svc.queued_messages()) == (1, 1)
    # The replay shows the job as it is now, not as it was.
    svc.client.post(
        f"/v1/jobs/{first.json()['id']}/cancel", headers={"Authorization": f"Bearer {svc.keys['acme']}"}
    )
    assert svc.post("k-1").json()["status"] == "cancelled"


def test_the_same_key_with_another_body_is_409(svc: Svc) -> None:
    job_id = svc.post("k-2").json()["id"]
    r = svc.post("k-2", {**BODY, "sparsity": 0.5})
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "idempotency_key_reused" and err["param"] == "Idempotency-Key"
    assert job_id in err["message"] and "different body" in err["message"]
    assert (svc.count(Job), svc.queued_messages()) == (1, 1)


def test_keys_are_per_team(svc: Svc) -> None:
    mine = svc.post("shared-key").json()["id"]
    theirs = svc.post("shared-key", team="rival")
    assert theirs.status_code == 201 and theirs.json()["id"] != mine
    assert "idempotent-replayed" not in theirs.headers and svc.count(Job) == 2


def test_without_a_key_every_post_is_a_new_job(svc: Svc) -> None:
    assert svc.post(None).json()["id"] != svc.post(None).json()["id"]
    assert svc.count(Job) == 2


@pytest.mark.parametrize("key", ["x" * 201, "has space", "tab\there", "ünïcode"])
def test_malformed_keys_are_422(svc: Svc, key: str) -> None:
    headers = {"Authorization": f"Bearer {svc.keys['acme']}", "Idempotency-Key": key}
    r = svc.client.post(
        "/v1/jobs", json=BODY, headers={k.encode(): v.encode("utf-8") for k, v in headers.items()}
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "Idempotency-Key"
    assert svc.count(Job) == 0


def test_a_job_that_never_reached_the_queue_is_submitted_again(svc: Svc) -> None:
    """Broker down: the first answer is 503 with a failed row; the retry enqueues a fresh job."""
    dead = TestClient(
        create_app(
            svc.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "broker_timeout": 0.3})
        )
    )
    first = svc.post("k-3", app=dead)
    assert first.status_code == 503 and first.json()["error"]["code"] == "broker_unavailable"
    lost = first.json()["job"]
    assert svc.post("k-3", app=dead).status_code == 503  # still down: still not replayed as a success

    retry = svc.post("k-3")  # the broker is back (this app's broker works)
    assert retry.status_code == 201 and "idempotent-replayed" not in retry.headers
    new = retry.json()
    assert new["id"] != lost and new["status"] == "queued" and svc.queued_messages() == 1
    again = svc.post("k-3")
    assert again.json()["id"] == new["id"] and again.headers["idempotent-replayed"] == "true"
    with session_scope(svc.url) as s:
        rows = {j.id: (j.status, j.error_code, j.idempotency_key) for j in s.scalars(select(Job))}
    # The failed attempts stay on record (without the key); one live job holds it.
    assert rows[new["id"]] == ("queued", None, "k-3")
    assert rows[lost] == ("failed", "broker_unavailable", None)
    assert sum(1 for _, _, k in rows.values() if k == "k-3") == 1 and len(rows) == 3


def test_openapi_documents_the_header(svc: Svc) -> None:
    op = svc.client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]
    header = next(p for p in op["parameters"] if p["name"] == "Idempotency-Key")
    assert header["in"] == "header" and header["required"] is False
    assert {"409", "413", "429", "503"} <= set(op["responses"])
