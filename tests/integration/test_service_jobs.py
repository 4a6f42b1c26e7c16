"""A job through the real stack: HTTP API -> Postgres row -> Redis -> Celery worker -> engine ->
S3 (moto) -> back over HTTP. Also cancel, team isolation, validation and a dead broker."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.integration.conftest import TINY_SPEC, Stack, wait_until

pytestmark = pytest.mark.integration

TERMINAL = ("succeeded", "failed", "cancelled")


def submit(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def poll(
    client: httpx.Client, job_id: str, until: Any, timeout: float = 120
) -> tuple[dict[str, Any], list[float]]:
    """Poll the job until ``until(job)``; returns the last job and every progress value seen."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen.append(job["progress"])
        if until(job):
            return job, seen
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            raise AssertionError(f"job ended as {job['status']} / timed out: {job}")
        time.sleep(0.1)


def test_job_succeeds_end_to_end(stack: Stack, models: dict[str, Path], tmp_path: Path) -> None:
    with stack.client() as client:
        upload = client.post(
            "/v1/datasets",
            files={"file": ("calib.txt", Path(__file__).read_bytes())},
            data={"name": "source code"},
        )
        assert upload.status_code == 201, upload.text
        body = {
            **TINY_SPEC,
            "model": str(models["tiny"]),
            "calibration": {**TINY_SPEC["calibration"], "source": upload.json()["id"]},
        }
        job = submit(client, body)
        job, progress = poll(client, job["id"], lambda j: j["status"] in TERMINAL)
        assert job["status"] == "succeeded", job
        assert progress == sorted(progress) and progress[-1] == 1.0  # never backwards, reaches 1
        assert job["started_at"] and job["finished_at"] and job["attempts"] == 1 and job["error"] is None
        results = job["results"]
        assert set(results) >= {"perplexity", "sparsity", "sizes", "timings", "layers"}
        assert results["perplexity"]["sparse"]["pydoc"] > 1.0
        assert results["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)

        events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        stages = [e["stage"] for e in events if e["type"] == "stage"]
        assert stages[0] == "load" and "prune" in stages and stages[-1] == "export"
        statuses = [e["data"]["to"] for e in events if e["type"] == "status"]
        assert statuses == ["queued", "running", "succeeded"]

        artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
        names = {a["name"] for a in artifacts}
        assert {"report.json", "hf/config.json"} <= names and any(n.startswith("compact/") for n in names)
        listed = boto3.client(
            "s3",
            endpoint_url=stack.s3["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).list_objects_v2(Bucket=stack.s3["bucket"], Prefix=f"jobs/{job['id']}/")
        in_bucket = {o["Key"].split("/", 2)[2]: o["Size"] for o in listed["Contents"]}
        assert in_bucket == {a["name"]: a["size"] for a in artifacts}

        # Download the HF folder through the API (307 to a presigned S3 URL) and load it.
        hf = tmp_path / "hf"
        for art in artifacts:
            if art["name"].startswith("hf/"):
                r = client.get(art["url"])
                assert r.status_code == 307 and r.headers["location"].startswith(stack.s3["endpoint"])
                data = httpx.get(r.headers["location"]).content
                assert hashlib.sha256(data).hexdigest() == art["sha256"]
                (hf / art["name"][3:]).parent.mkdir(parents=True, exist_ok=True)
                (hf / art["name"][3:]).write_bytes(data)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_cancel_queued_and_running(stack: Stack, models: dict[str, Path]) -> None:
    slow = {
        **TINY_SPEC,
        "model": str(models["slow"]),
        "method": {"pruner": "sparsegpt", "induction": False},
        "calibration": {"source": "pydoc", "samples": 32, "seq_len": 128},
    }
    with stack.client() as client:
        running = submit(client, slow)
        poll(client, running["id"], lambda j: j["status"] == "running" and j["stage"] not in (None, "load"))
        queued = submit(client, {**TINY_SPEC, "model": str(models["tiny"])})  # waits behind the solo worker
        r = client.post(f"/v1/jobs/{queued['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"  # immediate

        r = client.post(f"/v1/jobs/{running['id']}/cancel")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        job, _ = poll(client, running["id"], lambda j: j["status"] in TERMINAL, timeout=120)
        assert job["status"] == "cancelled" and job["results"] is None
        assert client.get(f"/v1/jobs/{running['id']}/artifacts").json()["data"] == []

        # The worker then takes the cancelled job's message and skips it: it never runs.
        log = stack.worker_log
        assert log is not None
        wait_until(
            lambda: f"job {queued['id']} is already cancelled" in log.read_text(), 60, "the worker's skip"
        )
        final = client.get(f"/v1/jobs/{queued['id']}").json()
        assert (final["status"], final["attempts"], final["started_at"]) == ("cancelled", 0, None)


def test_other_team_sees_nothing(stack: Stack, models: dict[str, Path]) -> None:
    with stack.client() as mine, stack.client("rival") as theirs:
        job = submit(mine, {**TINY_SPEC, "model": str(models["tiny"])})
        for method, path in [
            ("GET", f"/v1/jobs/{job['id']}"),
            ("POST", f"/v1/jobs/{job['id']}/cancel"),
            ("GET", f"/v1/jobs/{job['id']}/events"),
            ("GET", f"/v1/jobs/{job['id']}/artifacts"),
            ("GET", f"/v1/jobs/{job['id']}/artifacts/report.json"),
        ]:
            r = theirs.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", (method, path)
        assert job["id"] not in [j["id"] for j in theirs.get("/v1/jobs").json()["data"]]
        poll(mine, job["id"], lambda j: j["status"] in TERMINAL)
        assert mine.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"method": {"pruner": "nope"}}, "method.pruner"),
        ({"calibration": {"samples": 100000}}, "calibration.samples"),
        ({"model": "/etc"}, "model"),
        ({"evaluation": {"sources": ["ds_ffffffffffffffffffffffff"]}}, "evaluation.sources[0]"),
    ],
)
def test_bad_bodies_are_422(stack: Stack, models: dict[str, Path], patch: dict[str, Any], param: str) -> None:
    with stack.client() as client:
        r = client.post("/v1/jobs", json={**TINY_SPEC, "model": str(models["tiny"]), **patch})
        assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text


def test_broker_down(stack: Stack, models: dict[str, Path]) -> None:
    """A dead Redis: /readyz names it; a submission answers 503 and the row stays, marked failed."""
    from fastapi.testclient import TestClient

    from spruce.api.app import create_app

    dead = stack.settings(broker_url="redis://127.0.0.1:1/0", broker_timeout=1.0)
    client = TestClient(create_app(dead), headers={"Authorization": f"Bearer {stack.keys['acme']}"})
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "failing"
    assert ready.json()["checks"]["database"] == "ok" and ready.json()["checks"]["storage"] == "ok"
    r = client.post("/v1/jobs", json={**TINY_SPEC, "model": str(models["tiny"])})
    assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
    job_id = r.json()["job"]
    with stack.client() as live:  # the real API sees the same row
        job = live.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed" and job["error"]["code"] == "broker_unavailable"


def test_postgres_migrations_match_models(stack: Stack) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from spruce.common.db import get_engine
    from spruce.common.models import Base

    with get_engine(stack.database_url).connect() as conn:
        assert (
            compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            == []
        )
