"""Per-team limits over HTTP (queued jobs 429, storage 403), GET /v1/usage, deleting jobs and
datasets, retention (410 for a removed artifact), and the admin commands that set limits."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from spruce.cli.main import main as cli
from spruce.common.db import session_scope
from spruce.common.jobs import set_status
from spruce.common.models import Artifact, Job, JobEvent, Team, utcnow
from spruce.common.retention import housekeeping
from spruce.common.states import JobStatus
from spruce.common.storage import LocalStorage
from tests.unit.service import Service

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {"model": "smollm2-135m", "sparsity": "2:4", "method": {"pruner": "wanda"}}


def submit(svc: Service, key: str | None = None) -> Any:
    return svc.client.post("/v1/jobs", json=BODY, headers=svc.h(key))


def upload(svc: Service, content: bytes, key: str | None = None) -> Any:
    return svc.client.post("/v1/datasets", files={"file": ("t.txt", content)}, headers=svc.h(key))


def finished_job(svc: Service, team: str, files: dict[str, bytes], days_ago: float = 0.0) -> str:
    """A succeeded job of ``team`` with ``files`` stored as its artifacts, finished ``days_ago``."""
    store = LocalStorage(svc.settings.resolved_artifacts_dir)
    with session_scope(svc.url) as s:
        team_id = s.scalar(select(Team.id).where(Team.name == team))
        job = Job(team_id=team_id, submitted_by="ci", spec=BODY)
        s.add(job)
        s.flush()
        set_status(s, job, JobStatus.RUNNING)
        set_status(s, job, JobStatus.SUCCEEDED)
        job.finished_at = utcnow() - timedelta(days=days_ago)
        for name, data in files.items():
            key = f"jobs/{job.id}/{name}"
            store.put_stream(key, io.BytesIO(data))
            s.add(Artifact(job_id=job.id, name=name, size=len(data), sha256="0" * 64, storage_key=key))
        store.put_stream(f"jobs/{job.id}/checkpoint/head.json", io.BytesIO(b"{}"))
        return job.id


def test_the_queued_limit_answers_429_naming_it(tmp_path: Path) -> None:
    svc = Service(tmp_path, team_max_queued=2)
    assert [submit(svc).status_code for _ in range(2)] == [201, 201]
    r = submit(svc)
    assert r.status_code == 429 and r.headers["Retry-After"] == "30"
    error = r.json()["error"]
    assert error["code"] == "queue_limit_exceeded" and "max_queued=2" in error["message"]
    assert "has 2 queued jobs" in error["message"] and svc.count(Job) == 2
    assert submit(svc, svc.other).status_code == 201  # another team's queue is its own
    with session_scope(svc.url) as s:  # an override: acme may queue one more
        team = s.scalar(select(Team).where(Team.name == "acme"))
        assert team is not None
        team.max_queued = 3
    assert submit(svc).status_code == 201 and submit(svc).status_code == 429


def test_usage_reports_use_against_limits(tmp_path: Path) -> None:
    svc = Service(tmp_path, team_max_queued=5, team_max_stored_bytes=1000, retention_days=7)
    assert submit(svc).status_code == 201
    assert upload(svc, b"hello world\n").status_code == 201
    finished_job(svc, "acme", {"report.json": b"x" * 100})
    finished_job(svc, "rival", {"report.json": b"x" * 500})  # not acme's
    r = svc.client.get("/v1/usage", headers=svc.h())
    assert r.status_code == 200
    assert r.json() == {
        "team": "acme",
        "queued": {"used": 1, "limit": 5},
        "running": {"used": 0, "limit": None},
        "stored_bytes": {"used": 12 + 100, "limit": 1000},
        "retention_days": 7,
    }
    assert svc.client.get("/v1/usage").status_code == 401


def test_the_storage_quota_refuses_uploads_and_jobs_with_403(tmp_path: Path) -> None:
    svc = Service(tmp_path, team_max_stored_bytes=100)
    assert upload(svc, b"a" * 60 + b"\n").status_code == 201
    r = upload(svc, b"b" * 60 + b"\n")
    error = r.json()["error"]
    assert r.status_code == 403 and error["code"] == "storage_quota_exceeded"
    assert "max_stored_bytes=100" in error["message"] and "61 bytes + 61 bytes" in error["message"]
    assert len(svc.client.get("/v1/datasets", headers=svc.h()).json()["data"]) == 1
    store = LocalStorage(svc.settings.resolved_artifacts_dir)
    assert len(store.list("datasets/")) == 1  # the refused file was not kept
    assert submit(svc).status_code == 201  # 61 of 100 bytes: a job may still run
    finished_job(svc, "acme", {"report.json": b"x" * 50})
    r = submit(svc)
    assert r.status_code == 403 and r.json()["error"]["code"] == "storage_quota_exceeded"


def test_delete_a_finished_job_removes_its_files_and_row(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    job_id = finished_job(svc, "acme", {"hf/config.json": b"{}", "report.json": b"{}"})
    store = LocalStorage(svc.settings.resolved_artifacts_dir)
    assert svc.client.delete(f"/v1/jobs/{job_id}", headers=svc.h(svc.other)).status_code == 404
    assert len(store.list(f"jobs/{job_id}/")) == 3
    r = svc.client.delete(f"/v1/jobs/{job_id}", headers=svc.h())
    assert r.status_code == 204 and r.content == b""
    assert store.list(f"jobs/{job_id}/") == []  # artifacts and checkpoint
    assert svc.count(Job) == 0 and svc.count(Artifact) == 0 and svc.count(JobEvent) == 0
    assert svc.client.get(f"/v1/jobs/{job_id}", headers=svc.h()).status_code == 404
    assert svc.client.delete(f"/v1/jobs/{job_id}", headers=svc.h()).status_code == 404


def test_delete_a_queued_job_cancels_it(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    job_id = submit(svc).json()["id"]
    assert svc.client.delete(f"/v1/jobs/{job_id}", headers=svc.h()).status_code == 204
    assert svc.count(Job) == 0
    assert svc.client.get("/v1/jobs", headers=svc.h()).json()["data"] == []


def test_delete_a_running_job_stops_it_and_the_worker_removes_it(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    job_id = submit(svc).json()["id"]
    with session_scope(svc.url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        set_status(s, job, JobStatus.RUNNING)
    assert svc.client.delete(f"/v1/jobs/{job_id}", headers=svc.h()).status_code == 204
    assert svc.client.get(f"/v1/jobs/{job_id}", headers=svc.h()).status_code == 404
    assert job_id not in [j["id"] for j in svc.client.get("/v1/jobs", headers=svc.h()).json()["data"]]
    with session_scope(svc.url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.cancel_requested and job.deleted_at is not None
        assert housekeeping(svc.settings).purged == []  # still running: left to its worker
        set_status(s, job, JobStatus.CANCELLED)  # the worker stopped between layers
    assert housekeeping(svc.settings).purged == [job_id] and svc.count(Job) == 0


def test_retention_removes_old_artifacts_and_downloads_answer_410(tmp_path: Path) -> None:
    svc = Service(tmp_path, retention_days=30)
    old = finished_job(svc, "acme", {"report.json": b"old"}, days_ago=31)
    new = finished_job(svc, "acme", {"report.json": b"new"}, days_ago=29)
    store = LocalStorage(svc.settings.resolved_artifacts_dir)
    assert housekeeping(svc.settings).expired == [old]
    assert store.list(f"jobs/{old}/") == [] and store.exists(f"jobs/{new}/report.json")
    r = svc.client.get(f"/v1/jobs/{old}/artifacts/report.json", headers=svc.h())
    assert r.status_code == 410 and r.json()["error"]["code"] == "artifact_deleted"
    assert "SPRUCE_RETENTION_DAYS" in r.json()["error"]["message"]
    assert svc.client.get(f"/v1/jobs/{old}/artifacts", headers=svc.h()).json()["data"] == []
    assert svc.client.get(f"/v1/jobs/{new}/artifacts/report.json", headers=svc.h()).content == b"new"
    assert svc.client.get(f"/v1/jobs/{old}", headers=svc.h()).json()["status"] == "succeeded"
    assert housekeeping(svc.settings).expired == []  # done once
    forever = svc.settings.model_copy(update={"retention_days": 0})
    assert housekeeping(forever, now=utcnow() + timedelta(days=3650)).expired == []


def test_delete_a_dataset_unless_a_waiting_job_reads_it(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    ds = upload(svc, b"some text\n").json()["id"]
    body = {**BODY, "calibration": {"source": ds}}
    job_id = svc.client.post("/v1/jobs", json=body, headers=svc.h()).json()["id"]
    assert svc.client.delete(f"/v1/datasets/{ds}", headers=svc.h(svc.other)).status_code == 404
    r = svc.client.delete(f"/v1/datasets/{ds}", headers=svc.h())
    assert r.status_code == 409 and r.json()["error"]["code"] == "dataset_in_use"
    assert job_id in r.json()["error"]["message"]
    assert svc.client.post(f"/v1/jobs/{job_id}/cancel", headers=svc.h()).status_code == 200
    assert svc.client.delete(f"/v1/datasets/{ds}", headers=svc.h()).status_code == 204
    assert svc.client.get(f"/v1/datasets/{ds}", headers=svc.h()).status_code == 404
    assert LocalStorage(svc.settings.resolved_artifacts_dir).list("datasets/") == []


def test_admin_commands_set_and_show_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from spruce.common.settings import get_settings

    monkeypatch.setenv("SPRUCE_DATA_DIR", str(tmp_path))  # restored after the test (the CLI sets it)
    get_settings.cache_clear()
    svc = Service(tmp_path)
    args = ["--data-dir", str(tmp_path)]
    try:
        assert cli(["teams", "limits", "acme", "--max-queued", "3", "--max-bytes", "0", *args]) == 0
        assert "queued        0 of 3 (max_queued, override)" in capsys.readouterr().out
        assert cli(["teams", "show", "acme", "--json", *args]) == 0
        shown = capsys.readouterr().out
        assert (
            '"queued": {"used": 0, "limit": 3}' in shown
            and '"stored_bytes": {"used": 0, "limit": null}' in shown
        )
        assert [submit(svc).status_code for _ in range(4)] == [201, 201, 201, 429]
        assert cli(["teams", "limits", "acme", "--max-queued", "default", *args]) == 0
        assert "(max_queued, default)" in capsys.readouterr().out
        assert submit(svc).status_code == 201
        assert cli(["teams", "limits", "nobody", "--max-queued", "1", *args]) == 1
        with pytest.raises(SystemExit):
            cli(["teams", "limits", "acme", "--max-running", "-1", *args])
        assert cli(["retention", "run", *args]) == 0
        assert "deleted jobs removed: 0" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()
