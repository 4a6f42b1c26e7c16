"""What keeps status polls fast under load (docs/service.md, "Latency")."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from spruce.api.app import create_app
from spruce.common.db import POOL_CAPACITY, get_engine
from spruce.common.settings import Settings
from tests.unit.service import Service
from tests.unit.test_service_api import BODY


def test_startup_objects_are_frozen_while_the_app_serves(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    before = gc.get_freeze_count()
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > before + 10_000  # routes, schemas, modules
    assert gc.get_freeze_count() == 0


def test_the_pool_keeps_every_admitted_connection_open(tmp_path: Path) -> None:
    """A burst of POOL_CAPACITY sessions leaves all its connections pooled: the next burst opens
    none (a connection closed on return made every burst pay new database backends)."""
    engine = get_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    opened: list[object] = []
    event.listen(engine, "connect", lambda conn, _rec: opened.append(conn))
    for _ in range(2):
        conns = [engine.connect() for _ in range(POOL_CAPACITY)]
        for c in conns:
            c.execute(text("select 1"))
            c.close()
    assert len(opened) == POOL_CAPACITY
    assert engine.pool.checkedin() == POOL_CAPACITY


def test_a_status_poll_takes_one_thread_hop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication, the read and the session's close run in one worker thread: each hop between
    the event loop and a thread cost the API process CPU at 100 polls a second."""
    svc = Service(tmp_path)
    with svc.client:
        job = svc.client.post("/v1/jobs", json=BODY, headers=svc.h()).json()
        hops: list[object] = []
        real = anyio.to_thread.run_sync

        async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(func)
            return await real(func, *args, **kwargs)

        monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
        for path in (f"/v1/jobs/{job['id']}", "/v1/jobs?limit=5"):
            hops.clear()
            r = svc.client.get(path, headers=svc.h())
            assert r.status_code == 200, r.text
            assert len(hops) == 1, (path, hops)
        # two statements: the key with its team, then the job (last_used_at was written a moment ago)
        statements: list[str] = []
        event.listen(get_engine(svc.url), "before_cursor_execute", lambda *a: statements.append(a[2]))
        assert svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.h()).status_code == 200
        assert len(statements) == 2, statements
        # the same answers as before: another team's job is not found, a missing key is refused
        assert svc.client.get(f"/v1/jobs/{job['id']}", headers=svc.h(svc.other)).status_code == 404
        assert svc.client.get(f"/v1/jobs/{job['id']}").status_code == 401
