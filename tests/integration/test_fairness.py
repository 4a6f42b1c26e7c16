"""Fair sharing on the real stack (Postgres, Redis, a solo Celery worker, S3): with one team
holding 50 queued jobs, another team's new job runs next; then the usage endpoint and DELETE."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

TERMINAL = ("succeeded", "failed", "cancelled")
QUEUED_BY_A = 50


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait_for(client: httpx.Client, job_id: str, until: Any, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            raise AssertionError(f"job ended as {job['status']} / timed out: {job}")
        time.sleep(0.2)


def started(job: dict[str, Any]) -> datetime | None:
    return datetime.fromisoformat(job["started_at"]) if job["started_at"] else None


def s3_keys(stack: Stack, prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=stack.s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    listed = client.list_objects_v2(Bucket=stack.s3["bucket"], Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def test_another_teams_job_runs_before_a_long_queue(stack: Stack, models: dict[str, Path]) -> None:
    tiny = {
        "model": str(models["tiny"]),
        "sparsity": 0.5,
        "method": {"pruner": "wanda", "induction": False},
        "calibration": {"source": "pydoc", "samples": 4, "seq_len": 32, "seed": 0},
        "evaluation": {"sources": ["none"]},
    }
    slow = {  # slow enough to hold the one worker while the queues fill
        **tiny,
        "model": str(models["slow"]),
        "method": {"pruner": "sparsegpt", "induction": False},
        "calibration": {"source": "pydoc", "samples": 16, "seq_len": 128},
    }
    with stack.client("acme") as a, stack.client("rival") as b:
        busy = submit(a, slow)
        wait_for(a, busy, lambda j: j["status"] == "running" and j["stage"] not in (None, "load"))
        queued = [submit(a, tiny) for _ in range(QUEUED_BY_A)]  # every message before b's
        theirs = submit(b, tiny)
        usage = a.get("/v1/usage").json()
        assert usage["queued"]["used"] == QUEUED_BY_A and usage["running"]["used"] == 1
        assert b.get("/v1/usage").json()["queued"]["used"] == 1

        assert a.post(f"/v1/jobs/{busy}/cancel").status_code == 200  # frees the one worker
        done = wait_for(b, theirs, lambda j: j["status"] in TERMINAL)
        assert done["status"] == "succeeded", done
        b_start = started(done)
        assert b_start is not None
        first = wait_for(a, queued[0], lambda j: j["status"] == "succeeded")
        first_start = started(first)
        assert first_start is not None and first_start > b_start  # b's job ran next, then a's oldest
        a_starts = [started(a.get(f"/v1/jobs/{j}").json()) for j in queued]
        assert not [s for s in a_starts if s is not None and s < b_start]

        # Deleting removes the finished job's files from S3 and every job from the API.
        assert s3_keys(stack, f"jobs/{queued[0]}/")
        for job_id in [busy, *queued, theirs]:
            r = (b if job_id == theirs else a).delete(f"/v1/jobs/{job_id}")
            assert r.status_code == 204, r.text
        assert s3_keys(stack, f"jobs/{queued[0]}/") == []
        assert a.get(f"/v1/jobs/{queued[0]}").status_code == 404
        assert a.get("/v1/usage").json()["queued"]["used"] == 0
