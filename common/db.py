"""Database engines and sessions, built lazily and cached per URL; migrations by Alembic."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the worker writes progress; busy_timeout waits out the other
    # process's short write locks instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# Connections per process: the pool opens them as needed and keeps up to POOL_SIZE open. No
# overflow: a connection opened past the kept ones was closed again on return, so under load
# every burst paid new Postgres backends, which slowed requests, which raised concurrency into
# more new backends (100 pollers on 2 cores: p50 from 15 ms to 0.3-1 s). The API admits at most
# POOL_CAPACITY requests to the database at once (api.deps): none waits for a connection.
POOL_SIZE = 15
MAX_OVERFLOW = 0
POOL_CAPACITY = POOL_SIZE + MAX_OVERFLOW


@lru_cache(maxsize=16)
def get_engine(url: str) -> Engine:
    """One engine (and connection pool) per database URL per process."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # An in-memory database lives in one connection (SingletonThreadPool): no pool to size.
        pool: dict[str, Any] = (
            {}
            if ":memory:" in url or url.endswith("://")
            else {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW}
        )
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # connect_timeout: a database host that drops packets (rather than refusing) must turn into
    # a quick 503, not a request that hangs for the kernel's TCP timeout.
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, connect_args=connect_args
    )


@lru_cache(maxsize=16)
def session_factory(url: str) -> sessionmaker[Session]:
    # expire_on_commit=False: rows stay readable after commit, for building responses.
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Any:
    """An Alembic config for ``url`` that finds the migrations whether installed or in a checkout."""
    from alembic.config import Config

    from spruce import migrations

    cfg = Config()
    # __path__, not __file__: an editable install may expose the folder as a namespace package.
    cfg.set_main_option("script_location", str(Path(next(iter(migrations.__path__)))))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """``alembic upgrade head`` on ``url`` (idempotent)."""
    # Alembic announces each of its plugins at INFO when imported: a dozen lines of noise.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from alembic import command

    log.info("migrating %s", get_engine(url).url.render_as_string(hide_password=True))
    command.upgrade(alembic_config(url), "head")
