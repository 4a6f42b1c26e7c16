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


def test_migrating_logs_the_migrations_not_alembics_plugins(tmp_path: Path) -> None:
    """`spruce serve` migrates at every start: its log shows what ran, without alembic's list of
    the plugins it loads (a fresh process, since alembic announces them once, on import)."""
    import subprocess
    import sys

    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from spruce.common.db import upgrade\n"
        f"upgrade('sqlite:///{tmp_path / 'x.db'}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Running upgrade  -> 0001" in done.stderr and "setup plugin" not in done.stderr
