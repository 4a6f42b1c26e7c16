"""Short waits for database locks, where waiting the engine's default (30 s) would stall a request.

The engines of common/db.py wait up to 30 s for another process's write lock: right for a job's
writes, wrong for bookkeeping on a read (a key's ``last_used_at``) and for ``/readyz``, which
must answer within a second whether or not the database takes writes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)


@contextmanager
def lock_wait(conn: Connection, seconds: float) -> Iterator[None]:
    """Inside the block, ``conn``'s statements wait at most ``seconds`` for a lock.

    SQLite: the connection's busy timeout, restored afterwards. Postgres: ``SET LOCAL`` lock and
    statement timeouts, which end with the transaction (commit or roll back inside the block).
    """
    ms = max(1, int(seconds * 1000))
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text(f"SET LOCAL lock_timeout = {ms}"))
        conn.execute(text(f"SET LOCAL statement_timeout = {ms}"))
        yield
        return
    if dialect != "sqlite":
        yield
        return
    before = int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0)
    conn.exec_driver_sql(f"PRAGMA busy_timeout = {ms}")
    try:
        yield
    finally:
        try:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {before}")
        except Exception as exc:  # never hand a short-waiting connection back to the pool
            log.warning("could not restore the SQLite busy timeout (%s); dropping the connection", exc)
            conn.invalidate()


@lru_cache(maxsize=16)
def _probe_engine(url: str, seconds: float) -> Engine:
    # No pool: a probe must not wait for (or hold) one of the requests' connections.
    if url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool, connect_args={"timeout": seconds})
    connect_args = {}
    if url.startswith("postgresql"):
        ms = max(1, int(seconds * 1000))
        connect_args = {
            "connect_timeout": max(1, round(seconds)),
            "options": f"-c lock_timeout={ms} -c statement_timeout={ms}",
        }
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def probe_write(url: str, seconds: float) -> None:
    """Take the database's write lock and update a row, then roll back; raises if that cannot be
    done within about ``seconds`` (locked by another process, read-only, down).

    The row is Alembic's version row, present in every migrated database.
    """
    with _probe_engine(url, seconds).connect() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
        conn.rollback()
