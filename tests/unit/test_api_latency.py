"""What keeps status polls fast under load (docs/service.md, "Latency")."""

from __future__ import annotations

import gc
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import event, text

from spruce.api.app import create_app
from spruce.common.db import POOL_CAPACITY, get_engine
from spruce.common.settings import Settings


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
