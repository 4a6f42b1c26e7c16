"""Alembic environment: the URL comes from the config (set by common.db.upgrade) or from settings,
the metadata from common.models, so `alembic upgrade head` and `spruce serve` migrate the same way."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool

from spruce.common.db import get_engine
from spruce.common.models import Base
from spruce.common.settings import get_settings

config = context.config
if config.config_file_name:  # run by the alembic command: use alembic.ini's logging
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = _url()
    # SQLite needs the engine's pragmas (WAL, busy timeout) even while migrating next to a live worker.
    engine = get_engine(url) if url.startswith("sqlite") else None
    if engine is None:
        from sqlalchemy import create_engine

        engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
