"""Models and migrations agree: after `upgrade head`, autogenerate finds nothing to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from spruce.common.db import get_engine, upgrade
from spruce.common.models import Base
from spruce.common.settings import Settings

pytestmark = pytest.mark.unit


def test_sqlite_migrations_match_models(tmp_path: Path) -> None:
    url = Settings(data_dir=tmp_path).resolved_database_url
    upgrade(url)
    upgrade(url)  # idempotent
    with get_engine(url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
        assert ctx.get_current_revision() is not None
