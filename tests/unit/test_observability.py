"""Metrics and logs: request ids, redaction, JSON lines, and /metrics read from the database."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spruce.common.db import session_scope
from spruce.common.jobs import add_event, set_status
from spruce.common.logging import JsonFormatter, RedactFilter, configure_logging, job_id, redact
from spruce.common.models import Job, JobEvent, Team
from spruce.common.states import JobStatus
from tests.unit.service import Service

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": 0.5,
    "method": {"pruner": "magnitude"},
    "calibration": {"source": "pydoc", "samples": 8, "seq_len": 64, "seed": 0},
}
KEY = "spk_" + "A1b2C3d4" * 5 + "xyz"


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Service]:
    service = Service(tmp_path)
    service.client.headers["Authorization"] = f"Bearer {service.key}"
    yield service


@pytest.fixture()
def lines() -> Iterator[io.StringIO]:
    """What the JSON log handler writes, as text."""
    handler = configure_logging("json")
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    configure_logging("text")


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_redact_removes_keys_tokens_and_signatures() -> None:
    text = (
        f"key {KEY} Authorization: Bearer abc.def-123 "
        "GET /v1/downloads/job_1/report.json?key=key_1&expires=99&signature=0123abcd "
        "https://s3/b/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=ffee&x-amz-security-token=T0KEN9"
    )
    out = redact(text)
    for secret in (KEY, "abc.def-123", "0123abcd", "AKIA", "ffee", "T0KEN9"):
        assert secret not in out, secret
    assert "expires=99" in out and "X-Amz-Algorithm=AWS4" in out and "key=key_1" in out  # not secrets


def test_a_json_line_carries_the_job_id_and_no_secret() -> None:
    record = logging.LogRecord("w", logging.INFO, __file__, 1, "using %s", (KEY,), None)
    token = job_id.set("job_abc")
    try:
        assert RedactFilter().filter(record)
    finally:
        job_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["job_id"] == "job_abc" and line["level"] == "INFO" and KEY not in line["message"]


def test_requests_get_an_id_echoed_in_the_header_and_the_log(svc: Service, lines: io.StringIO) -> None:
    r = svc.client.post("/v1/jobs", json=BODY)
    generated = r.headers["x-request-id"]
    assert r.status_code == 201 and len(generated) == 32
    job = r.json()["id"]
    r = svc.client.get(f"/v1/jobs/{job}", headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    bad = svc.client.get(f"/v1/jobs/{job}", headers={"X-Request-ID": "no spaces\tor tabs"})
    assert bad.headers["x-request-id"] != "no spaces\tor tabs"  # replaced, not echoed
    access = [r for r in _records(lines) if r["logger"] == "spruce.api.access"]
    assert {"trace-42", generated} <= {r.get("request_id") for r in access}
    mine = next(r for r in access if r.get("request_id") == "trace-42")
    assert (
        mine["route"] == "/v1/jobs/{job_id}" and mine["status"] == 200 and mine["path"] == f"/v1/jobs/{job}"
    )


def test_signed_links_and_keys_never_reach_the_log(svc: Service, lines: io.StringIO) -> None:
    svc.client.get("/v1/downloads/job_x/report.json?key=key_1&expires=1&signature=s3cr3tsig")
    svc.client.get("/v1/me", headers={"Authorization": f"Bearer {KEY}"})
    svc.client.get("/v1/me", headers={"Authorization": f"Bearer {svc.key}"})
    text = lines.getvalue()
    assert "/v1/downloads/job_x/report.json" in text  # the request was logged...
    for secret in ("s3cr3tsig", KEY, svc.key):
        assert secret not in text  # ...without what makes it work


def _metrics(svc: Service, **headers: str) -> dict[str, Any]:
    r = svc.client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(family: Any, suffix: str = "", **labels: str) -> float:
    for s in family.samples:
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no {family.name}{suffix} {labels}")


def test_metrics_count_requests_by_route_template_and_status(svc: Service) -> None:
    job = svc.client.post("/v1/jobs", json=BODY).json()["id"]
    for _ in range(3):
        svc.client.get(f"/v1/jobs/{job}")
    svc.client.get("/v1/jobs/job_nosuch")
    families = _metrics(svc)
    requests = families["spruce_http_requests"]
    assert _value(requests, "_total", route="/v1/jobs/{job_id}", status="200", method="GET") == 3
    assert _value(requests, "_total", route="/v1/jobs/{job_id}", status="404") == 1
    latency = families["spruce_http_request_duration_seconds"]
    assert _value(latency, "_count", route="/v1/jobs/{job_id}") == 4
    assert not any(job in s.labels.get("route", "") for f in families.values() for s in f.samples)


def test_metrics_read_jobs_queues_and_durations_from_the_database(svc: Service) -> None:
    ids = [svc.client.post("/v1/jobs", json=BODY).json()["id"] for _ in range(3)]
    with session_scope(svc.url) as s:
        job = s.get(Job, ids[0])
        assert job is not None
        set_status(s, job, JobStatus.RUNNING)
        job.worker = "celery@gpu0"
        t0 = job.started_at
        assert t0 is not None
        for i, stage in enumerate(("load", "calibration", "prune")):
            add_event(s, job.id, "stage", f"stage {stage}", stage=stage)
            s.flush()
            event = s.query(JobEvent).filter_by(job_id=job.id, stage=stage).one()
            event.created_at = t0 + timedelta(seconds=10 * i)  # load 10 s, calibration 10 s
        set_status(s, job, JobStatus.SUCCEEDED, results={})
        s.flush()
        last = s.query(JobEvent).filter_by(job_id=job.id, type="status").order_by(JobEvent.id.desc()).first()
        assert last is not None
        last.created_at = job.finished_at = t0 + timedelta(seconds=95)  # prune 75 s
        second = s.get(Job, ids[1])
        assert second is not None
        set_status(s, second, JobStatus.RUNNING)
        second.worker = "celery@gpu1"
        team = s.query(Team).filter_by(name="acme").one().name
    families = _metrics(svc)
    assert _value(families["spruce_jobs"], status="queued") == 1
    assert _value(families["spruce_jobs"], status="running") == 1
    assert _value(families["spruce_jobs"], status="succeeded") == 1
    assert _value(families["spruce_queue_depth"], team=team) == 1
    assert _value(families["spruce_running_jobs"], team=team) == 1
    assert _value(families["spruce_queue_depth"], team="rival") == 0  # a team with nothing queued reads 0
    assert _value(families["spruce_workers_busy"]) == 1 and _value(families["spruce_workers"]) == 1
    jobs = families["spruce_job_duration_seconds"]
    assert _value(jobs, "_count", status="succeeded") == 1 and _value(jobs, "_sum", status="succeeded") == 95
    stages = families["spruce_stage_duration_seconds"]
    assert _value(stages, "_sum", stage="load") == 10 and _value(stages, "_sum", stage="prune") == 75
    assert _value(stages, "_bucket", stage="prune", le="60.0") == 0
    assert _value(stages, "_bucket", stage="prune", le="120.0") == 1
    assert _value(families["spruce_metrics_database_up"]) == 1


def test_metrics_token_when_set(tmp_path: Path) -> None:
    svc = Service(tmp_path, metrics_token="scrape-secret")
    assert svc.client.get("/metrics").status_code == 401
    assert svc.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "spruce_jobs" in _metrics(svc, Authorization="Bearer scrape-secret")


def test_configuring_twice_leaves_one_console_handler_and_redacts_the_others() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    console = logging.StreamHandler(sys.stderr)  # what `spruce serve`'s logging.basicConfig adds
    extra = logging.StreamHandler(io.StringIO())
    root.addHandler(console)
    root.addHandler(extra)
    try:
        configure_logging("text")
        configure_logging("json")
        consoles = [h for h in root.handlers if type(h) is logging.StreamHandler and h is not extra]
        assert console not in root.handlers  # it would print every line again, unredacted
        assert len(consoles) == 1  # ours
        logging.getLogger("t").warning("key %s", KEY)
        assert KEY not in extra.stream.getvalue() and "spk_[redacted]" in extra.stream.getvalue()
    finally:
        root.removeHandler(extra)
        for h in before:
            if h not in root.handlers:
                root.addHandler(h)
        configure_logging("text")


def test_a_500_traceback_carries_the_request_id(svc: Service, lines: io.StringIO) -> None:
    @svc.client.app.get("/boom")  # type: ignore[attr-defined]
    def boom() -> None:
        raise RuntimeError("kaput")

    from fastapi.testclient import TestClient

    r = TestClient(svc.client.app, raise_server_exceptions=False).get(
        "/boom", headers={"X-Request-ID": "r-500"}
    )
    assert r.status_code == 500
    records = _records(lines)
    crash = next(x for x in records if "unhandled error" in x["message"])
    assert crash["request_id"] == "r-500" and "kaput" in crash["exception"]
    assert any(x["logger"] == "spruce.api.access" and x["status"] == 500 for x in records)
