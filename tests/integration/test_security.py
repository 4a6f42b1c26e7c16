"""Security against the real parts: presigned S3 links that carry their expiry (moto), signed API
links that stream from S3, one rate budget per key shared through Redis by several API processes,
revocation with the CLI seen at once by the running API, every route team-checked on Postgres,
no key in the API's or the worker's logs, no working signed link in a JSON access log, and hub
ids that never read the worker's directory."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from tests.integration.conftest import API_CMD, ROOT, TINY_SPEC, Stack, free_port, stop, wait_until

pytestmark = pytest.mark.integration

REPORT = b'{"perplexity": {"dense": {"pydoc": 9.5}}}'


def _job_with_report(stack: Stack) -> str:
    """A finished job of team acme with report.json in the bucket (written directly: no worker)."""
    from spruce.common.db import session_scope
    from spruce.common.models import Artifact, Job, Team
    from spruce.common.storage import build_storage

    settings = stack.settings()
    with session_scope(stack.database_url) as s:
        team = s.query(Team).filter_by(name="acme").one()
        job = Job(team_id=team.id, submitted_by="ci", spec={"model": "x"}, status="succeeded", progress=1.0)
        s.add(job)
        s.flush()
        key = f"jobs/{job.id}/report.json"
        build_storage(settings).put_stream(key, io.BytesIO(REPORT))
        s.add(
            Artifact(
                job_id=job.id,
                name="report.json",
                size=len(REPORT),
                sha256=hashlib.sha256(REPORT).hexdigest(),
                storage_key=key,
            )
        )
        return job.id


def _app(stack: Stack, key: str = "acme", **overrides: Any) -> TestClient:
    from spruce.api.app import create_app

    return TestClient(
        create_app(stack.settings(**overrides)), headers={"Authorization": f"Bearer {stack.keys[key]}"}
    )


def test_presigned_links_work_and_carry_their_expiry(stack: Stack) -> None:
    job_id = _job_with_report(stack)
    client = _app(stack, s3_presign_expiry=120)
    link = client.get(f"/v1/jobs/{job_id}/artifacts/report.json?redirect=false")
    assert link.status_code == 200, link.text
    body = link.json()
    url = urlsplit(body["url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert body["url"].startswith(stack.s3["endpoint"]) and body["expires_in"] == 120
    assert query["X-Amz-Expires"] == "120" and query["X-Amz-Signature"]
    # expires_at is what S3 will enforce: the signing time plus X-Amz-Expires.
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).replace(tzinfo=None)
    assert abs(expires_at - (signed_at + timedelta(seconds=120))) <= timedelta(seconds=2)

    got = httpx.get(body["url"])  # no API key: the URL carries its own short-lived credentials
    assert got.status_code == 200 and got.content == REPORT
    assert f"{job_id}-report.json" in got.headers.get("content-disposition", "")
    # (moto does not enforce X-Amz-Expires; AWS S3 and MinIO refuse the URL once it has passed.)

    # The plain download still answers 307 to a presigned URL with the default expiry.
    r = _app(stack).get(f"/v1/jobs/{job_id}/artifacts/report.json", follow_redirects=False)
    assert r.status_code == 307 and "X-Amz-Expires=3600" in r.headers["location"]


def test_signed_api_links_stream_from_s3_when_presigning_is_off(stack: Stack) -> None:
    job_id = _job_with_report(stack)
    client = _app(stack, s3_presign=False, download_link_expiry=60)
    body = client.get(f"/v1/jobs/{job_id}/artifacts/report.json?redirect=false").json()
    assert body["expires_in"] == 60 and urlsplit(body["url"]).path == f"/v1/downloads/{job_id}/report.json"
    got = TestClient(client.app).get(body["url"])  # a fresh client: no Authorization header at all
    assert got.status_code == 200 and got.content == REPORT
    assert got.headers["x-checksum-sha256"] == hashlib.sha256(REPORT).hexdigest()
    rival = _app(stack, "rival", s3_presign=False)
    assert rival.get(f"/v1/jobs/{job_id}/artifacts/report.json?redirect=false").status_code == 404


def test_rate_budget_is_shared_through_redis_by_api_processes(stack: Stack) -> None:
    from spruce.common.db import session_scope
    from spruce.common.keys import create_key

    with session_scope(stack.database_url) as s:
        secret = create_key(s, "acme", f"rl-{secrets.token_hex(3)}").secret
    # Two apps, two ServiceContexts: what two uvicorn processes behind a balancer would be.
    apps = [
        TestClient(
            _app(stack, rate_limit_per_minute=60, rate_limit_burst=4).app,
            headers={"Authorization": f"Bearer {secret}"},
        )
        for _ in range(2)
    ]
    codes = [apps[i % 2].get("/v1/me").status_code for i in range(4)]
    assert codes == [200] * 4
    r = apps[0].get("/v1/me")  # process A has seen two requests, but the key has sent four
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert apps[1].get("/v1/me").status_code == 429
    assert (
        apps[0].get("/v1/me", headers={"Authorization": f"Bearer {stack.keys['rival']}"}).status_code == 200
    )


def test_cli_revocation_is_seen_by_the_running_api_at_once(stack: Stack) -> None:
    from spruce.common.db import session_scope
    from spruce.common.keys import create_key

    with session_scope(stack.database_url) as s:
        new = create_key(s, "acme", f"leaked-{secrets.token_hex(3)}")
    job_id = _job_with_report(stack)
    headers = {"Authorization": f"Bearer {new.secret}"}
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        assert api.get("/v1/me", headers=headers).status_code == 200
        env = {**stack.env, "SPRUCE_STORAGE": "local"}  # the CLI needs only the database
        done = subprocess.run(
            [sys.executable, "-m", "spruce.cli.main", "keys", "revoke", new.row.prefix],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and new.row.id in done.stdout, done.stderr
        r = api.get("/v1/me", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert (
            api.get(
                f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {stack.keys['acme']}"}
            ).status_code
            == 200
        )


def test_every_route_is_team_checked_on_postgres(stack: Stack, models: dict[str, Path]) -> None:
    job_id = _job_with_report(stack)
    with stack.client() as mine, stack.client("rival") as theirs:
        ds = mine.post("/v1/datasets", files={"file": ("calib.txt", b"text of acme\n")}).json()["id"]
        sweep = mine.post(
            "/v1/sweeps", json={"spec": {**TINY_SPEC, "model": str(models["tiny"])}, "targets": [0.5]}
        )
        assert sweep.status_code == 201, sweep.text
        values = {"job_id": job_id, "dataset_id": ds, "name": "report.json", "relative": "index.html",
                  "sweep_id": sweep.json()["id"]}  # fmt: skip
        routes = list(iter_route_contexts(_app(stack).app.routes))  # type: ignore[attr-defined]
        assert len(routes) >= 15
        for route in routes:
            params = set(getattr(route, "param_convertors", {}))
            assert params <= set(values), f"{route.path}: name {params - set(values)} in this test"
            assert route.path_format is not None
            path = route.path_format.format(**{p: values[p] for p in params})
            for method in sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
                r = theirs.request(method, path)
                if isinstance(route.original_route, APIRoute) and params & {
                    "job_id",
                    "dataset_id",
                    "name",
                    "sweep_id",
                }:
                    assert r.status_code in (403, 404), (method, path, r.status_code)
                else:
                    assert r.status_code < 500 and job_id not in r.text and ds not in r.text, (method, path)
        theirs_sweeps = theirs.get("/v1/sweeps").json()["data"]
        assert values["sweep_id"] not in {s["id"] for s in theirs_sweeps}
        assert mine.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_nul_character_in_an_id_or_cursor_is_a_client_error_on_postgres(stack: Stack) -> None:
    """Postgres text cannot hold a NUL, and comparing a column with one raises in the driver: every
    route that looks something up by a string from the URL must answer 4xx, not 500 (the API fuzz
    test once found ``GET /v1/jobs?after=%00``)."""
    nul = "%00"
    with stack.client() as mine:
        r = mine.get(f"/v1/jobs?after={nul}")
        assert r.status_code == 422 and r.json()["error"]["param"] == "after", r.text
        routes = list(iter_route_contexts(_app(stack).app.routes))  # type: ignore[attr-defined]
        for route in routes:
            params = set(getattr(route, "param_convertors", {}))
            if not params or route.path_format is None:
                continue
            path = route.path_format.format(**{p: f"x{nul}" for p in params})
            for method in sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
                r = mine.request(method, path)
                assert 400 <= r.status_code < 500, (method, path, r.status_code)
        body = {**TINY_SPEC, "calibration": {**TINY_SPEC["calibration"], "source": "ds_" + chr(0)}}
        r = mine.post("/v1/jobs", json=body)
        assert r.status_code == 422, r.text


def test_no_key_in_the_logs(stack: Stack, models: dict[str, Path]) -> None:
    with stack.client() as mine:
        job = mine.post("/v1/jobs", json={**TINY_SPEC, "model": str(models["tiny"])}).json()
        wrong = stack.keys["acme"][:-3] + "zzz"
        assert (
            httpx.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        )
        assert (
            httpx.get(f"{stack.url}/v1/me", headers={"Authorization": stack.keys["rival"]}).status_code == 401
        )
        from tests.integration.test_service_jobs import TERMINAL, poll

        poll(mine, job["id"], lambda j: j["status"] in TERMINAL)
    assert stack.worker_log is not None
    logs = stack.worker_log.read_text() + (stack.worker_log.parent / "api.log").read_text()
    assert job["id"] in logs  # the logs are the right ones and saw this traffic
    for secret in (stack.keys["acme"], stack.keys["rival"], wrong):
        assert secret not in logs


def test_a_signed_link_is_logged_without_its_signature(stack: Stack, tmp_path: Path) -> None:
    """A uvicorn API process (JSON logs, signed API links instead of presigned S3 URLs): the link
    works, and the API's log has the request, its request id, and no signature."""
    job_id = _job_with_report(stack)
    env = {**stack.env, "SPRUCE_S3_PRESIGN": "0", "SPRUCE_LOG_FORMAT": "json"}
    port, log_path = free_port(), tmp_path / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [sys.executable, *API_CMD, "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert api.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 180, "the API")  # a busy 2-core CI machine takes its time to import it all
        headers = {"Authorization": f"Bearer {stack.keys['acme']}"}
        link = httpx.get(f"{url}/v1/jobs/{job_id}/artifacts/report.json?redirect=false", headers=headers)
        signed = link.json()["url"]
        got = httpx.get(signed)  # no key: the link alone downloads
        assert got.status_code == 200 and got.content == REPORT
        signature = parse_qs(urlsplit(signed).query)["signature"][0]
    finally:
        stop(api)
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    access = [
        x for x in lines if x["logger"] == "spruce.api.access" and x["path"].startswith("/v1/downloads/")
    ]
    assert len(access) == 1 and access[0]["status"] == 200
    assert access[0]["request_id"] == got.headers["x-request-id"]
    assert "signature=[redacted]" in access[0]["path"]
    text = log_path.read_text()
    assert signature not in text and stack.keys["acme"] not in text


def test_a_hub_id_never_reads_the_workers_directory(stack: Stack) -> None:
    """``docs/service.md`` is a file in the worker's working directory and ``docs/nosuch.md`` is
    nothing: as hub ids both fail alike (the worker looks in the hub cache only), so a job
    cannot tell which files the worker has."""
    from tests.integration.test_service_jobs import TERMINAL, poll

    outcomes = {}
    with stack.client() as mine:
        for ref in ("docs/service.md", "docs/nosuch.md"):
            assert (ROOT / ref).exists() == (ref == "docs/service.md")
            body = {"model": ref, "sparsity": 0.5, "calibration": {"samples": 4, "seq_len": 32}}
            r = mine.post("/v1/jobs", json=body)
            assert r.status_code == 201, r.text
            job = r.json()
            done, _ = poll(mine, job["id"], lambda j: j["status"] in TERMINAL, timeout=300)
            assert done["status"] == "failed" and done["attempts"] == 1, done  # a user error: no retry
            outcomes[ref] = (done["error"]["code"], done["error"]["message"].replace(ref, "REF"))
    assert outcomes["docs/service.md"] == outcomes["docs/nosuch.md"], outcomes
    assert outcomes["docs/nosuch.md"][0] == "model_not_found"
    assert stack.worker_log is not None and f"job_id={job['id']}" in stack.worker_log.read_text()
