"""/readyz tells the truth within a second, and transient faults are 503s with Retry-After.

Each dependency is broken for real: the SQLite file write-locked by another process, Postgres
locked by another session or not listening at all, the filesystem broker's queue folder gone,
Redis not listening, the artifact folder replaced by a file (tests run as root, so a chmod
would not stop them). /readyz answers 503 naming the failing check in words alone, while
requests that do not need the broken dependency still answer (a key's last_used_at write
does not wait for a locked database); uploads and downloads answer 503 + Retry-After while
storage is broken, and 410 only once the store says the file is gone.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import free_port
from tests.unit.service import Service

pytestmark = pytest.mark.integration

SECRETS = ("Error", "Traceback", "/tmp", "/work", "sqlite", "postgresql")


def readyz(client: TestClient) -> tuple[Any, float]:
    t0 = time.monotonic()
    r = client.get("/readyz")  # no key: what anyone can see
    took = time.monotonic() - t0
    return r, took


def not_ready(client: TestClient, failing: str) -> float:
    r, took = readyz(client)
    body = r.json()
    assert r.status_code == 503 and body["status"] == "not_ready", r.text
    assert body["checks"][failing] == "failing"
    assert set(body["checks"].values()) <= {"ok", "failing"}
    assert r.headers["retry-after"]
    assert not any(s in r.text for s in SECRETS), r.text  # status words only
    print(f"/readyz with the {failing} failing: 503 in {took * 1000:.0f} ms")
    return took


def ready(client: TestClient) -> None:
    r, _ = readyz(client)
    assert r.status_code == 200 and r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
    }, r.text


@contextmanager
def sqlite_write_locked(path: Path) -> Iterator[None]:
    """Another process holds the SQLite file's write lock until the block ends."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        yield
    finally:
        proc.kill()
        proc.wait()


def test_sqlite_write_locked(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    ready(svc.client)
    with sqlite_write_locked(tmp_path / "spruce.db"):
        not_ready(svc.client, "database")
        # Reads do not need the write lock: authentication's bookkeeping does not make them wait.
        t0 = time.monotonic()
        me = svc.client.get("/v1/me", headers=svc.h())
        assert me.status_code == 200 and me.json()["team"] == "acme", me.text
        print(f"GET /v1/me with the database write-locked: 200 in {(time.monotonic() - t0) * 1000:.0f} ms")
        assert svc.client.get("/v1/jobs", headers=svc.h()).status_code == 200
    ready(svc.client)


def test_postgres_locked_then_down(pg_url: str, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, select, text

    from spruce.common.db import session_scope
    from spruce.common.models import ApiKey

    svc = Service(tmp_path, database_url=pg_url)
    ready(svc.client)
    holder = create_engine(pg_url).connect()
    try:  # another session blocks every write to these tables (reads go on)
        holder.execute(text("LOCK TABLE alembic_version, api_keys IN EXCLUSIVE MODE"))
        not_ready(svc.client, "database")
        assert svc.client.get("/v1/me", headers=svc.h(svc.other)).status_code == 200
    finally:
        holder.rollback()
        holder.close()
    ready(svc.client)
    for key in (svc.key, svc.other):
        assert svc.client.get("/v1/me", headers=svc.h(key)).status_code == 200
    with session_scope(pg_url) as session:
        used = dict(session.execute(select(ApiKey.name, ApiKey.last_used_at)).all())
    # Recorded for the key first used now; the key whose write failed under the lock is not
    # tried again for a minute (a locked database costs each key one short wait, not one per request).
    assert used["ci"] is not None and used["theirs"] is None, used

    closed = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/spruce"  # nothing listens
    client = TestClient(_app(tmp_path, database_url=closed))
    not_ready(client, "database")
    r = client.get("/v1/jobs", headers=svc.h())
    assert r.status_code == 503 and r.headers["retry-after"] and "postgresql" not in r.text


def _app(tmp: Path, **settings: Any) -> Any:
    from spruce.api.app import create_app
    from spruce.common.settings import Settings

    return create_app(Settings(data_dir=tmp, **settings))


def test_broker_unreachable(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    ready(svc.client)
    queue = svc.settings.broker_folder / "queue"
    shutil.rmtree(queue)
    not_ready(svc.client, "broker")
    r = svc.client.post("/v1/jobs", json={"model": "smollm2-135m", "sparsity": 0.5}, headers=svc.h())
    if r.status_code != 422:  # the body's shape is another test's business; the broker is ours
        assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable", r.text
        assert r.headers["retry-after"] and str(tmp_path) not in r.text
    queue.mkdir()
    ready(svc.client)

    redis_down = TestClient(_app(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    not_ready(redis_down, "broker")


def test_storage_unwritable_uploads_and_downloads_are_503(tmp_path: Path) -> None:
    from spruce.common.db import session_scope
    from spruce.common.keys import authenticate
    from spruce.common.models import Artifact, Job

    svc = Service(tmp_path)
    store = svc.client.app.state.ctx.storage  # type: ignore[attr-defined]
    store.put_stream("jobs/j/report.json", io.BytesIO(b'{"ok": 1}'))
    with session_scope(svc.url) as s:
        key = authenticate(s, svc.key)
        assert key is not None
        job = Job(team_id=key.team_id, submitted_by=key.id, spec={"model": "x"}, status="succeeded")
        s.add(job)
        s.flush()
        job_id = job.id
        key_ = "jobs/j/report.json"
        s.add(Artifact(job_id=job_id, name="report.json", size=9, sha256="ab" * 32, storage_key=key_))
    url = f"/v1/jobs/{job_id}/artifacts/report.json"
    assert svc.client.get(url, headers=svc.h()).content == b'{"ok": 1}'

    artifacts = svc.settings.resolved_artifacts_dir
    kept = tmp_path / "artifacts.kept"
    artifacts.rename(kept)
    artifacts.write_text("a file where the artifact folder was")
    try:
        not_ready(svc.client, "storage")
        up = svc.client.post("/v1/datasets", files={"file": ("a.txt", b"some text\n")}, headers=svc.h())
        down = svc.client.get(url, headers=svc.h())
        for r in (up, down):
            assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable", r.text
            assert r.headers["retry-after"] and str(tmp_path) not in r.text
    finally:
        artifacts.unlink()
        kept.rename(artifacts)
    ready(svc.client)
    again = svc.client.post("/v1/datasets", files={"file": ("a.txt", b"some text\n")}, headers=svc.h())
    assert again.status_code == 201, again.text
    (artifacts / "jobs" / "j" / "report.json").unlink()  # the store answers, and the file is gone
    gone = svc.client.get(url, headers=svc.h())
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "artifact_missing", gone.text
