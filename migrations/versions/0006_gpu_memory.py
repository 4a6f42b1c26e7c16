"""gpu memory: a CUDA worker's heartbeat records the running job's GPU memory (jobs.gpu_memory)

JSON: the GPU's name and the bytes allocated now, at the job's peak, and in total. Served by
GET /metrics; None on CPU workers and for rows from before this revision.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("gpu_memory", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("gpu_memory")
