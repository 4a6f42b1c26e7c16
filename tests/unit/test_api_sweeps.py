"""/v1/sweeps in-process (SQLite, filesystem broker, no worker): children recorded as ordinary
jobs sharing one calibration, validation naming the sweep's field, the team's queued limit,
Idempotency-Key, the status and table derived from the children, cancel, delete, pagination."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from spruce.common import retention
from spruce.common.db import session_scope
from spruce.common.jobs import StaleStatus, set_status
from spruce.common.models import Artifact, Job, Sweep
from spruce.common.states import JobStatus
from tests.unit.service import Service

pytestmark = pytest.mark.unit

SPEC: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": 0.5,
    "method": {"pruner": "wanda", "allocation": "uniform"},
    "calibration": {"source": "pydoc", "samples": 8},
    "evaluation": {"sources": ["pydoc"]},
}
BODY: dict[str, Any] = {"spec": SPEC, "targets": ["0.5", "2:4", 0.7]}


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Service]:
    yield Service(tmp_path, max_samples=256)


def post(svc: Service, body: dict[str, Any], **headers: str) -> Any:
    return svc.client.post("/v1/sweeps", json=body, headers={**svc.h(), **headers})


def nothing_created(svc: Service) -> bool:
    return svc.count(Sweep) == 0 and svc.count(Job) == 0 and svc.queued_messages() == 0


def finish(svc: Service, job_id: str, status: JobStatus, sparsity: float = 0.5, ppl: float = 12.0) -> None:
    """Move a child as a worker would: running, then ``status`` (with results if it succeeded)."""
    results = {
        "sparsity": {"overall": sparsity},
        "perplexity": {"dense": {"pydoc": 10.0}, "sparse": {"pydoc": ppl}},
        "sizes": {"hf_bytes": 1000, "compact_bytes": 600},
    }
    with session_scope(svc.url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        set_status(s, job, JobStatus.RUNNING, "started")
        extra = {"results": results} if status == JobStatus.SUCCEEDED else {}
        set_status(s, job, status, "done", **extra)


def test_a_sweep_records_one_ordinary_job_per_target_with_one_calibration(svc: Service) -> None:
    r = post(svc, BODY)
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["id"].startswith("sw_") and sweep["object"] == "sweep"
    assert (sweep["status"], sweep["progress"]) == ("queued", {"done": 0, "total": 3})
    calibration = {k: sweep["calibration"][k] for k in ("source", "samples", "seq_len", "seed")}
    assert calibration == {"source": "pydoc", "samples": 8, "seq_len": 512, "seed": 0}  # defaults filled
    assert sweep["text"] == "pydoc" and sweep["pareto"] == [] and sweep["best_within"] is None
    assert [row["target"] for row in sweep["table"]] == ["0.5", "2:4", 0.7]
    assert all(row["status"] == "queued" and row["sparsity"] is None for row in sweep["table"])
    assert svc.queued_messages() == 3
    listed = svc.client.get("/v1/jobs", headers=svc.h()).json()["data"]
    assert sorted(j["id"] for j in listed) == sorted(sweep["jobs"])
    for job in listed:
        assert job["sweep_id"] == sweep["id"]
        assert job["spec"]["calibration"] == sweep["calibration"]  # every child the same, recorded
        assert job["spec"]["method"] == SPEC["method"]
    by_id = {j["id"]: j for j in listed}
    assert [by_id[j]["spec"]["sparsity"] for j in sweep["jobs"]] == ["0.5", "2:4", 0.7]
    assert svc.client.get(f"/v1/sweeps/{sweep['id']}", headers=svc.h()).json()["jobs"] == sweep["jobs"]
    # another team sees neither the sweep nor its jobs
    assert svc.client.get(f"/v1/sweeps/{sweep['id']}", headers=svc.h(svc.other)).status_code == 404
    assert svc.client.get("/v1/sweeps", headers=svc.h(svc.other)).json()["data"] == []


def test_pruners_multiply_the_grid(svc: Service) -> None:
    r = post(svc, {**BODY, "targets": [0.5, 0.6], "pruners": ["wanda", "magnitude"]})
    assert r.status_code == 201, r.text
    cells = [(row["target"], row["pruner"]) for row in r.json()["table"]]
    assert cells == [(0.5, "wanda"), (0.5, "magnitude"), (0.6, "wanda"), (0.6, "magnitude")]
    specs = {j["id"]: j["spec"] for j in svc.client.get("/v1/jobs", headers=svc.h()).json()["data"]}
    assert [specs[j]["method"]["pruner"] for j in r.json()["jobs"]] == [
        "wanda",
        "magnitude",
        "wanda",
        "magnitude",
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**BODY, "targets": [0.5, "3:2"]}, "targets[1]"),
        ({**BODY, "targets": [0.5, 1.5]}, "targets[1]"),
        ({**BODY, "targets": [0.5, True]}, "targets[1]"),
        ({**BODY, "targets": []}, "targets"),
        ({**BODY, "targets": [0.5, "0.5"]}, "targets[1]"),  # the same job twice
        ({**BODY, "pruners": ["wanda", "nope"]}, "pruners[1]"),
        ({**BODY, "presets": ["nope"]}, "presets[0]"),
        ({**BODY, "spec": {**SPEC, "calibration": {"samples": 0}}}, "spec.calibration.samples"),
        ({**BODY, "spec": {**SPEC, "colour": "red"}}, "spec.colour"),
        ({**BODY, "spec": {k: v for k, v in SPEC.items() if k != "model"}}, "spec.model"),
        ({**BODY, "spec": {**SPEC, "model": "s3://bucket/m"}}, "spec.model"),
        ({**BODY, "targets": [i / 100 for i in range(1, 33)], "pruners": ["wanda", "magnitude"]}, "targets"),
        ({**BODY, "extra": 1}, "extra"),
        ({**BODY, "spec": [1]}, "spec"),
        ({**BODY, "spec": {**SPEC, "method": "wanda"}, "pruners": ["wanda"]}, "spec.method"),
    ],
)
def test_invalid_sweeps_name_the_field_and_create_nothing(
    svc: Service, body: dict[str, Any], param: str
) -> None:
    r = post(svc, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert nothing_created(svc)


def test_a_sweep_over_the_queued_limit_is_refused_whole(tmp_path: Path) -> None:
    svc = Service(tmp_path, team_max_queued=4)
    assert svc.client.post("/v1/jobs", json=SPEC, headers=svc.h()).status_code == 201
    r = post(svc, {**BODY, "targets": [0.5, 0.6, 0.7, 0.8]})
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "queue_limit_exceeded" and "max_queued=4" in error["message"]
    assert r.headers["Retry-After"]
    assert svc.count(Sweep) == 0 and svc.count(Job) == 1  # only the job submitted before
    assert post(svc, BODY).status_code == 201  # 1 + 3 fits


def test_idempotency_key_replays_the_sweep(svc: Service) -> None:
    first = post(svc, BODY, **{"Idempotency-Key": "k1"})
    again = post(svc, BODY, **{"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert svc.count(Sweep) == 1 and svc.count(Job) == 3 and svc.queued_messages() == 3
    other = post(svc, {**BODY, "targets": [0.6]}, **{"Idempotency-Key": "k1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert post(svc, BODY, **{"Idempotency-Key": "k2"}).json()["id"] != first.json()["id"]


def test_status_table_pareto_and_best_within_follow_the_children(svc: Service) -> None:
    sweep = post(svc, BODY).json()
    a, b, c = sweep["jobs"]
    finish(svc, a, JobStatus.SUCCEEDED, sparsity=0.5, ppl=10.5)
    got = svc.client.get(f"/v1/sweeps/{sweep['id']}", headers=svc.h()).json()
    assert got["status"] == "running" and got["progress"] == {"done": 1, "total": 3}
    finish(svc, b, JobStatus.SUCCEEDED, sparsity=0.5, ppl=11.5)  # 2:4: same sparsity, worse
    finish(svc, c, JobStatus.SUCCEEDED, sparsity=0.7, ppl=14.0)
    got = svc.client.get(f"/v1/sweeps/{sweep['id']}?within=0.10", headers=svc.h()).json()
    assert got["status"] == "succeeded" and got["progress"] == {"done": 3, "total": 3}
    assert [row["sparsity"] for row in got["table"]] == [0.5, 0.5, 0.7]
    assert got["table"][0]["perplexity"] == {"dense": {"pydoc": 10.0}, "sparse": {"pydoc": 10.5}}
    assert (got["table"][2]["hf_bytes"], got["table"][2]["compact_bytes"]) == (1000, 600)
    assert [row["job"] for row in got["pareto"]] == [a, c]
    assert got["within"] == 0.1 and got["best_within"]["job"] == a
    assert (
        svc.client.get(f"/v1/sweeps/{sweep['id']}?within=0.5", headers=svc.h()).json()["best_within"]["job"]
        == c
    )
    bad = svc.client.get(f"/v1/sweeps/{sweep['id']}?within=-1", headers=svc.h())
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "within"
    assert svc.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=svc.h()).status_code == 409


def test_a_failed_child_fails_the_sweep_and_keeps_the_others_rows(svc: Service) -> None:
    sweep = post(svc, {**BODY, "targets": [0.5, 0.6]}).json()
    finish(svc, sweep["jobs"][0], JobStatus.SUCCEEDED)
    finish(svc, sweep["jobs"][1], JobStatus.FAILED)
    got = svc.client.get(f"/v1/sweeps/{sweep['id']}", headers=svc.h()).json()
    assert got["status"] == "failed"
    assert [r["status"] for r in got["table"]] == ["succeeded", "failed"]
    assert [r["job"] for r in got["pareto"]] == [sweep["jobs"][0]]


def test_cancel_cancels_the_children_that_have_not_ended(svc: Service) -> None:
    sweep = post(svc, BODY).json()
    finish(svc, sweep["jobs"][0], JobStatus.SUCCEEDED)
    with session_scope(svc.url) as s:
        running = s.get(Job, sweep["jobs"][1])
        assert running is not None
        set_status(s, running, JobStatus.RUNNING, "started")
    r = svc.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=svc.h())
    assert r.status_code == 200, r.text
    assert r.json()["cancel_requested"] and r.json()["status"] == "running"  # one still runs
    with session_scope(svc.url) as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.sweep_id == sweep["id"]))}
        assert jobs[sweep["jobs"][0]].status == "succeeded"
        assert jobs[sweep["jobs"][1]].cancel_requested and jobs[sweep["jobs"][1]].status == "running"
        assert jobs[sweep["jobs"][2]].status == "cancelled"
        set_status(s, jobs[sweep["jobs"][1]], JobStatus.CANCELLED, "stopped")
    again = svc.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=svc.h())
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert svc.client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=svc.h(svc.other)).status_code == 404


def test_a_deleted_child_ends_its_row(svc: Service) -> None:
    sweep = post(svc, {**BODY, "targets": [0.5, 0.6]}).json()
    finish(svc, sweep["jobs"][0], JobStatus.SUCCEEDED)
    assert svc.client.delete(f"/v1/jobs/{sweep['jobs'][1]}", headers=svc.h()).status_code == 204
    got = svc.client.get(f"/v1/sweeps/{sweep['id']}", headers=svc.h()).json()
    assert [r["status"] for r in got["table"]] == ["succeeded", "deleted"]
    assert got["status"] == "cancelled" and got["progress"] == {"done": 2, "total": 2}


def test_delete_removes_the_sweep_and_every_child(svc: Service) -> None:
    sweep = post(svc, BODY).json()
    done, running, queued = sweep["jobs"]
    finish(svc, done, JobStatus.SUCCEEDED)
    store = svc.client.app.state.ctx.storage  # type: ignore[attr-defined]
    store.put_stream(f"jobs/{done}/hf/config.json", io.BytesIO(b"{}"))
    with session_scope(svc.url) as s:
        s.add(Artifact(job_id=done, name="hf/config.json", size=2, sha256="ab" * 32,
                       storage_key=f"jobs/{done}/hf/config.json"))  # fmt: skip
        job = s.get(Job, running)
        assert job is not None
        set_status(s, job, JobStatus.RUNNING, "started")
    url = f"/v1/sweeps/{sweep['id']}"
    assert svc.client.delete(url, headers=svc.h(svc.other)).status_code == 404  # another team's
    assert svc.client.get(url, headers=svc.h()).status_code == 200

    r = svc.client.delete(url, headers=svc.h())
    assert r.status_code == 204 and r.content == b""
    assert svc.client.get(url, headers=svc.h()).status_code == 404
    assert svc.client.get("/v1/sweeps", headers=svc.h()).json()["data"] == []
    assert svc.client.get("/v1/jobs", headers=svc.h()).json()["data"] == []
    for job_id in sweep["jobs"]:
        assert svc.client.get(f"/v1/jobs/{job_id}", headers=svc.h()).status_code == 404
    assert store.list(f"jobs/{done}/") == []
    with session_scope(svc.url) as s:
        assert s.get(Job, done) is None and s.get(Job, queued) is None and s.get(Sweep, sweep["id"]) is None
        stopping = s.get(Job, running)  # kept, hidden, until its worker stops
        assert stopping is not None and stopping.deleted_at is not None and stopping.cancel_requested
        set_status(s, stopping, JobStatus.CANCELLED, "stopped")
    assert retention.purge(svc.url, store) == [running]
    assert svc.count(Job) == 0
    # As for a job: a second DELETE finds nothing.
    assert svc.client.delete(url, headers=svc.h()).status_code == 404


def test_deleting_a_sweep_frees_its_idempotency_key(svc: Service) -> None:
    first = post(svc, BODY, **{"Idempotency-Key": "k1"}).json()
    assert svc.client.delete(f"/v1/sweeps/{first['id']}", headers=svc.h()).status_code == 204
    again = post(svc, BODY, **{"Idempotency-Key": "k1"})
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.json()["id"] != first["id"] and svc.count(Sweep) == 1 and svc.count(Job) == 3


def test_a_child_that_keeps_changing_is_a_409_and_a_retry_finishes(
    svc: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = post(svc, BODY).json()
    real, calls = retention.delete_job, []

    def flaky(session: Any, storage: Any, job: Job, by: str) -> bool:
        calls.append(job.id)
        if len(calls) == 2:  # the second child moves under every attempt
            raise StaleStatus(f"job {job.id} kept changing while being deleted")
        return real(session, storage, job, by)

    monkeypatch.setattr(retention, "delete_job", flaky)
    url = f"/v1/sweeps/{sweep['id']}"
    r = svc.client.delete(url, headers=svc.h())
    assert r.status_code == 409 and r.json()["error"]["code"] == "sweep_busy"
    left = svc.client.get(url, headers=svc.h()).json()  # the children not deleted are still listed
    assert sorted(r["status"] for r in left["table"]) == ["deleted", "queued", "queued"]
    assert svc.client.delete(url, headers=svc.h()).status_code == 204
    assert svc.count(Sweep) == 0 and svc.count(Job) == 0


def test_list_pages_newest_first(svc: Service) -> None:
    ids = [post(svc, {**BODY, "targets": [0.5 + i / 10]}).json()["id"] for i in range(3)]
    page = svc.client.get("/v1/sweeps?limit=2", headers=svc.h()).json()
    assert page["object"] == "list" and page["has_more"]
    assert [s["id"] for s in page["data"]] == ids[::-1][:2]
    rest = svc.client.get(f"/v1/sweeps?limit=2&after={ids[1]}", headers=svc.h()).json()
    assert [s["id"] for s in rest["data"]] == [ids[0]] and not rest["has_more"]
    bad = svc.client.get("/v1/sweeps?after=sw_nope", headers=svc.h())
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "after"


def test_messages_read_as_post_v1_jobs_answers_them(svc: Service) -> None:
    missing = post(svc, {**BODY, "spec": {k: v for k, v in SPEC.items() if k != "model"}}).json()["error"]
    assert missing["message"] == "spec.model: is required"
    unknown = post(svc, {**BODY, "spec": {**SPEC, "colour": "red"}}).json()["error"]
    assert unknown["message"] == "spec.colour: unknown field"
    target = post(svc, {**BODY, "targets": [0.5, 1.5]}).json()["error"]
    alone = svc.client.post("/v1/jobs", json={**SPEC, "sparsity": 1.5}, headers=svc.h()).json()["error"]
    assert target["message"] == alone["message"].replace("sparsity", "targets[1]", 1)
    assert target["code"] == alone["code"]


def test_presets_multiply_the_grid_and_reach_each_job(svc: Service) -> None:
    r = post(
        svc,
        {**BODY, "targets": [0.5], "pruners": ["wanda", "sparsegpt"], "presets": ["default", "reference"]},
    )
    assert r.status_code == 201, r.text
    cells = [(row["pruner"], row["preset"]) for row in r.json()["table"]]
    assert cells == [
        ("wanda", "default"),
        ("wanda", "reference"),
        ("sparsegpt", "default"),
        ("sparsegpt", "reference"),
    ]
    specs = {j["id"]: j["spec"] for j in svc.client.get("/v1/jobs", headers=svc.h()).json()["data"]}
    assert [specs[j]["method"]["preset"] for j in r.json()["jobs"]] == ["default", "reference"] * 2
