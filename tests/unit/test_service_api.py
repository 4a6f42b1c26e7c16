"""The HTTP API in-process (SQLite, filesystem broker, local storage under tmp_path): auth, team
isolation, validation errors naming the field, pagination, cancel, datasets, readiness."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from spruce.api.app import create_app
from spruce.common.db import session_scope
from spruce.common.jobs import set_status
from spruce.common.keys import create_key, revoke
from spruce.common.models import Artifact, Job
from spruce.common.settings import Settings
from spruce.common.states import JobStatus
from tests.unit.service import Service, with_field

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda", "allocation": "uniform", "induction": False},
    "calibration": {"source": "pydoc", "samples": 32, "seq_len": 512, "seed": 0},
    "evaluation": {"sources": ["pydoc"]},
}


class Svc(Service):
    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, max_samples=256)

    def submit(self, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
        return self.client.post("/v1/jobs", json=body or BODY, headers=self.h(key))


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Svc]:
    yield Svc(tmp_path)


def test_submit_records_and_enqueues(svc: Svc) -> None:
    r = svc.submit()
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["object"] == "job" and job["id"].startswith("job_")
    assert (job["status"], job["progress"], job["results"], job["error"]) == ("queued", 0.0, None, None)
    assert job["spec"] == BODY and job["team"] == "acme" and job["submitted_by"] == "ci"
    assert job["attempts"] == 0 and job["created_at"].endswith("Z")
    assert svc.queued_messages() == 1  # a real message in the filesystem broker
    assert svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.h()).json()["id"] == job["id"]
    events = svc.client.get(f"/v1/jobs/{job['id']}/events", headers=svc.h()).json()
    assert events["object"] == "list" and [e["type"] for e in events["data"]] == ["status"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/jobs", {}),
        ("/v1/me", {"Authorization": "Bearer spk_wrongwrongwrongwrong"}),
        ("/v1/datasets", {"Authorization": "Basic abc"}),
        ("/v1/jobs", {"Authorization": "Bearer "}),
    ],
)
def test_missing_or_bad_key_is_401(svc: Svc, path: str, headers: dict[str, str]) -> None:
    r = svc.client.get(path, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(svc: Svc) -> None:
    with session_scope(svc.url) as s:
        new = create_key(s, "acme", "temp")
    assert svc.client.get("/v1/me", headers=svc.h(new.secret)).status_code == 200
    with session_scope(svc.url) as s:
        revoke(s, new.row.id)
    assert svc.client.get("/v1/me", headers=svc.h(new.secret)).status_code == 401


def test_me(svc: Svc) -> None:
    me = svc.client.get("/v1/me", headers=svc.h()).json()
    assert (me["team"], me["key_name"]) == ("acme", "ci") and svc.key.startswith(me["key_prefix"])


def test_other_team_gets_404_everywhere(svc: Svc) -> None:
    job_id = svc.submit().json()["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/report.json"),
        ("GET", "/v1/jobs/job_doesnotexist"),
    ]:
        r = svc.client.request(method, path, headers=svc.h(svc.other))
        assert r.status_code == 404, (method, path)
        assert r.json()["error"]["code"] == "job_not_found"
    assert svc.client.get("/v1/jobs", headers=svc.h(svc.other)).json()["data"] == []
    assert svc.client.get(f"/v1/jobs/{job_id}", headers=svc.h()).json()["status"] == "queued"  # untouched


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (with_field(BODY, "method.pruner", "random"), "method.pruner"),
        (with_field(BODY, "method.bogus", 1), "method.bogus"),
        (with_field(BODY, "experimental.induction.epochs", "two"), "experimental.induction.epochs"),
        (with_field(BODY, "experimental.induction.epochs", -2), "experimental.induction.epochs"),
        (with_field(BODY, "method.swap_rounds", 0), "method.swap_rounds"),  # moved under experimental
        (with_field(BODY, "sparsity", "3:2"), "sparsity"),
        (with_field(BODY, "sparsity", 1.5), "sparsity"),
        (with_field(BODY, "sparsity", True), "sparsity"),
        (with_field(BODY, "calibration.samples", "32"), "calibration.samples"),
        (with_field(BODY, "calibration.samples", 257), "calibration.samples"),  # above the service limit
        (with_field(BODY, "calibration.source", "/etc/passwd"), "calibration.source"),
        (with_field(BODY, "calibration.source", "ds_000000000000000000000000"), "calibration.source"),
        (
            with_field(BODY, "evaluation.sources", ["pydoc", "ds_000000000000000000000000"]),
            "evaluation.sources[1]",
        ),
        (with_field(BODY, "model", "/etc"), "model"),
        (with_field(BODY, "model", "../../etc/passwd"), "model"),
        (with_field(BODY, "model", "not a model!"), "model"),
        (with_field(BODY, "extra", 1), "extra"),
        (with_field(BODY, "experimental.compute_dtype", "float8"), "experimental.compute_dtype"),
        (with_field(BODY, "calibration.seed", 2**70), "calibration.seed"),  # beyond numpy's 32-bit seeds
        ({k: v for k, v in BODY.items() if k != "model"}, "model"),
        (with_field(BODY, "method.allocation", "owl"), "method.allocation"),  # OWL with N:M: engine semantics
    ],
)
def test_bad_bodies_are_422_naming_the_field(svc: Svc, body: dict[str, Any], param: str) -> None:
    r = svc.submit(body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["code"] in ("invalid_request", "invalid_spec")
    assert svc.queued_messages() == 0


def test_invalid_json_is_422(svc: Svc) -> None:
    r = svc.client.post("/v1/jobs", content=b"{", headers={**svc.h(), "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_json"


def test_local_models_only_under_roots(svc: Svc, tmp_path: Path) -> None:
    inside = svc.settings.data_dir.resolve() / "models" / "tiny"
    assert svc.submit(with_field(BODY, "model", str(inside))).status_code == 201
    assert svc.submit(with_field(BODY, "model", "HuggingFaceTB/SmolLM2-135M")).status_code == 201
    assert svc.submit(with_field(BODY, "model", str(inside / ".." / ".." / ".."))).status_code == 422
    # An s3:// model is accepted where S3 is configured, refused (naming the field) where it is not.
    r = svc.submit(with_field(BODY, "model", "s3://bucket/models/tiny"))
    assert r.status_code == 422 and r.json()["error"]["param"] == "model"
    with_s3 = Service(tmp_path / "s3", max_samples=256, model_s3_roots=["s3://bucket/models"])
    r = with_s3.client.post(
        "/v1/jobs", json=with_field(BODY, "model", "s3://bucket/models/tiny"), headers=with_s3.h()
    )
    assert r.status_code == 201, r.text


def test_list_pagination_and_filter(svc: Svc) -> None:
    ids = [svc.submit().json()["id"] for _ in range(5)]
    seen: list[str] = []
    after = None
    while True:
        q = "/v1/jobs?limit=2" + (f"&after={after}" if after else "")
        page = svc.client.get(q, headers=svc.h()).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == ids[::-1]  # newest first, each once
    svc.client.post(f"/v1/jobs/{ids[0]}/cancel", headers=svc.h())
    cancelled = svc.client.get("/v1/jobs?status=cancelled", headers=svc.h()).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    r = svc.client.get("/v1/jobs?status=paused", headers=svc.h())
    assert r.status_code == 422 and r.json()["error"]["param"] == "status"
    r = svc.client.get("/v1/jobs?limit=0", headers=svc.h())
    assert r.status_code == 422 and r.json()["error"]["param"] == "limit"


def test_cancel_queued_is_immediate_and_running_is_cooperative(svc: Svc) -> None:
    queued = svc.submit().json()["id"]
    r = svc.client.post(f"/v1/jobs/{queued}/cancel", headers=svc.h())
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert svc.client.post(f"/v1/jobs/{queued}/cancel", headers=svc.h()).json()["status"] == "cancelled"

    running = svc.submit().json()["id"]
    with session_scope(svc.url) as s:
        job = s.get(Job, running)
        assert job is not None
        set_status(s, job, JobStatus.RUNNING)
    r = svc.client.post(f"/v1/jobs/{running}/cancel", headers=svc.h())
    assert r.status_code == 200 and (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)
    types = [e["type"] for e in svc.client.get(f"/v1/jobs/{running}/events", headers=svc.h()).json()["data"]]
    assert types == ["status", "status", "cancel"]

    with session_scope(svc.url) as s:
        job = s.get(Job, running)
        assert job is not None
        set_status(s, job, JobStatus.SUCCEEDED)
    r = svc.client.post(f"/v1/jobs/{running}/cancel", headers=svc.h())
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_cancellable"


def test_events_cursor(svc: Svc) -> None:
    job_id = svc.submit().json()["id"]
    svc.client.post(f"/v1/jobs/{job_id}/cancel", headers=svc.h())
    all_events = svc.client.get(f"/v1/jobs/{job_id}/events", headers=svc.h()).json()["data"]
    assert len(all_events) == 2
    later = svc.client.get(f"/v1/jobs/{job_id}/events?after={all_events[0]['id']}", headers=svc.h()).json()
    assert [e["id"] for e in later["data"]] == [all_events[1]["id"]]
    assert set(all_events[0]) >= {"id", "created_at", "type", "stage", "message", "data"}


def test_artifacts_list_and_download(svc: Svc) -> None:
    job_id = svc.submit().json()["id"]
    store = svc.client.app.state.ctx.storage  # type: ignore[attr-defined]
    store.put_stream(f"jobs/{job_id}/hf/config.json", io.BytesIO(b'{"x": 1}'))
    with session_scope(svc.url) as s:
        s.add(
            Artifact(
                job_id=job_id,
                name="hf/config.json",
                size=8,
                sha256="ab" * 32,
                storage_key=f"jobs/{job_id}/hf/config.json",
            )
        )
    listing = svc.client.get(f"/v1/jobs/{job_id}/artifacts", headers=svc.h()).json()
    assert [(a["name"], a["size"]) for a in listing["data"]] == [("hf/config.json", 8)]
    r = svc.client.get(listing["data"][0]["url"], headers=svc.h())
    assert r.status_code == 200 and r.content == b'{"x": 1}'
    assert svc.client.get(f"/v1/jobs/{job_id}/artifacts/hf/nope.json", headers=svc.h()).status_code == 404


def test_datasets(svc: Svc) -> None:
    content = b'{"text": "one"}\n\n{"text": "two"}\n'
    files = {"file": ("calib.jsonl", content)}
    r = svc.client.post("/v1/datasets", files=files, data={"name": "my text"}, headers=svc.h())
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["id"].startswith("ds_") and (ds["name"], ds["format"], ds["records"], ds["size"]) == (
        "my text",
        "jsonl",
        2,
        len(content),
    )
    assert [d["id"] for d in svc.client.get("/v1/datasets", headers=svc.h()).json()["data"]] == [ds["id"]]
    assert svc.client.get("/v1/datasets", headers=svc.h(svc.other)).json()["data"] == []
    # usable by its team, unknown to another
    assert svc.submit(with_field(BODY, "calibration.source", ds["id"])).status_code == 201
    r = svc.submit(with_field(BODY, "evaluation.sources", [ds["id"]]), key=svc.other)
    assert r.status_code == 422 and r.json()["error"]["param"] == "evaluation.sources[0]"

    for name, content in [
        ("x.csv", b"a,b"),
        ("x.jsonl", b"not json\n"),
        ("x.jsonl", b"[1]\n"),
        ("x.txt", b"\xff\xfe\x00"),
        ("x.txt", b"\n\n"),
    ]:
        r = svc.client.post("/v1/datasets", files={"file": (name, content)}, headers=svc.h())
        assert r.status_code == 422 and r.json()["error"]["param"] == "file", (name, r.text)


def test_health_and_readiness(svc: Svc, tmp_path: Path) -> None:
    assert svc.client.get("/healthz").json() == {"status": "ok"}
    ready = svc.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
    }
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the artifact folder should be")
    bad = TestClient(
        create_app(
            Settings(data_dir=tmp_path, artifacts_dir=blocked / "sub", broker_url="redis://127.0.0.1:1/0")
        )
    )
    r = bad.get("/readyz")
    body = r.json()
    assert r.status_code == 503 and body["error"]["code"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] == body["checks"]["storage"] == "failing"
    assert "broker" in body["error"]["message"] and "storage" in body["error"]["message"]
    assert str(tmp_path) not in r.text and "Error" not in r.text  # words only: no path, no exception


def test_broker_down_keeps_a_failed_row(svc: Svc, tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", broker_timeout=0.5)
    client = TestClient(create_app(s))
    r = client.post("/v1/jobs", json=BODY, headers=svc.h())
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "broker_unavailable" and "queue is unreachable" in err["message"]
    job = client.get(f"/v1/jobs/{r.json()['job']}", headers=svc.h()).json()
    assert job["status"] == "failed" and job["error"]["code"] == "broker_unavailable"


def test_openapi_and_dashboard(svc: Svc) -> None:
    schema = svc.client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/datasets", "/v1/me", "/readyz"} <= set(
        schema["paths"]
    )
    job_create = schema["components"]["schemas"]["JobCreate"]
    assert job_create["additionalProperties"] is False and set(job_create["required"]) == {
        "model",
        "sparsity",
    }
    assert svc.client.get("/docs").status_code == 200
    assert svc.client.get("/").status_code == 200  # api/dashboard.py is included


def test_unknown_route_uses_error_shape(svc: Svc) -> None:
    r = svc.client.get("/v1/nothing", headers=svc.h())
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
