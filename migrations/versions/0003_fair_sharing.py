"""fair sharing: per-team limits, the scheduler's bookkeeping, deletion and retention marks

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("max_queued", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_running", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_started_at", TS, nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("run_after", TS, nullable=True))
        batch.add_column(sa.Column("deleted_at", TS, nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("retries", server_default=None)
    op.create_index(
        op.f("ix_jobs_status_team_created"), "jobs", ["status", "team_id", "created_at"]
    )
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("deleted_at", TS, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("deleted_at")
    op.drop_index(op.f("ix_jobs_status_team_created"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("run_after")
        batch.drop_column("retries")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("last_started_at")
        batch.drop_column("max_stored_bytes")
        batch.drop_column("max_running")
        batch.drop_column("max_queued")
