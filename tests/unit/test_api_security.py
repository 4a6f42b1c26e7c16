"""Keys, team isolation on every route, rate limits, CORS, secrets in logs, signed download links.

In-process (SQLite, filesystem broker, local storage under tmp_path); the same properties
against Postgres, Redis and an S3 server are in tests/integration/test_security.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from spruce.api.limits import MemoryLimiter, Rate
from spruce.api.links import signature, signing_key
from spruce.common.db import session_scope
from spruce.common.keys import create_key, hash_secret
from spruce.common.models import ApiKey, Artifact, Job
from spruce.common.settings import Settings, get_settings
from tests.unit.service import Service

pytestmark = pytest.mark.unit

BODY: dict[str, Any] = {
    "model": "smollm2-135m",
    "sparsity": "2:4",
    "method": {"pruner": "wanda"},
    "calibration": {"source": "pydoc", "samples": 8, "seq_len": 64, "seed": 0},
}
REPORT = b'{"perplexity": {"dense": {"pydoc": 12.5}}}'


class Svc(Service):
    def job_with_report(self) -> str:
        """A job of team acme with a report.json artifact in local storage."""
        r = self.client.post("/v1/jobs", json=BODY, headers=self.h())
        assert r.status_code == 201, r.text
        job_id: str = r.json()["id"]
        key = f"jobs/{job_id}/report.json"
        path = self.settings.resolved_artifacts_dir / key
        path.parent.mkdir(parents=True)
        path.write_bytes(REPORT)
        with session_scope(self.url) as s:
            s.add(
                Artifact(
                    job_id=job_id,
                    name="report.json",
                    size=len(REPORT),
                    sha256=hashlib.sha256(REPORT).hexdigest(),
                    storage_key=key,
                )
            )
        return job_id


@pytest.fixture()
def svc(tmp_path: Path) -> Iterator[Svc]:
    yield Svc(tmp_path)


# --- keys ---------------------------------------------------------------------------------------


def test_keys_are_stored_as_hashes_only(svc: Svc) -> None:
    with session_scope(svc.url) as s:
        rows = s.scalars(select(ApiKey)).all()
        stored = {r.key_hash for r in rows}
        for row in rows:
            assert svc.key not in (row.key_hash, row.prefix, row.name, row.id)
    assert hash_secret(svc.key) in stored and hash_secret(svc.other) in stored


def test_the_hash_is_compared_in_constant_time(svc: Svc, monkeypatch: pytest.MonkeyPatch) -> None:
    import spruce.common.keys as keys_module

    calls: list[tuple[str, str]] = []
    real = keys_module.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    assert svc.client.get("/v1/me", headers=svc.h()).status_code == 200
    assert (hash_secret(svc.key), hash_secret(svc.key)) in calls
    # A key with a known prefix and a wrong tail is refused through the same comparison.
    calls.clear()
    forged = svc.key[:12] + "x" * (len(svc.key) - 12)
    assert svc.client.get("/v1/me", headers=svc.h(forged)).status_code == 401
    assert calls == [(hash_secret(svc.key), hash_secret(forged))]


@pytest.mark.parametrize("form", ["id", "prefix", "listed prefix", "secret"])
def test_cli_revoke_takes_effect_on_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    from spruce.cli.main import main

    monkeypatch.setenv("SPRUCE_DATA_DIR", str(tmp_path))  # restored after the test (the CLI sets it)
    get_settings.cache_clear()
    svc = Svc(tmp_path)
    with session_scope(svc.url) as s:
        new = create_key(s, "acme", "laptop")
        ref = {
            "id": new.row.id,
            "prefix": new.row.prefix,
            "listed prefix": new.row.prefix + "...",
            "secret": new.secret,
        }[form]
    try:
        assert svc.client.get("/v1/me", headers=svc.h(new.secret)).status_code == 200
        assert main(["keys", "revoke", ref, "--data-dir", str(tmp_path)]) == 0
        assert new.row.id in capsys.readouterr().out
        r = svc.client.get("/v1/me", headers=svc.h(new.secret))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert svc.client.get("/v1/me", headers=svc.h()).status_code == 200  # the others still work
        assert main(["keys", "revoke", ref, "--data-dir", str(tmp_path)]) == 1  # nothing left to revoke
    finally:
        get_settings.cache_clear()


# --- every route checks the team ------------------------------------------------------------------

# What each path parameter of any route is filled with. A new route with a new parameter fails
# the walk below until it is named here, so no route escapes the check by being new.
ID_PARAMS = ("job_id", "dataset_id", "name", "sweep_id")


def test_every_route_hides_another_teams_jobs_datasets_and_artifacts(svc: Svc) -> None:
    job_id = svc.job_with_report()
    upload = svc.client.post("/v1/datasets", files={"file": ("calib.txt", b"some text\n")}, headers=svc.h())
    assert upload.status_code == 201, upload.text
    ds_id = upload.json()["id"]
    sweep = svc.client.post("/v1/sweeps", json={"spec": BODY, "targets": [0.5]}, headers=svc.h())
    assert sweep.status_code == 201, sweep.text
    sweep_id = sweep.json()["id"]
    values = {"job_id": job_id, "dataset_id": ds_id, "name": "report.json", "relative": "index.html",
              "sweep_id": sweep_id}  # fmt: skip
    secrets_of_acme = (job_id, ds_id, sweep_id)

    walked = 0
    # The app's route table, flattened (routers included by the app appear as their routes).
    for route in iter_route_contexts(svc.client.app.routes):  # type: ignore[attr-defined]
        params = set(getattr(route, "param_convertors", {}))
        unknown = params - set(values)
        assert not unknown, f"{route.path}: name {unknown} in this test's values"
        assert route.path_format is not None
        path = route.path_format.format(**{p: values[p] for p in params})
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method == "HEAD":
                continue
            r = svc.client.request(method, path, headers=svc.h(svc.other))
            walked += 1
            if isinstance(route.original_route, APIRoute) and params & set(ID_PARAMS):
                assert r.status_code in (403, 404), (method, path, r.status_code, r.text[:200])
            else:  # team-wide lists, public pages: nothing of acme's in the answer
                assert r.status_code < 500, (method, path, r.text[:200])
                assert not any(s in r.text for s in secrets_of_acme), (method, path)
    assert walked >= 15

    # A body naming acme's dataset is refused as well.
    body = {**BODY, "calibration": {**BODY["calibration"], "source": ds_id}}
    r = svc.client.post("/v1/jobs", json=body, headers=svc.h(svc.other))
    assert r.status_code == 422 and r.json()["error"]["param"] == "calibration.source"
    # And acme's job was not touched by the rival's cancel.
    job = svc.client.get(f"/v1/jobs/{job_id}", headers=svc.h()).json()
    assert (job["status"], job["cancel_requested"]) == ("queued", False)


# --- rate limits --------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_per_key(tmp_path: Path) -> None:
    svc = Svc(tmp_path, rate_limit_per_minute=60, rate_limit_burst=3)
    for _ in range(3):
        assert svc.client.get("/v1/me", headers=svc.h()).status_code == 200
    r = svc.client.get("/v1/me", headers=svc.h())
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited" and "60 per minute" in r.json()["error"]["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert svc.client.get("/v1/me", headers=svc.h(svc.other)).status_code == 200  # another key's budget
    assert svc.client.get("/healthz").status_code == 200  # unauthenticated probes are not counted


def test_rate_limit_zero_means_off(tmp_path: Path) -> None:
    svc = Svc(tmp_path, rate_limit_per_minute=0, rate_limit_burst=1)
    assert all(svc.client.get("/v1/me", headers=svc.h()).status_code == 200 for _ in range(5))


def test_gcra_refills_at_the_steady_rate() -> None:
    now = [1000.0]
    limiter = MemoryLimiter(Rate(per_minute=60, burst=2), clock=lambda: now[0])
    assert limiter.hit("k") == 0 and limiter.hit("k") == 0
    wait = limiter.hit("k")
    assert wait == pytest.approx(1.0)  # one request per second at 60/min
    now[0] += 0.5
    assert limiter.hit("k") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.hit("k") == 0  # refilled one
    assert limiter.hit("k") > 0
    now[0] += 10
    assert limiter.hit("k") == 0 and limiter.hit("k") == 0  # the burst is back, not more
    assert limiter.hit("k") > 0


# --- CORS ---------------------------------------------------------------------------------------


def _preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        "/v1/jobs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_cors_is_off_by_default(svc: Svc) -> None:
    r = _preflight(svc.client, "https://evil.example")
    assert "access-control-allow-origin" not in r.headers
    r = svc.client.get("/v1/me", headers={**svc.h(), "Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    svc = Svc(tmp_path, cors_origins="https://ok.example, https://also.example")  # type: ignore[arg-type]
    r = _preflight(svc.client, "https://ok.example")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ok.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers  # bearer keys, never cookies
    r = svc.client.get("/v1/me", headers={**svc.h(), "Origin": "https://also.example"})
    assert r.headers["access-control-allow-origin"] == "https://also.example"
    r = _preflight(svc.client, "https://evil.example")
    assert "access-control-allow-origin" not in r.headers
    r = svc.client.get("/v1/me", headers={**svc.h(), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


# --- secrets in logs ----------------------------------------------------------------------------


def test_secrets_never_reach_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    svc = Svc(
        tmp_path,
        signing_secret="sign-" + "s" * 40,  # type: ignore[arg-type]
        broker_url="redis://127.0.0.1:1/0",  # the broker is down: error paths log too
        broker_timeout=0.3,
    )
    with session_scope(svc.url) as s:
        revoked = create_key(s, "acme", "old")
        revoked.row.revoked_at = revoked.row.created_at
    caplog.set_level(logging.DEBUG)  # everything, SQLAlchemy's statements and parameters included
    wrong = svc.key[:-4] + "AAAA"
    assert svc.client.get("/v1/me", headers=svc.h()).status_code == 200
    assert svc.client.get("/v1/me", headers=svc.h(wrong)).status_code == 401
    assert svc.client.get("/v1/me", headers=svc.h(revoked.secret)).status_code == 401
    assert svc.client.get("/v1/jobs", headers={"Authorization": svc.key}).status_code == 401  # no scheme
    assert svc.client.post("/v1/jobs", json=BODY, headers=svc.h()).status_code == 503
    assert svc.client.get("/readyz").status_code == 503
    assert caplog.records, "nothing was logged: the test would prove nothing"
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (svc.key, wrong, revoked.secret, "sign-" + "s" * 40, svc.key[12:]):
        assert secret not in logged


# --- download links -----------------------------------------------------------------------------


def test_link_downloads_without_a_key_until_it_expires(svc: Svc) -> None:
    job_id = svc.job_with_report()
    r = svc.client.get(f"/v1/jobs/{job_id}/artifacts/report.json?redirect=false", headers=svc.h())
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    link = r.json()
    assert link["object"] == "job.artifact.link" and link["expires_in"] == svc.settings.download_link_expiry
    url = urlsplit(link["url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.path == f"/v1/downloads/{job_id}/report.json" and int(query["expires"]) > 0

    got = svc.client.get(link["url"])  # no Authorization header
    assert got.status_code == 200 and got.content == REPORT
    assert f'filename="{job_id}-report.json"' in got.headers["content-disposition"]

    def fetch(**changes: Any) -> Any:
        q = {**query, **changes}
        return svc.client.get(url.path, params=q)

    assert fetch(signature=query["signature"][:-2] + "AA").json()["error"]["code"] == "invalid_signature"
    assert fetch(expires=str(int(query["expires"]) + 60)).status_code == 403  # a longer life is forged
    other = svc.client.get(f"/v1/downloads/{job_id}/hf%2Fconfig.json", params=query)
    assert other.status_code == 403  # the signature covers the name
    assert svc.client.get(url.path).json()["error"]["code"] == "invalid_signature"  # unsigned

    # A genuine signature whose time is up.
    secret = signing_key(svc.settings)
    past = 1_000_000
    old = svc.client.get(
        url.path,
        params={
            "key": query["key"],
            "expires": past,
            "signature": signature(secret, job_id, "report.json", query["key"], past),
        },
    )
    assert old.status_code == 403 and old.json()["error"]["code"] == "link_expired"


def test_link_dies_with_its_key(svc: Svc) -> None:
    job_id = svc.job_with_report()
    with session_scope(svc.url) as s:
        temp = create_key(s, "acme", "temp")
    link = svc.client.get(
        f"/v1/jobs/{job_id}/artifacts/report.json?redirect=false", headers=svc.h(temp.secret)
    ).json()
    assert svc.client.get(link["url"]).status_code == 200
    with session_scope(svc.url) as s:
        s.get(ApiKey, temp.row.id).revoked_at = s.get(Job, job_id).created_at  # type: ignore[union-attr]
    assert svc.client.get(link["url"]).status_code == 403


def test_signing_key_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = signing_key(Settings(data_dir=tmp_path))
    assert first == signing_key(Settings(data_dir=tmp_path)) and len(first) == 64
    assert (tmp_path / "signing.key").stat().st_mode & 0o777 == 0o600
    assert signing_key(Settings(data_dir=tmp_path, signing_secret="x" * 32)) == b"x" * 32  # type: ignore[arg-type]
