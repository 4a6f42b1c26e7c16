"""Sweeps on the real stack (API, Postgres, Redis, Celery worker, S3): three targets on the tiny
model run to completion with one calibration set; a sweep over the team's queued limit is
refused whole (the SDK's sweep: test_sweeps_sdk.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from spruce.common.db import session_scope
from spruce.common.models import Team
from tests.integration.conftest import TINY_SPEC, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def wait_sweep(c: httpx.Client, sweep_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep: dict[str, Any] = c.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["progress"]["done"] == sweep["progress"]["total"]:
            return sweep
        time.sleep(0.5)
    raise AssertionError(f"sweep {sweep_id} still {sweep['status']} after {timeout:.0f} s")


def report_of(c: httpx.Client, job_id: str) -> dict[str, Any]:
    r = c.get(f"/v1/jobs/{job_id}/artifacts/report.json", follow_redirects=True)
    assert r.status_code == 200, r.text
    return dict(json.loads(r.content))


def test_a_sweep_of_three_targets_runs_to_completion(stack: Stack, models: dict[str, Path]) -> None:
    spec = {**TINY_SPEC, "model": str(models["tiny"])}
    with stack.client() as c:
        r = c.post("/v1/sweeps", json={"spec": spec, "targets": [0.3, "2:4", 0.7]})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["status"] in ("queued", "running") and created["progress"]["total"] == 3
        sweep = wait_sweep(c, created["id"])
        assert sweep["status"] == "succeeded", sweep
        table = sweep["table"]
        assert [row["job"] for row in table] == created["jobs"]
        assert [row["target"] for row in table] == [0.3, "2:4", 0.7]
        for row, target in zip(table, (0.3, 0.5, 0.7), strict=True):
            assert row["status"] == "succeeded"
            assert abs(row["sparsity"] - target) < 0.02, row
            dense, sparse = row["perplexity"]["dense"]["pydoc"], row["perplexity"]["sparse"]["pydoc"]
            assert dense > 1.0 and sparse > 1.0
            assert row["hf_bytes"] > 0 and row["compact_bytes"] > 0
        # the Pareto front: a non-empty subset of the rows that no row beats on both axes
        front = {row["job"] for row in sweep["pareto"]}
        assert front and front <= {row["job"] for row in table}
        for row in table:
            s, p = row["sparsity"], row["perplexity"]["sparse"]["pydoc"]
            beaten = any(
                o["sparsity"] >= s and o["perplexity"]["sparse"]["pydoc"] <= p and o["job"] != row["job"]
                and (o["sparsity"] > s or o["perplexity"]["sparse"]["pydoc"] < p)
                for o in table
            )  # fmt: skip
            assert (row["job"] in front) == (not beaten)
        # best_within: the sparsest row within 10 times dense (generous: the tiny model is random)
        within = c.get(f"/v1/sweeps/{created['id']}", params={"within": 10.0}).json()["best_within"]
        fits = [
            r for r in table if r["perplexity"]["sparse"]["pydoc"] <= 11 * r["perplexity"]["dense"]["pydoc"]
        ]
        assert within == (max(fits, key=lambda r: r["sparsity"]) if fits else None)
        # children are ordinary jobs of the team, and they read one calibration set
        jobs = {j["id"]: j for j in c.get("/v1/jobs", params={"limit": 100}).json()["data"]}
        assert all(jobs[j]["sweep_id"] == created["id"] for j in created["jobs"])
        calibrations = [report_of(c, j)["calibration"] for j in created["jobs"]]
        assert calibrations[0] == calibrations[1] == calibrations[2]
        assert all(jobs[j]["spec"]["calibration"] == sweep["calibration"] for j in created["jobs"])
        listed = c.get("/v1/sweeps").json()["data"]
        assert created["id"] in [s["id"] for s in listed]


def test_a_sweep_over_the_queued_limit_is_refused(stack: Stack, models: dict[str, Path]) -> None:
    with session_scope(stack.database_url) as session:
        team = session.query(Team).filter_by(name="rival").one()
        team.max_queued = 2
    try:
        with stack.client("rival") as c:
            body = {"spec": {**TINY_SPEC, "model": str(models["tiny"])}, "targets": [0.3, 0.5, 0.7]}
            r = c.post("/v1/sweeps", json=body)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "queue_limit_exceeded"
            assert "max_queued=2" in r.json()["error"]["message"]
            assert c.get("/v1/sweeps").json()["data"] == []
            assert c.get("/v1/jobs").json()["data"] == []
    finally:
        with session_scope(stack.database_url) as session:
            session.query(Team).filter_by(name="rival").one().max_queued = None
